"""The gRPC edge of the audit service: validate, convert, delegate to `AuditLog`."""

from __future__ import annotations

import math
from datetime import timedelta

import grpc

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.common.v1 import common_pb2
from mixip.runtime.errors import InvalidArgument
from mixip.runtime.limits import DEFAULT_EVENT_PURGE_BATCH, MAX_BATCH, MAX_EVENT_PURGE_BATCH
from mixip.runtime.paging import decode_page_token, next_page_token
from mixip.runtime.times import Clock, to_timestamp
from mixip.runtime.validation import Checks
from mixip.tlog.proof import ProofError
from services.audit.domain import ChainedEvent
from services.audit.service import AuditLog, EventFilter, NewEvent, TreeNotReached

# A cutoff in the future would purge events as they are written: refuse it (small clock skew ok).
_CUTOFF_SKEW = timedelta(minutes=5)


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, log: AuditLog, clock: Clock) -> None:
        self.log = log
        self.clock = clock

    def RecordMatchEvents(
        self, request: audit_pb2.RecordMatchEventsRequest, context: grpc.ServicerContext
    ) -> audit_pb2.RecordMatchEventsResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.count("events", request.events, minimum=1, maximum=MAX_BATCH)
        events = []
        for i, event in enumerate(request.events[:MAX_BATCH]):
            new = _new_event(checks, f"events[{i}]", event)
            if new is not None:  # else its time was bad: checks.done() refuses the call
                events.append(new)
        checks.done()
        recorded, duplicates = self.log.record(request.account_id, events)
        return audit_pb2.RecordMatchEventsResponse(
            recorded_count=recorded, duplicate_count=duplicates
        )

    def ListEvents(
        self, request: audit_pb2.ListEventsRequest, context: grpc.ServicerContext
    ) -> audit_pb2.ListEventsResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.identifier("talent_id", request.talent_id, required=False)
        checks.identifier("project_id", request.project_id, required=False)
        since = checks.timestamp("since", request.since, request.HasField("since"), required=False)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        where = EventFilter(request.account_id, request.talent_id, request.project_id, since)
        filters = {
            "a": where.account_id,
            "t": where.talent_id,
            "p": where.project_id,
            "s": since.isoformat() if since else "",
        }
        after = decode_page_token(request.page_token, filters) or 0
        events, next_after = self.log.list_events(where, page_size, after)
        return audit_pb2.ListEventsResponse(
            events=[_event(event) for event in events],
            next_page_token=next_page_token(next_after, filters),
        )

    def VerifyLog(
        self, request: audit_pb2.VerifyLogRequest, context: grpc.ServicerContext
    ) -> audit_pb2.VerifyLogResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id, required=False)
        checks.done()
        verdict = self.log.verify(request.account_id)
        return audit_pb2.VerifyLogResponse(
            ok=verdict.ok,
            events_checked=verdict.events_checked,
            first_broken_sequence=verdict.first_broken_sequence,
            broken_account_id=verdict.broken_account_id,
            detail=verdict.detail,
            chains_checked=verdict.chains_checked,
        )

    def ShredTalentSalt(
        self, request: audit_pb2.ShredTalentSaltRequest, context: grpc.ServicerContext
    ) -> audit_pb2.ShredTalentSaltResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.identifier("talent_id", request.talent_id)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        checks.done()
        destroyed, when = self.log.shred(request.account_id, request.talent_id)
        return audit_pb2.ShredTalentSaltResponse(
            salt_destroyed=destroyed, shredded_at=to_timestamp(when)
        )

    def LiftShredMarker(
        self, request: audit_pb2.LiftShredMarkerRequest, context: grpc.ServicerContext
    ) -> audit_pb2.LiftShredMarkerResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.identifier("talent_id", request.talent_id)
        checks.done()
        lifted = self.log.lift_marker(request.account_id, request.talent_id)
        return audit_pb2.LiftShredMarkerResponse(lifted=lifted)

    def PurgeExpired(
        self, request: audit_pb2.PurgeExpiredRequest, context: grpc.ServicerContext
    ) -> audit_pb2.PurgeExpiredResponse:
        checks = Checks()
        cutoff = checks.timestamp("cutoff", request.cutoff, request.HasField("cutoff"))
        if cutoff is not None and cutoff > self.clock() + _CUTOFF_SKEW:
            checks.fail("cutoff", "must not be in the future")
        batch = request.batch_size or DEFAULT_EVENT_PURGE_BATCH
        if not 1 <= batch <= MAX_EVENT_PURGE_BATCH:
            checks.fail(
                "batch_size",
                f"must be between 1 and {MAX_EVENT_PURGE_BATCH}"
                f" (0 means {DEFAULT_EVENT_PURGE_BATCH})",
            )
        checks.done()
        assert cutoff is not None  # required: checks.done() refused its absence
        purged, done, checkpoints, salts = self.log.purge(cutoff, batch)
        return audit_pb2.PurgeExpiredResponse(
            purged_count=purged,
            done=done,
            checkpoints_written=checkpoints,
            vault_entries_deleted=salts,
        )

    def RotateVault(
        self, request: audit_pb2.RotateVaultRequest, context: grpc.ServicerContext
    ) -> audit_pb2.RotateVaultResponse:
        rotation = self.log.rotate_vault()
        return audit_pb2.RotateVaultResponse(
            key_version=rotation.key_version,
            rotated_at=to_timestamp(rotation.rotated_at),
            vault_entries_resealed=rotation.secrets_resealed,
        )

    def GetVaultStatus(
        self, request: audit_pb2.GetVaultStatusRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetVaultStatusResponse:
        status = self.log.vault_status()
        return audit_pb2.GetVaultStatusResponse(
            key_version=status.key_version, rotated_at=to_timestamp(status.rotated_at)
        )

    def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetCheckpointResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.done()
        return audit_pb2.GetCheckpointResponse(checkpoint=self.log.checkpoint(request.account_id))

    def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetInclusionProofResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        if request.sequence < 1:
            checks.fail("sequence", "must be 1 or more")
        if request.tree_size < 1:
            checks.fail("tree_size", "must be 1 or more")
        checks.done()
        try:
            inclusion = self.log.inclusion_proof(
                request.account_id, request.sequence, request.tree_size
            )
        except TreeNotReached as exc:
            raise InvalidArgument.one("tree_size", str(exc), reason="NOT_IN_TREE") from None
        except ProofError as exc:
            raise InvalidArgument.one("sequence", str(exc), reason="NOT_IN_TREE") from None
        return audit_pb2.GetInclusionProofResponse(
            leaf_index=inclusion.leaf_index,
            tree_size=request.tree_size,
            hashes=inclusion.hashes,
            leaf=inclusion.leaf,
        )

    def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetConsistencyProofResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        if request.from_size < 0:
            checks.fail("from_size", "must be 0 or more")
        if request.to_size < request.from_size:
            checks.fail("to_size", "must be at least from_size")
        checks.done()
        try:
            hashes = self.log.consistency_proof(
                request.account_id, request.from_size, request.to_size
            )
        except TreeNotReached as exc:
            raise InvalidArgument.one("to_size", str(exc), reason="NOT_IN_TREE") from None
        return audit_pb2.GetConsistencyProofResponse(
            from_size=request.from_size, to_size=request.to_size, hashes=hashes
        )

    def GetLogPublicKey(
        self, request: audit_pb2.GetLogPublicKeyRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetLogPublicKeyResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.done()
        return audit_pb2.GetLogPublicKeyResponse(
            verifier_key=self.log.public_key(request.account_id)
        )


_LABELS = {
    common_pb2.FACE_LABEL_CLEARED,
    common_pb2.FACE_LABEL_POSSIBLE,
    common_pb2.FACE_LABEL_UNKNOWN,
}


def _new_event(checks: Checks, at: str, event: audit_pb2.MatchEventInput) -> NewEvent | None:
    checks.text(f"{at}.idempotency_key", event.idempotency_key, max_length=200)
    checks.identifier(f"{at}.project_id", event.project_id)
    checks.identifier(f"{at}.media_id", event.media_id)
    if event.face_index < 0:
        checks.fail(f"{at}.face_index", "must be 0 or more")
    checks.enum(f"{at}.label", event.label, common_pb2.FaceLabel)
    checks.enum(f"{at}.reason", event.reason, common_pb2.LabelReason)
    if not math.isfinite(event.similarity) or not -1.0 <= event.similarity <= 100.0:
        checks.fail(f"{at}.similarity", "must be a finite number between -1 and 100")
    checks.identifier(f"{at}.talent_id", event.talent_id, required=False)
    if event.label == common_pb2.FACE_LABEL_UNKNOWN and event.talent_id:
        checks.fail(f"{at}.talent_id", "must be empty for an UNKNOWN face")
    if event.label in _LABELS - {common_pb2.FACE_LABEL_UNKNOWN} and not event.talent_id:
        checks.fail(f"{at}.talent_id", "required for CLEARED and POSSIBLE faces")
    checks.text(f"{at}.actor", event.actor, max_length=128)
    occurred = checks.timestamp(
        f"{at}.occurred_at", event.occurred_at, event.HasField("occurred_at")
    )
    kind = checks.enum(
        f"{at}.kind",
        event.kind,
        audit_pb2.EventKind,
        allowed=(
            audit_pb2.EVENT_KIND_UNSPECIFIED,
            audit_pb2.EVENT_KIND_MATCH,
            audit_pb2.EVENT_KIND_REVIEW_DECISION,
        ),
    )
    if kind == audit_pb2.EVENT_KIND_REVIEW_DECISION:
        checks.enum(f"{at}.decision", event.decision, common_pb2.ReviewDecision)
    elif event.decision != common_pb2.REVIEW_DECISION_UNSPECIFIED:
        checks.fail(
            f"{at}.decision", "must be unspecified unless kind is EVENT_KIND_REVIEW_DECISION"
        )
    if occurred is None:
        return None
    return NewEvent(
        idempotency_key=event.idempotency_key,
        project_id=event.project_id,
        media_id=event.media_id,
        face_index=event.face_index,
        label=event.label,
        reason=event.reason,
        similarity=event.similarity,
        talent_id=event.talent_id,
        actor=event.actor,
        occurred_at=occurred,
        # unspecified is a match (callers from before kinds existed send none)
        kind=event.kind or audit_pb2.EVENT_KIND_MATCH,
        decision=event.decision,
    )


def _event(event: ChainedEvent) -> audit_pb2.AuditEvent:
    content = event.content
    return audit_pb2.AuditEvent(
        sequence=content.sequence,
        account_id=content.account_id,
        project_id=content.project_id,
        media_id=content.media_id,
        face_index=content.face_index,
        label=common_pb2.FaceLabel.ValueType(content.label),
        reason=common_pb2.LabelReason.ValueType(content.reason),
        similarity=content.similarity,
        talent_linked=content.talent_hash is not None,
        actor=content.actor,
        occurred_at=to_timestamp(content.occurred_at),
        recorded_at=to_timestamp(content.recorded_at),
        event_hash=event.event_hash,
        prev_hash=event.prev_hash,
        idempotency_key=content.idempotency_key,
        kind=audit_pb2.EventKind.ValueType(content.kind),
        decision=common_pb2.ReviewDecision.ValueType(content.decision),
        leaf=content.canonical(),
    )
