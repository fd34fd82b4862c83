"""The gateway's gRPC edge: authenticate, validate, bind the account from the key, delegate."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

from gateway.auth import Authenticator
from gateway.service import Gateway, StoredMedia, UploadHeader, face_result
from mixip.audit.v1 import audit_pb2
from mixip.consent.v1 import consent_pb2
from mixip.gateway.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from mixip.matcher.v1 import matcher_pb2
from mixip.retention.v1 import retention_pb2
from mixip.runtime.errors import InvalidArgument
from mixip.runtime.paging import decode_page_token, encode_page_token
from mixip.runtime.times import to_timestamp
from mixip.runtime.validation import Checks


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


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, gateway: Gateway, auth: Authenticator) -> None:
        self.auth = auth
        self.peers = gateway.peers

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
        self.auth.admin(context)
        checks = Checks()
        checks.enum("job", request.job, retention_pb2.RetentionJob)
        checks.done()
        reply = self.peers.retention.RunNow(retention_pb2.RunNowRequest(job=request.job))
        return admin_pb2.RunRetentionJobResponse(report=reply.report)

    def GetRetentionStatus(self, request, context):
        self.auth.admin(context)
        return admin_pb2.GetRetentionStatusResponse(
            status=self.peers.retention.GetStatus(retention_pb2.GetStatusRequest())
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
