"""The gateway's gRPC edge: authenticate, validate, bind the account from the key, delegate."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

from gateway.auth import Authenticator
from gateway.retention import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS, MediaRetention
from gateway.service import Gateway, StoredMedia, UploadHeader, face_result
from mixip.audit.v1 import audit_pb2
from mixip.consent.v1 import consent_pb2
from mixip.gateway.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    internal_pb2,
    internal_pb2_grpc,
)
from mixip.matcher.v1 import matcher_pb2
from mixip.retention.v1 import retention_pb2
from mixip.runtime import logs
from mixip.runtime.errors import InvalidArgument
from mixip.runtime.paging import decode_page_token, encode_page_token
from mixip.runtime.times import to_timestamp
from mixip.runtime.validation import Checks

logger = logging.getLogger("mixip.gateway")


def _stream(requests: Iterator, header_type: str) -> tuple[object, Iterator[bytes]]:
    """The header (first message) and an iterator over the chunks that follow."""
    first = next(requests, None)
    if first is None or first.WhichOneof("payload") != "header":
        raise InvalidArgument.one("header", f"the first message must be the {header_type} header")

    def chunks() -> Iterator[bytes]:
        for index, message in enumerate(requests, start=1):
            if message.WhichOneof("payload") != "chunk":
                raise InvalidArgument.one(f"message[{index}]", "only chunks may follow the header")
            yield message.chunk

    return first.header, chunks()


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, gateway: Gateway, auth: Authenticator) -> None:
        self.gateway = gateway
        self.auth = auth
        self.peers = gateway.peers

    def UploadMedia(self, request_iterator, context):
        caller = self.auth.account(context)
        header, chunks = _stream(request_iterator, "upload")
        checks = Checks()
        checks.identifier("header.project_id", header.project_id)
        checks.text("header.filename", header.filename, max_length=255, required=False)
        checks.text(
            "header.declared_content_type",
            header.declared_content_type,
            max_length=128,
            required=False,
        )
        checks.text("header.request_id", header.request_id, max_length=128, required=False)
        checks.done()
        data = self.gateway.receive(chunks)
        stored = self.gateway.upload(
            caller.account_id,
            caller.key_id,
            UploadHeader(header.project_id, header.filename, header.request_id),
            data,
        )
        return _upload_response(stored)

    def GetMediaResults(self, request, context):
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("media_id", request.media_id)
        checks.done()
        stored = self.gateway.results(caller.account_id, request.media_id)
        return gateway_pb2.GetMediaResultsResponse(media=_upload_response(stored))

    def RecordConsent(self, request, context):
        caller = self.auth.account(context)
        reply = self.gateway.record_consent(
            consent_pb2.RecordConsentRequest(
                account_id=caller.account_id,
                talent_id=request.talent_id,
                scope=request.scope,
                project_id=request.project_id,
                decision=request.decision,
                evidence=request.evidence if request.HasField("evidence") else None,
                # a key per call, so the channel's retries cannot append the record twice
                request_id=request.request_id or uuid.uuid4().hex,
            )
        )
        return gateway_pb2.RecordConsentResponse(record=reply.record)

    def ListConsents(self, request, context):
        caller = self.auth.account(context)
        reply = self.peers.consent.ListConsentRecords(
            consent_pb2.ListConsentRecordsRequest(
                account_id=caller.account_id,
                talent_id=request.talent_id,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return gateway_pb2.ListConsentsResponse(
            records=reply.records, next_page_token=reply.next_page_token
        )

    def EnrollTalent(self, request_iterator, context):
        caller = self.auth.account(context)
        header, chunks = _stream(request_iterator, "enrollment")
        checks = Checks()
        checks.identifier("header.talent_id", header.talent_id)
        checks.text("header.request_id", header.request_id, max_length=128, required=False)
        checks.done()
        image = self.gateway.receive(chunks)
        reply = self.peers.matcher.EnrollTalentFace(
            matcher_pb2.EnrollTalentFaceRequest(
                account_id=caller.account_id,
                talent_id=header.talent_id,
                image=image,
                request_id=header.request_id or uuid.uuid4().hex,
            )
        )
        return gateway_pb2.EnrollTalentResponse(face=reply.face)

    def ListTalentFaces(self, request, context):
        caller = self.auth.account(context)
        reply = self.peers.matcher.ListTalentFaces(
            matcher_pb2.ListTalentFacesRequest(
                account_id=caller.account_id,
                talent_id=request.talent_id,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return gateway_pb2.ListTalentFacesResponse(
            faces=reply.faces, next_page_token=reply.next_page_token
        )

    def ListAuditEvents(self, request, context):
        caller = self.auth.account(context)
        reply = self.peers.audit.ListEvents(
            audit_pb2.ListEventsRequest(
                account_id=caller.account_id,
                talent_id=request.talent_id,
                project_id=request.project_id,
                since=request.since if request.HasField("since") else None,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return gateway_pb2.ListAuditEventsResponse(
            events=reply.events, next_page_token=reply.next_page_token
        )

    def VerifyAuditLog(self, request, context):
        caller = self.auth.account(context)
        reply = self.peers.audit.VerifyLog(audit_pb2.VerifyLogRequest(account_id=caller.account_id))
        return gateway_pb2.VerifyAuditLogResponse(
            ok=reply.ok,
            events_checked=reply.events_checked,
            first_broken_sequence=reply.first_broken_sequence,
            detail=reply.detail,
        )

    def ExportTalentData(self, request, context):
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("talent_id", request.talent_id)
        checks.done()
        document = self.gateway.export(caller.account_id, request.talent_id)
        return gateway_pb2.ExportTalentDataResponse(
            schema_version=document["schema_version"],
            document_json=json.dumps(document, ensure_ascii=False, indent=2),
        )

    def EraseTalent(self, request, context):
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("talent_id", request.talent_id)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        checks.done()
        receipt_id, steps = self.gateway.erase(
            caller.account_id, request.talent_id, request.request_id
        )
        return gateway_pb2.EraseTalentResponse(
            receipt_id=receipt_id,
            talent_id=request.talent_id,
            steps=[
                gateway_pb2.ErasureStep(
                    name=s.name, count=s.count, completed_at=to_timestamp(s.completed_at)
                )
                for s in steps
            ],
            completed_at=to_timestamp(steps[-1].completed_at),
        )

    def DeleteTalentFace(self, request, context):
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("talent_id", request.talent_id)
        checks.identifier("face_id", request.face_id)
        checks.done()
        reply = self.peers.matcher.DeleteTalentFace(
            matcher_pb2.DeleteTalentFaceRequest(
                account_id=caller.account_id,
                talent_id=request.talent_id,
                face_id=request.face_id,
            )
        )
        # The correction's record: who (key), what (face), when (the line's time); the talent
        # id stays out of logs (docs/rights.md).
        logs.log(
            logger,
            "talent face deleted",
            account=caller.account_id,
            key=caller.key_id,
            face=request.face_id,
            collection_version=reply.collection_version,
        )
        return gateway_pb2.DeleteTalentFaceResponse(face=reply.face)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, gateway: Gateway, auth: Authenticator, retention: MediaRetention) -> None:
        self.auth = auth
        self.peers = gateway.peers
        self.retention = retention
        self.clock = gateway.clock

    def CreateAccount(self, request, context):
        self.auth.admin(context)
        checks = Checks()
        checks.text("name", request.name, max_length=128)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        checks.done()
        account, token, key_id = self.auth.create_account(request.name, request.request_id)
        return admin_pb2.CreateAccountResponse(
            account=_account(account), api_key=token, api_key_id=key_id
        )

    def CreateApiKey(self, request, context):
        self.auth.admin(context)
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.done()
        token, key_id = self.auth.create_key(request.account_id)
        return admin_pb2.CreateApiKeyResponse(api_key=token, api_key_id=key_id)

    def ListApiKeys(self, request, context):
        self.auth.admin(context)
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"a": request.account_id}
        after = decode_page_token(request.page_token, filters, kind=str) or ""
        rows, next_after = self.auth.list_keys(request.account_id, page_size, after)
        return admin_pb2.ListApiKeysResponse(
            api_keys=[_api_key(r) for r in rows],
            next_page_token=encode_page_token(next_after, filters) if next_after else "",
        )

    def RevokeApiKey(self, request, context):
        self.auth.admin(context)
        checks = Checks()
        checks.identifier("api_key_id", request.api_key_id)
        checks.done()
        return admin_pb2.RevokeApiKeyResponse(
            api_key=_api_key(self.auth.revoke_key(request.api_key_id))
        )

    def ListAccounts(self, request, context):
        self.auth.admin(context)
        checks = Checks()
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        after = decode_page_token(request.page_token, {}, kind=str) or ""
        rows, next_after = self.auth.list_accounts(page_size, after)
        return admin_pb2.ListAccountsResponse(
            accounts=[_account(r) for r in rows],
            next_page_token=encode_page_token(next_after, {}) if next_after else "",
        )

    def RunRetentionJob(self, request, context):
        admin = self.auth.admin(context)
        checks = Checks()
        checks.enum("job", request.job, retention_pb2.RetentionJob)
        drill = request.HasField("as_of")
        checks.drill_time("as_of", request.as_of, drill, self.clock())
        if drill and request.job not in (0, retention_pb2.RETENTION_JOB_PURGE):
            checks.fail("as_of", "only the purge job runs as of a later date")
        checks.done()
        reply = self.peers.retention.RunNow(
            retention_pb2.RunNowRequest(
                job=request.job,
                as_of=request.as_of if drill else None,
                requested_by=admin.key_id,
            )
        )
        return admin_pb2.RunRetentionJobResponse(report=reply.report)

    def GetRetentionStatus(self, request, context):
        self.auth.admin(context)
        return admin_pb2.GetRetentionStatusResponse(
            status=self.peers.retention.GetStatus(retention_pb2.GetStatusRequest())
        )

    def SetAccountRetention(self, request, context):
        admin = self.auth.admin(context)
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        if not MIN_RETENTION_DAYS <= request.retention_days <= MAX_RETENTION_DAYS:
            checks.fail(
                "retention_days", f"must be between {MIN_RETENTION_DAYS} and {MAX_RETENTION_DAYS}"
            )
        checks.done()
        row = self.retention.set_account_retention(
            request.account_id, request.retention_days, admin.key_id
        )
        return admin_pb2.SetAccountRetentionResponse(
            account_id=row.account_id,
            retention_days=row.retention_days,
            updated_at=to_timestamp(row.updated_at),
        )

    def GetVaultStatus(self, request, context):
        self.auth.admin(context)
        reply = self.peers.audit.GetVaultStatus(audit_pb2.GetVaultStatusRequest())
        return admin_pb2.GetVaultStatusResponse(
            key_version=reply.key_version, rotated_at=reply.rotated_at
        )


class GatewayInternalServicer(internal_pb2_grpc.GatewayInternalServiceServicer):
    """The internal port's API; callers are checked by the caller rules, not API keys."""

    DEFAULT_BATCH = 1000
    MAX_BATCH = 10_000

    def __init__(self, retention: MediaRetention) -> None:
        self.retention = retention

    def PurgeExpiredMedia(self, request, context):
        checks = Checks()
        as_of = checks.timestamp("as_of", request.as_of, request.HasField("as_of"))
        batch = request.batch_size or self.DEFAULT_BATCH
        if not 1 <= batch <= self.MAX_BATCH:
            checks.fail(
                "batch_size",
                f"must be between 1 and {self.MAX_BATCH} (0 means {self.DEFAULT_BATCH})",
            )
        checks.done()
        done = self.retention.purge_expired(as_of, batch)
        return internal_pb2.PurgeExpiredMediaResponse(
            media_deleted=done.media_deleted,
            faces_deleted=done.faces_deleted,
            objects_deleted=done.objects_deleted,
            orphans_deleted=done.orphans_deleted,
            done=done.done,
        )


def _api_key(row) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        api_key_id=row.key_id,
        account_id=row.account_id or "",
        prefix=f"mixip_{row.key_id}_",
        created_at=to_timestamp(row.created_at),
        revoked_at=to_timestamp(row.revoked_at) if row.revoked_at else None,
    )


def _account(row) -> admin_pb2.Account:
    return admin_pb2.Account(
        account_id=row.account_id, name=row.name, created_at=to_timestamp(row.created_at)
    )


def _upload_response(stored: StoredMedia) -> gateway_pb2.UploadMediaResponse:
    media = stored.media
    return gateway_pb2.UploadMediaResponse(
        media_id=media.media_id,
        kind=media.kind,
        content_type=media.content_type,
        size_bytes=media.size_bytes,
        faces=[face_result(f) for f in stored.faces],
        audit_events_recorded=len(stored.faces),
        duration_seconds=media.duration_seconds,
        engine=media.engine,
        created_at=to_timestamp(media.created_at),
        project_id=media.project_id,
    )
