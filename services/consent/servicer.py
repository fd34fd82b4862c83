"""The gRPC edge of the consent service: validate, convert, delegate to `ConsentLedger`."""

from __future__ import annotations

from datetime import timedelta

import grpc

from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import decode_page_token, next_page_token
from mixip.runtime.times import Clock, to_timestamp
from mixip.runtime.validation import Checks
from services.consent.domain import (
    BIOMETRIC,
    FACE_USAGE,
    ConsentKey,
    Evidence,
    NewRecord,
    Record,
)
from services.consent.service import ConsentLedger

_FUTURE_SKEW = timedelta(minutes=5)


class ConsentServicer(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(self, ledger: ConsentLedger, clock: Clock) -> None:
        self.ledger = ledger
        self.clock = clock

    def RecordConsent(
        self, request: consent_pb2.RecordConsentRequest, context: grpc.ServicerContext
    ) -> consent_pb2.RecordConsentResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        key = _key(checks, "", request.talent_id, request.scope, request.project_id)
        checks.enum("decision", request.decision, consent_pb2.ConsentDecision)
        evidence = self._evidence(checks, request)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        checks.done()
        record, replayed = self.ledger.record(
            request.account_id, NewRecord(key, request.decision, evidence, request.request_id)
        )
        return consent_pb2.RecordConsentResponse(record=_record(record), replayed=replayed)

    def _evidence(self, checks: Checks, request: consent_pb2.RecordConsentRequest) -> Evidence:
        if not request.HasField("evidence"):
            checks.fail("evidence", "required: method, policy_version, actor, captured_at")
            return Evidence("", "", "", self.clock())
        e = request.evidence
        checks.text("evidence.method", e.method, max_length=64)
        checks.text("evidence.policy_version", e.policy_version, max_length=64)
        checks.text("evidence.actor", e.actor, max_length=128)
        captured = checks.timestamp(
            "evidence.captured_at", e.captured_at, e.HasField("captured_at")
        )
        if captured is not None and captured > self.clock() + _FUTURE_SKEW:
            checks.fail("evidence.captured_at", "must not be in the future")
        return Evidence(e.method, e.policy_version, e.actor, captured or self.clock())

    def CheckConsent(
        self, request: consent_pb2.CheckConsentRequest, context: grpc.ServicerContext
    ) -> consent_pb2.CheckConsentResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        key = _key(checks, "", request.talent_id, request.scope, request.project_id)
        checks.done()
        [(state, latest)] = self.ledger.check(request.account_id, [key])
        return consent_pb2.CheckConsentResponse(
            state=consent_pb2.ConsentState.ValueType(state),
            latest=_record(latest) if latest else None,
        )

    def BatchCheckConsent(
        self, request: consent_pb2.BatchCheckConsentRequest, context: grpc.ServicerContext
    ) -> consent_pb2.BatchCheckConsentResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        cached = request.cached_version
        checks.count("queries", request.queries, minimum=0 if cached else 1, maximum=MAX_BATCH)
        checks.text("cached_version", cached, max_length=32, required=False)
        keys = [
            _key(checks, f"queries[{i}].", q.talent_id, q.scope, q.project_id)
            for i, q in enumerate(request.queries[:MAX_BATCH])
        ]
        checks.done()
        version, answers = self.ledger.versioned_check(request.account_id, keys)
        return consent_pb2.BatchCheckConsentResponse(
            answers=[
                consent_pb2.ConsentAnswer(
                    query=query, state=consent_pb2.ConsentState.ValueType(state)
                )
                for query, (state, _) in zip(request.queries, answers, strict=True)
            ],
            version=version,
            unchanged=bool(cached) and cached == version,
        )

    def ListConsentRecords(
        self, request: consent_pb2.ListConsentRecordsRequest, context: grpc.ServicerContext
    ) -> consent_pb2.ListConsentRecordsResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.identifier("talent_id", request.talent_id, required=False)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"a": request.account_id, "t": request.talent_id}
        after = decode_page_token(request.page_token, filters) or 0
        rows, next_after = self.ledger.list_records(
            request.account_id, request.talent_id, page_size, after
        )
        return consent_pb2.ListConsentRecordsResponse(
            records=[_record(r) for r in rows],
            next_page_token=next_page_token(next_after, filters),
        )

    def EraseTalentConsent(
        self, request: consent_pb2.EraseTalentConsentRequest, context: grpc.ServicerContext
    ) -> consent_pb2.EraseTalentConsentResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.identifier("talent_id", request.talent_id)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        checks.done()
        erasure = self.ledger.erase(request.account_id, request.talent_id, request.request_id)
        return consent_pb2.EraseTalentConsentResponse(
            records_deleted=erasure.records_deleted,
            outbox_rows_deleted=erasure.outbox_rows_deleted,
            tombstone_id=erasure.tombstone_id,
            erased_at=to_timestamp(erasure.erased_at),
        )


def _key(checks: Checks, at: str, talent_id: str, scope: int, project_id: str) -> ConsentKey:
    checks.identifier(f"{at}talent_id", talent_id)
    checks.enum(f"{at}scope", scope, consent_pb2.ConsentScope)
    if scope == FACE_USAGE:
        checks.identifier(f"{at}project_id", project_id)
    elif scope == BIOMETRIC and project_id:
        checks.fail(f"{at}project_id", "must be empty for BIOMETRIC_PROCESSING (it covers all)")
    return ConsentKey(talent_id, scope, project_id if scope == FACE_USAGE else "")


def _record(record: Record) -> consent_pb2.ConsentRecord:
    evidence = record.evidence
    return consent_pb2.ConsentRecord(
        record_id=record.record_id,
        account_id=record.account_id,
        talent_id=record.key.talent_id,
        scope=consent_pb2.ConsentScope.ValueType(record.key.scope),
        project_id=record.key.project_id,
        decision=consent_pb2.ConsentDecision.ValueType(record.decision),
        evidence=consent_pb2.Evidence(
            method=evidence.method,
            policy_version=evidence.policy_version,
            actor=evidence.actor,
            captured_at=to_timestamp(evidence.captured_at),
        ),
        recorded_at=to_timestamp(record.recorded_at),
        sequence=record.sequence,
    )
