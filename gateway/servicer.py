"""The gRPC edge of `GatewayService` (the client API): authenticate, validate, bind the account
from the key, map proto to domain and back, and delegate to the use-case modules (uploads,
upload sessions, jobs, rights, erasure, projects, reviews, reports, accounts, webhooks, the
access log). No peer is called from here. The gateway's other services have their own edge:
gateway/admin_servicer.py and gateway/internal_servicer.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any, Literal, Protocol, TypeVar

import grpc

from gateway.access_log import AccessFilter, AccessLog
from gateway.account_export import EXPORT_SCHEMA, AccountExports
from gateway.accounts import EMAIL, EMAIL_MAX, EMAIL_RULE, Accounts
from gateway.auth import Authenticator, note
from gateway.closures import Closures
from gateway.erasure import Erasures
from gateway.jobs import Job, Jobs
from gateway.messages import (
    access_entry_message,
    closure_message,
    collaborator_message,
    decision_message,
    erasure_step_message,
    job_message,
    media_summary_message,
    profile_message,
    project_message,
    report_media_message,
    session_message,
    upload_job_message,
    upload_message,
    webhook_message,
)
from gateway.peers import ConsentDecision
from gateway.previews import DEFAULT_MAX_SIDE, MAX_MAX_SIDE, MIN_MAX_SIDE, Previews
from gateway.projects import INVITABLE, Action, Projects, from_micros, micros
from gateway.reports import ClearanceReports
from gateway.reviews import NewDecision, Reviews
from gateway.rights import Rights
from gateway.upload_sessions import (
    SESSION_ID,
    SESSION_ID_RULE,
    SHA256_PATTERN,
    Chunk,
    UploadSessions,
)
from gateway.uploads import StreamLimits, UploadHeader, Uploads
from gateway.webhooks import EVENT_TYPES, MAX_EVENT_TYPES, Webhooks, check_url
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mixip.runtime.errors import InvalidArgument
from mixip.runtime.paging import decode_page_token, next_page_token
from mixip.runtime.telemetry import step
from mixip.runtime.times import to_timestamp
from mixip.runtime.validation import Checks

H = TypeVar("H", covariant=True)


class _StreamMessage(Protocol[H]):
    """A message of a client stream: a header first, then chunks."""

    @property
    def header(self) -> H: ...

    @property
    def chunk(self) -> bytes: ...

    def WhichOneof(self, oneof_group: Literal["payload"]) -> str | None: ...


def _stream(requests: Iterator[_StreamMessage[H]], header_type: str) -> tuple[H, Iterator[bytes]]:
    """The header (first message) and an iterator over the chunks that follow."""
    header, chunks = _opened(requests)
    if header is None:
        raise _no_header(header_type)
    return header, chunks


def _no_header(header_type: str) -> InvalidArgument:
    return InvalidArgument.one("header", f"the first message must be the {header_type} header")


def _opened(requests: Iterator[_StreamMessage[H]]) -> tuple[H | None, Iterator[bytes]]:
    """As `_stream`, with None for a missing header (said by the caller when it chooses)."""
    first = next(requests, None)
    header = first.header if first is not None and first.WhichOneof("payload") == "header" else None

    def chunks() -> Iterator[bytes]:
        for index, message in enumerate(requests, start=1):
            if message.WhichOneof("payload") != "chunk":
                raise InvalidArgument.one(f"message[{index}]", "only chunks may follow the header")
            yield message.chunk

    return header, chunks()


def _upload_checks(header: gateway_pb2.UploadHeader) -> Checks:
    checks = Checks()
    checks.identifier("header.project_id", header.project_id)
    checks.text("header.filename", header.filename, max_length=255, required=False)
    checks.text(
        "header.declared_content_type", header.declared_content_type, max_length=128, required=False
    )
    checks.text("header.request_id", header.request_id, max_length=128, required=False)
    return checks


def _session_id(value: str, field_name: str) -> str:
    if not SESSION_ID.fullmatch(value):
        raise InvalidArgument.one(field_name, SESSION_ID_RULE)
    return value


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        auth: Authenticator,
        limits: StreamLimits,
        uploads: Uploads,
        sessions: UploadSessions,
        rights: Rights,
        erasures: Erasures,
        previews: Previews,
        projects: Projects,
        reviews: Reviews,
        jobs: Jobs,
        *,
        access_log: AccessLog,
        webhooks: Webhooks,
        reports: ClearanceReports,
        accounts: Accounts,
        closures: Closures,
        exports: AccountExports,
    ) -> None:
        self.auth = auth
        self.accounts = accounts
        self.closures = closures
        self.exports = exports
        self.limits = limits
        self.uploads = uploads
        self.sessions = sessions
        self.rights = rights
        self.erasures = erasures
        self.previews = previews
        self.projects = projects
        self.reviews = reviews
        self.jobs = jobs
        self.access_log = access_log
        self.webhooks = webhooks
        self.reports = reports

    def UploadMedia(
        self,
        request_iterator: Iterator[gateway_pb2.UploadMediaRequest],
        context: grpc.ServicerContext,
    ) -> gateway_pb2.UploadMediaResponse:
        key = self.auth.presented(context)
        header, chunks = _opened(request_iterator)
        checks = _upload_checks(header) if header is not None else Checks()
        upload = (
            UploadHeader(header.project_id, header.filename, header.request_id) if header else None
        )
        # The key, the project and a retry's first upload in one read, before any media byte
        # is taken; only for a header that passes its checks (nothing unchecked reaches a
        # query). A missing or bad header is said once the key is, as in every call.
        admissible = upload if header and not header.as_job and not checks.violations else None
        caller, admission = self.auth.account_and(
            key,
            lambda session, caller: (
                self.uploads.admit(session, caller.account_id, admissible) if admissible else None
            ),
        )
        if header is None or upload is None:
            raise _no_header("upload")
        note(project_id=header.project_id)  # the access log's entry (a stream's header)
        checks.done()
        with step("gateway.upload.receive"):
            data = self.limits.receive(chunks)
        if header.as_job:
            job = self.jobs.start(caller.account_id, caller.key_id, upload, data)
            note(media_id=job.media_id)
            return upload_job_message(job)
        stored = self.uploads.upload(
            caller.account_id, caller.key_id, upload, data, admission=admission
        )
        note(media_id=stored.media.media_id)
        return upload_message(stored)

    # -- resumable uploads (gateway/upload_sessions.py) ------------------------------------

    def CreateUploadSession(
        self, request: gateway_pb2.CreateUploadSessionRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CreateUploadSessionResponse:
        caller = self.auth.account(context)
        note(project_id=request.project_id)
        checks = Checks()
        checks.identifier("project_id", request.project_id)
        checks.text("filename", request.filename, max_length=255, required=False)
        checks.text(
            "declared_content_type", request.declared_content_type, max_length=128, required=False
        )
        checks.done()
        state = self.sessions.create(
            caller.account_id, request.project_id, request.filename, request.declared_size
        )
        return gateway_pb2.CreateUploadSessionResponse(session=session_message(state))

    def AppendUploadChunks(
        self,
        request_iterator: Iterator[gateway_pb2.AppendUploadChunksRequest],
        context: grpc.ServicerContext,
    ) -> gateway_pb2.AppendUploadChunksResponse:
        caller = self.auth.account(context)

        def chunks() -> Iterator[Chunk]:
            for index, message in enumerate(request_iterator):
                if index == 0:
                    _session_id(message.session_id, "session_id")
                yield Chunk(message.session_id, message.offset, message.data)

        state = self.sessions.append(caller.account_id, chunks())
        return gateway_pb2.AppendUploadChunksResponse(session=session_message(state))

    def GetUploadSession(
        self, request: gateway_pb2.GetUploadSessionRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetUploadSessionResponse:
        caller = self.auth.account(context)
        _session_id(request.session_id, "session_id")
        state = self.sessions.state(caller.account_id, request.session_id)
        return gateway_pb2.GetUploadSessionResponse(session=session_message(state))

    def FinishUploadSession(
        self, request: gateway_pb2.FinishUploadSessionRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.FinishUploadSessionResponse:
        caller = self.auth.account(context)
        checks = Checks()
        if not SESSION_ID.fullmatch(request.session_id):
            checks.fail("session_id", SESSION_ID_RULE)
        if not SHA256_PATTERN.fullmatch(request.sha256):
            checks.fail("sha256", "required: 64 lowercase hexadecimal digits")
        checks.done()
        finished = self.sessions.finish(
            caller.account_id, caller.key_id, request.session_id, request.sha256, request.as_job
        )
        if isinstance(finished, Job):
            note(media_id=finished.media_id)
            return gateway_pb2.FinishUploadSessionResponse(media=upload_job_message(finished))
        note(media_id=finished.media.media_id)
        return gateway_pb2.FinishUploadSessionResponse(media=upload_message(finished))

    def GetMediaResults(
        self, request: gateway_pb2.GetMediaResultsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetMediaResultsResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("media_id", request.media_id)
        checks.done()
        scope = self.projects.media_scope(caller.account_id, request.media_id, Action.READ)
        stored = self.uploads.results(scope)
        return gateway_pb2.GetMediaResultsResponse(
            media=upload_message(stored),
            decisions=[decision_message(d) for d in self.reviews.decisions(scope)],
            filename=self.uploads.filename(scope),
        )

    def GetMediaPreview(
        self, request: gateway_pb2.GetMediaPreviewRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetMediaPreviewResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("media_id", request.media_id)
        max_side = request.max_side or DEFAULT_MAX_SIDE
        if not MIN_MAX_SIDE <= max_side <= MAX_MAX_SIDE:
            checks.fail(
                "max_side",
                f"must be between {MIN_MAX_SIDE} and {MAX_MAX_SIDE} (0 means {DEFAULT_MAX_SIDE})",
            )
        checks.done()
        scope = self.projects.media_scope(caller.account_id, request.media_id, Action.READ)
        preview = self.previews.preview(scope, max_side, legend=not request.omit_legend)
        return gateway_pb2.GetMediaPreviewResponse(
            image=preview.image,
            content_type=preview.content_type,
            width=preview.width,
            height=preview.height,
        )

    def RecordConsent(
        self, request: gateway_pb2.RecordConsentRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.RecordConsentResponse:
        caller = self.auth.account(context)
        record = self.rights.record_consent(
            caller.account_id,
            ConsentDecision(
                talent_id=request.talent_id,
                scope=request.scope,
                project_id=request.project_id,
                decision=request.decision,
                evidence=request.evidence if request.HasField("evidence") else None,
                # a key per call, so the channel's retries cannot append the record twice
                request_id=request.request_id or uuid.uuid4().hex,
            ),
        )
        return gateway_pb2.RecordConsentResponse(record=record)

    def ListConsents(
        self, request: gateway_pb2.ListConsentsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListConsentsResponse:
        caller = self.auth.account(context)
        page = self.rights.consents(
            caller.account_id, request.talent_id, request.page_size, request.page_token
        )
        return gateway_pb2.ListConsentsResponse(
            records=page.items, next_page_token=page.next_page_token
        )

    def EnrollTalent(
        self,
        request_iterator: Iterator[gateway_pb2.EnrollTalentRequest],
        context: grpc.ServicerContext,
    ) -> gateway_pb2.EnrollTalentResponse:
        caller = self.auth.account(context)
        header, chunks = _stream(request_iterator, "enrollment")
        checks = Checks()
        checks.identifier("header.talent_id", header.talent_id)
        checks.text("header.request_id", header.request_id, max_length=128, required=False)
        checks.done()
        image = self.limits.receive(chunks)
        face = self.rights.enroll(
            caller.account_id, header.talent_id, image, header.request_id or uuid.uuid4().hex
        )
        return gateway_pb2.EnrollTalentResponse(face=face)

    def ListTalentFaces(
        self, request: gateway_pb2.ListTalentFacesRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListTalentFacesResponse:
        caller = self.auth.account(context)
        page = self.rights.talent_faces(
            caller.account_id, request.talent_id, request.page_size, request.page_token
        )
        return gateway_pb2.ListTalentFacesResponse(
            faces=page.items, next_page_token=page.next_page_token
        )

    def ListAuditEvents(
        self, request: gateway_pb2.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListAuditEventsResponse:
        caller = self.auth.account(context)
        page = self.rights.audit_events(
            caller.account_id,
            talent_id=request.talent_id,
            project_id=request.project_id,
            since=request.since if request.HasField("since") else None,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return gateway_pb2.ListAuditEventsResponse(
            events=page.items, next_page_token=page.next_page_token
        )

    def VerifyAuditLog(
        self, request: gateway_pb2.VerifyAuditLogRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.VerifyAuditLogResponse:
        caller = self.auth.account(context)
        verdict = self.rights.verify_audit_log(caller.account_id)
        return gateway_pb2.VerifyAuditLogResponse(
            ok=verdict.ok,
            events_checked=verdict.events_checked,
            first_broken_sequence=verdict.first_broken_sequence,
            detail=verdict.detail,
        )

    def GetAuditCheckpoint(
        self, request: gateway_pb2.GetAuditCheckpointRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetAuditCheckpointResponse:
        caller = self.auth.account(context)
        return gateway_pb2.GetAuditCheckpointResponse(
            checkpoint=self.rights.audit_checkpoint(caller.account_id)
        )

    def GetAuditInclusionProof(
        self, request: gateway_pb2.GetAuditInclusionProofRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetAuditInclusionProofResponse:
        caller = self.auth.account(context)
        proof = self.rights.audit.inclusion_proof(
            caller.account_id, request.sequence, request.tree_size
        )
        return gateway_pb2.GetAuditInclusionProofResponse(
            leaf_index=proof.leaf_index,
            tree_size=proof.tree_size,
            hashes=proof.hashes,
            leaf=proof.leaf,
        )

    def GetAuditConsistencyProof(
        self, request: gateway_pb2.GetAuditConsistencyProofRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetAuditConsistencyProofResponse:
        caller = self.auth.account(context)
        proof = self.rights.audit.consistency_proof(
            caller.account_id, request.from_size, request.to_size
        )
        return gateway_pb2.GetAuditConsistencyProofResponse(
            from_size=proof.from_size, to_size=proof.to_size, hashes=proof.hashes
        )

    def GetAuditLogPublicKey(
        self, request: gateway_pb2.GetAuditLogPublicKeyRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetAuditLogPublicKeyResponse:
        caller = self.auth.account(context)
        return gateway_pb2.GetAuditLogPublicKeyResponse(
            verifier_key=self.rights.audit.log_public_key(caller.account_id)
        )

    def ExportTalentData(
        self, request: gateway_pb2.ExportTalentDataRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ExportTalentDataResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("talent_id", request.talent_id)
        checks.done()
        document = self.rights.export(caller.account_id, request.talent_id)
        return gateway_pb2.ExportTalentDataResponse(
            schema_version=document["schema_version"],
            document_json=json.dumps(document, ensure_ascii=False, indent=2),
        )

    def EraseTalent(
        self, request: gateway_pb2.EraseTalentRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.EraseTalentResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("talent_id", request.talent_id)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        checks.done()
        receipt_id, steps = self.erasures.erase(
            caller.account_id, request.talent_id, request.request_id
        )
        return gateway_pb2.EraseTalentResponse(
            receipt_id=receipt_id,
            talent_id=request.talent_id,
            steps=[erasure_step_message(s) for s in steps],
            completed_at=to_timestamp(steps[-1].completed_at),
        )

    # -- the calling account (gateway/accounts.py, closures.py, account_export.py) ---------------

    def GetAccount(
        self, request: gateway_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetAccountResponse:
        caller = self.auth.account(context)
        return gateway_pb2.GetAccountResponse(
            account=profile_message(self.accounts.profile(caller.account_id))
        )

    def UpdateAccount(
        self, request: gateway_pb2.UpdateAccountRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.UpdateAccountResponse:
        caller = self.auth.account(context)
        checks = Checks()
        name = email = None
        if request.HasField("name"):
            name = request.name
            checks.text("name", name, max_length=128)
        if request.HasField("email"):
            email = checks.text("email", request.email, max_length=EMAIL_MAX, required=False)
            if email and not EMAIL.fullmatch(email):
                checks.fail("email", EMAIL_RULE)
        if name is None and email is None:
            checks.fail("name", "set name or email (or both)")
        checks.done()
        account = self.accounts.update_profile(caller.account_id, name, email)
        return gateway_pb2.UpdateAccountResponse(account=profile_message(account))

    def CloseOwnAccount(
        self, request: gateway_pb2.CloseOwnAccountRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CloseOwnAccountResponse:
        caller = self.auth.account(context)
        checks = Checks()
        if request.confirm_account_id != caller.account_id:
            checks.fail("confirm_account_id", "must be the calling account's own id")
        checks.done()
        closure = self.closures.close(caller.account_id, caller.key_id)
        return gateway_pb2.CloseOwnAccountResponse(closure=closure_message(closure))

    def ExportOwnAccount(
        self, request: gateway_pb2.ExportOwnAccountRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ExportOwnAccountResponse:
        caller = self.auth.account(context)
        document = self.exports.export(caller.account_id)
        return gateway_pb2.ExportOwnAccountResponse(
            schema_version=EXPORT_SCHEMA, document_json=document
        )

    def DeleteTalentFace(
        self, request: gateway_pb2.DeleteTalentFaceRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.DeleteTalentFaceResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("talent_id", request.talent_id)
        checks.identifier("face_id", request.face_id)
        checks.done()
        face = self.rights.delete_face(
            caller.account_id, caller.key_id, request.talent_id, request.face_id
        )
        return gateway_pb2.DeleteTalentFaceResponse(face=face)

    def CreateProject(
        self, request: gateway_pb2.CreateProjectRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CreateProjectResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("project_id", request.project_id, required=False)
        checks.text("display_name", request.display_name, max_length=128)
        checks.done()
        project = self.projects.create(caller.account_id, request.project_id, request.display_name)
        return gateway_pb2.CreateProjectResponse(project=project_message(project))

    def ListProjects(
        self, request: gateway_pb2.ListProjectsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListProjectsResponse:
        caller = self.auth.account(context)
        checks = Checks()
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters: dict[str, Any] = {}
        after = _position(request.page_token, filters, 4, time_at=1)
        if after is not None and after[0] not in ("0", "1"):
            raise InvalidArgument.one("page_token", "not a token this service issued")
        projects, last = self.projects.projects(caller.account_id, page_size, after)
        return gateway_pb2.ListProjectsResponse(
            projects=[project_message(p) for p in projects],
            next_page_token=next_page_token(last, filters),
        )

    def InviteCollaborator(
        self, request: gateway_pb2.InviteCollaboratorRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.InviteCollaboratorResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("project_id", request.project_id)
        checks.identifier("account_id", request.account_id)
        if request.account_id and request.account_id == caller.account_id:
            checks.fail("account_id", "an account cannot invite itself")
        checks.enum(
            "role",
            request.role,
            gateway_pb2.ProjectRole,
            allowed=INVITABLE,
        )
        checks.done()
        collaborator = self.projects.invite(
            caller.account_id, caller.key_id, request.project_id, request.account_id, request.role
        )
        return gateway_pb2.InviteCollaboratorResponse(
            collaborator=collaborator_message(collaborator)
        )

    def AcceptInvitation(
        self, request: gateway_pb2.AcceptInvitationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.AcceptInvitationResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("project_id", request.project_id)
        checks.identifier("owner_account_id", request.owner_account_id)
        checks.done()
        project = self.projects.accept(
            caller.account_id, request.owner_account_id, request.project_id
        )
        return gateway_pb2.AcceptInvitationResponse(project=project_message(project))

    def RemoveCollaborator(
        self, request: gateway_pb2.RemoveCollaboratorRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.RemoveCollaboratorResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("project_id", request.project_id)
        checks.identifier("account_id", request.account_id)
        checks.done()
        collaborator = self.projects.remove(
            caller.account_id, caller.key_id, request.project_id, request.account_id
        )
        return gateway_pb2.RemoveCollaboratorResponse(
            collaborator=collaborator_message(collaborator)
        )

    def ListCollaborators(
        self, request: gateway_pb2.ListCollaboratorsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListCollaboratorsResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("project_id", request.project_id)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"p": request.project_id}
        after = _position(request.page_token, filters, 2)
        collaborators, last = self.projects.collaborators(
            caller.account_id, request.project_id, page_size, after
        )
        profiles = self.accounts.profiles({c.account_id for c in collaborators})
        return gateway_pb2.ListCollaboratorsResponse(
            collaborators=[
                collaborator_message(c, profiles.get(c.account_id)) for c in collaborators
            ],
            next_page_token=next_page_token(last, filters),
        )

    def ListMedia(
        self, request: gateway_pb2.ListMediaRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListMediaResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("project_id", request.project_id)
        if request.label:
            checks.enum("label", request.label, common_pb2.FaceLabel)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"p": request.project_id, "l": request.label, "u": request.undecided}
        after = _position(request.page_token, filters, 2)
        scope = self.projects.project_scope(caller.account_id, request.project_id, Action.READ)
        media, last = self.reviews.media(
            scope,
            caller.account_id,
            label=request.label,
            undecided=request.undecided,
            page_size=page_size,
            after=after,
        )
        return gateway_pb2.ListMediaResponse(
            media=[media_summary_message(m) for m in media],
            next_page_token=next_page_token(last, filters),
        )

    def RecordReviewDecision(
        self, request: gateway_pb2.RecordReviewDecisionRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.RecordReviewDecisionResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("media_id", request.media_id)
        if request.face_index < 0:
            checks.fail("face_index", "must be 0 or more")
        checks.enum("decision", request.decision, common_pb2.ReviewDecision)
        checks.text("note", request.note, max_length=1000, required=False)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        checks.done()
        scope = self.projects.media_scope(caller.account_id, request.media_id, Action.REVIEW)
        decision = self.reviews.decide(
            scope,
            caller.account_id,
            caller.key_id,
            NewDecision(
                request.face_index,
                request.decision,
                request.note,
                request.request_id,
                confirm_not_cleared=request.confirm_not_cleared,
            ),
        )
        return gateway_pb2.RecordReviewDecisionResponse(decision=decision_message(decision))

    def ListClearanceReport(
        self, request: gateway_pb2.ListClearanceReportRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListClearanceReportResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("project_id", request.project_id)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"p": request.project_id, "r": "report"}
        after = _position(request.page_token, filters, 2)
        scope = self.projects.project_scope(caller.account_id, request.project_id, Action.READ)
        project, media, last = self.reports.page(scope, caller.account_id, page_size, after)
        return gateway_pb2.ListClearanceReportResponse(
            project=project_message(project),
            media=[report_media_message(m) for m in media],
            next_page_token=next_page_token(last, filters),
        )

    def ListAccessLog(
        self, request: gateway_pb2.ListAccessLogRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListAccessLogResponse:
        caller = self.auth.account(context)
        checks = Checks()
        since = checks.timestamp("since", request.since, request.HasField("since"), required=False)
        checks.identifier("project_id", request.project_id, required=False)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {
            "a": caller.account_id,
            "s": since.isoformat() if since else "",
            "p": request.project_id,
        }
        after = decode_page_token(request.page_token, filters) or 0
        entries, next_after = self.access_log.entries(
            caller.account_id, AccessFilter(since, request.project_id), page_size, after
        )
        return gateway_pb2.ListAccessLogResponse(
            entries=[access_entry_message(entry) for entry in entries],
            next_page_token=next_page_token(next_after, filters),
        )

    # -- webhooks (gateway/webhooks.py): the caller's own account's endpoints ------------------

    def AddWebhook(
        self, request: gateway_pb2.AddWebhookRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.AddWebhookResponse:
        caller = self.auth.account(context)
        checks = Checks()
        check_url(checks, "url", request.url, allow_private=self.webhooks.allow_private)
        checks.count("event_types", request.event_types, minimum=0, maximum=MAX_EVENT_TYPES)
        for i, event_type in enumerate(request.event_types):
            if event_type not in EVENT_TYPES:
                checks.fail(f"event_types[{i}]", f"must be one of {', '.join(EVENT_TYPES)}")
        checks.text("request_id", request.request_id, max_length=128, required=False)
        checks.done()
        webhook, secret = self.webhooks.add(
            caller.account_id, request.url, request.event_types, request.request_id
        )
        return gateway_pb2.AddWebhookResponse(webhook=webhook_message(webhook), secret=secret)

    def ListWebhooks(
        self, request: gateway_pb2.ListWebhooksRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListWebhooksResponse:
        caller = self.auth.account(context)
        checks = Checks()
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"a": caller.account_id}
        position = _position(request.page_token, filters, 2)
        after = (from_micros(position[0]), position[1]) if position else None
        webhooks, last = self.webhooks.list(caller.account_id, page_size, after)
        return gateway_pb2.ListWebhooksResponse(
            webhooks=[webhook_message(w) for w in webhooks],
            next_page_token=next_page_token(last and [micros(last[0]), last[1]], filters),
        )

    def RemoveWebhook(
        self, request: gateway_pb2.RemoveWebhookRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.RemoveWebhookResponse:
        caller = self.auth.account(context)
        _webhook_id(request.webhook_id)
        webhook = self.webhooks.remove(caller.account_id, request.webhook_id)
        return gateway_pb2.RemoveWebhookResponse(webhook=webhook_message(webhook))

    def TestWebhook(
        self, request: gateway_pb2.TestWebhookRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.TestWebhookResponse:
        caller = self.auth.account(context)
        _webhook_id(request.webhook_id)
        message_id = self.webhooks.test(caller.account_id, request.webhook_id)
        return gateway_pb2.TestWebhookResponse(message_id=message_id)

    def RotateWebhookSecret(
        self, request: gateway_pb2.RotateWebhookSecretRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.RotateWebhookSecretResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("webhook_id", request.webhook_id)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        checks.done()
        webhook, secret = self.webhooks.rotate(
            caller.account_id, request.webhook_id, request.request_id
        )
        return gateway_pb2.RotateWebhookSecretResponse(
            webhook=webhook_message(webhook), secret=secret
        )

    # -- analysis jobs (docs/jobs.md) --

    def GetJob(
        self, request: gateway_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetJobResponse:
        caller = self.auth.account(context)
        _job_id(request.job_id)
        return gateway_pb2.GetJobResponse(
            job=job_message(self.jobs.get(caller.account_id, request.job_id))
        )

    def WatchJob(
        self, request: gateway_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.WatchJobResponse]:
        caller = self.auth.account(context)
        _job_id(request.job_id)
        for job in self.jobs.watch(caller.account_id, request.job_id, context.is_active):
            yield gateway_pb2.WatchJobResponse(job=job_message(job))

    def CancelJob(
        self, request: gateway_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CancelJobResponse:
        caller = self.auth.account(context)
        _job_id(request.job_id)
        job = self.jobs.cancel(caller.account_id, request.job_id)
        return gateway_pb2.CancelJobResponse(job=job_message(job))

    def ListJobs(
        self, request: gateway_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListJobsResponse:
        caller = self.auth.account(context)
        checks = Checks()
        checks.identifier("project_id", request.project_id)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"p": request.project_id}
        after = _position(request.page_token, filters, 2)
        scope = self.projects.project_scope(caller.account_id, request.project_id, Action.READ)
        jobs, last = self.jobs.list(scope, caller.account_id, page_size, after)
        return gateway_pb2.ListJobsResponse(
            jobs=[job_message(j) for j in jobs], next_page_token=next_page_token(last, filters)
        )


def _webhook_id(value: str) -> None:
    checks = Checks()
    checks.identifier("webhook_id", value)
    checks.done()


def _job_id(job_id: str) -> None:
    checks = Checks()
    checks.identifier("job_id", job_id)
    checks.done()


def _position(
    token: str, filters: dict[str, Any], length: int, *, time_at: int = 0
) -> list[str] | None:
    """A listing's position: `length` identifiers, the one at `time_at` a time in microseconds
    (projects.micros); None for the first page."""
    position = decode_page_token(token, filters, kind=list)
    if position is None:
        return None
    if len(position) != length or not _a_time(position[time_at]):
        raise InvalidArgument.one("page_token", "not a token this service issued")
    return list(position)


_MAX_MICROS_DIGITS = 18  # microseconds since 1970 to year 9999 have 15 digits; a BIGINT 19


def _a_time(position: str) -> bool:
    """Whether a token's time is one we could have issued: a forged one (too many digits, out of
    the calendar's range) must be INVALID_ARGUMENT, not an overflow deep in a query."""
    if not (position.isascii() and position.isdigit()) or len(position) > _MAX_MICROS_DIGITS:
        return False
    try:
        from_micros(position)
    except (OverflowError, ValueError):
        return False
    return True
