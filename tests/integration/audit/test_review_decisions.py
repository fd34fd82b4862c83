"""Review decisions as audit events: recorded on the account's chain beside match results,
hashed with their kind and decision, talent-hashed like matches, refused when malformed; and
chains recorded before kinds existed still verify."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import func, insert, select, update

from mixip.audit.v1 import audit_pb2
from mixip.common.v1 import common_pb2
from mixip.runtime import migrations
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper
from mixip.runtime.times import to_timestamp
from services.audit.app import AuditApp
from services.audit.domain import GENESIS_HASH
from services.audit.store import Base, ChainHead, EventRow
from tests.integration.audit.test_audit_service import ACCOUNT, event, list_all, record
from tests.support.status import expect_error, expect_invalid

REVIEW = audit_pb2.EVENT_KIND_REVIEW_DECISION
MATCH = audit_pb2.EVENT_KIND_MATCH
BLOCKED = common_pb2.REVIEW_DECISION_BLOCKED
APPROVED = common_pb2.REVIEW_DECISION_APPROVED_FOR_RELEASE
BEFORE_KINDS = "7c1d2e9a4b60"  # the audit revision before event kinds


def decision(key: str, clock, verdict=BLOCKED, *, talent: str = "t-ada"):
    """A review decision on the face `key` names, with the face's result at decision time."""
    decided = event(key, clock, talent=talent)
    decided.kind, decided.decision = REVIEW, verdict
    return decided


def record_events(stub, events, account=ACCOUNT):
    return stub.RecordMatchEvents(
        audit_pb2.RecordMatchEventsRequest(account_id=account, events=events)
    )


def verify(stub, account=ACCOUNT) -> audit_pb2.VerifyLogResponse:
    return stub.VerifyLog(audit_pb2.VerifyLogRequest(account_id=account))


def rows(handle) -> int:
    with handle.app.db.read() as session:
        return session.scalar(select(func.count()).select_from(EventRow))


def test_decisions_join_the_chain_with_their_kind_and_matches_read_as_matches(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["m1:0"])  # a caller from before kinds: kind unspecified
    clock.advance(minutes=5)
    reply = record_events(stub, [decision("m1:0:review:1", clock, BLOCKED)])
    assert (reply.recorded_count, reply.duplicate_count) == (1, 0)
    explicit = event("m2:0", clock, talent="")
    explicit.kind = MATCH
    record_events(stub, [explicit, decision("m1:0:review:2", clock, APPROVED)])

    events = list_all(stub)
    assert [(e.kind, e.decision) for e in events] == [
        (MATCH, common_pb2.REVIEW_DECISION_UNSPECIFIED),
        (REVIEW, BLOCKED),
        (MATCH, common_pb2.REVIEW_DECISION_UNSPECIFIED),
        (REVIEW, APPROVED),
    ]
    assert events[1].label == common_pb2.FACE_LABEL_CLEARED and events[1].talent_linked
    verdict = verify(stub)
    assert verdict.ok and verdict.events_checked == 4


def test_a_chain_recorded_before_kinds_existed_still_verifies_with_decisions_after_it(
    database_url, tmp_path, serve, clock, channels
):
    """Events written by the schema and hash of before kinds (an old canonical form, spelled
    out here rather than taken from the code under test), then the upgrade, then decisions and
    matches appended by the current service: the whole chain verifies."""
    url = database_url("audit")
    migrations.upgrade(url, "audit", BEFORE_KINDS)
    old = Database(url, Base.metadata)
    prev = GENESIS_HASH
    at = clock()
    with old.engine.begin() as connection:
        for sequence in (1, 2, 3):
            fields = {
                "account_id": ACCOUNT,
                "sequence": sequence,
                "idempotency_key": f"old:{sequence}",
                "project_id": "proj-1",
                "media_id": f"media-old-{sequence}",
                "face_index": 0,
                "label": common_pb2.FACE_LABEL_UNKNOWN,
                "reason": common_pb2.LABEL_REASON_NO_MATCH,
                "similarity": 0.12,
                "talent_hash": "",
                "actor": "key-1",
                "occurred_at": at.isoformat(timespec="microseconds"),
                "recorded_at": at.isoformat(timespec="microseconds"),
            }
            canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
            digest = hashlib.sha256(bytes.fromhex(prev) + canonical).hexdigest()
            values = {k: v for k, v in fields.items() if not k.endswith("_at")}
            values |= {"talent_hash": None, "occurred_at": at, "recorded_at": at}
            connection.execute(
                insert(EventRow.__table__).values(**values, prev_hash=prev, event_hash=digest)
            )
            prev = digest
        connection.execute(
            insert(ChainHead.__table__).values(
                account_id=ACCOUNT, last_sequence=3, last_hash=prev, last_recorded_at=at
            )
        )
    old.dispose()

    app = AuditApp(Database(url, Base.metadata), LocalKeyWrapper(tmp_path / "kek.key"), clock)
    running = serve(app)  # the app upgraded the database to head
    from mixip.audit.v1 import audit_pb2_grpc
    from services.audit.app import SERVICE_NAME

    stub = audit_pb2_grpc.AuditServiceStub(channels(f"127.0.0.1:{running.port}", SERVICE_NAME))
    assert verify(stub).ok  # the old chain, read through the new columns' defaults
    clock.advance(hours=1)
    record_events(stub, [decision("old:1:review", clock, BLOCKED, talent="")])
    record(stub, clock, ["new:1"])

    events = list_all(stub)
    assert [e.kind for e in events] == [MATCH, MATCH, MATCH, REVIEW, MATCH]
    assert events[3].prev_hash == prev and events[3].decision == BLOCKED
    verdict = verify(stub)
    assert verdict.ok and verdict.events_checked == 5, verdict.detail


def test_changing_a_stored_decision_breaks_the_chain(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["m1:0"])
    record_events(stub, [decision("m1:0:review", clock, BLOCKED)])
    record(stub, clock, ["m2:0"])
    assert verify(stub).ok
    with audit_service.app.db.write() as session:
        session.execute(update(EventRow).where(EventRow.sequence == 2).values(decision=APPROVED))

    verdict = verify(stub)
    assert not verdict.ok and verdict.first_broken_sequence == 2
    assert "altered" in verdict.detail


def test_relabelling_a_decision_as_a_match_breaks_the_chain(audit_service, clock):
    stub = audit_service.stub
    record_events(stub, [decision("m1:0:review", clock, BLOCKED)])
    with audit_service.app.db.write() as session:
        session.execute(
            update(EventRow).where(EventRow.sequence == 1).values(kind=MATCH, decision=0)
        )
    assert verify(stub).first_broken_sequence == 1


def test_a_decision_is_talent_hashed_and_unlinkable_after_the_salt_is_shredded(
    audit_service, clock
):
    stub = audit_service.stub
    talent = "talent-rv9-unique"
    record(stub, clock, ["m1:0"], talent=talent)
    record_events(stub, [decision("m1:0:review", clock, BLOCKED, talent=talent)])
    linked = list_all(stub, talent_id=talent)
    assert [e.kind for e in linked] == [MATCH, REVIEW] and all(e.talent_linked for e in linked)
    with audit_service.app.db.read() as session:
        hashes = set(session.scalars(select(EventRow.talent_hash)))
        stored = [repr(v) for row in session.execute(select(EventRow.__table__)) for v in row]
    assert len(hashes) == 1 and None not in hashes  # one salted hash, the match's
    assert not any(talent in value for value in stored)

    stub.ShredTalentSalt(audit_pb2.ShredTalentSaltRequest(account_id=ACCOUNT, talent_id=talent))

    assert list_all(stub, talent_id=talent) == []
    assert [e.decision for e in list_all(stub)] == [0, BLOCKED]  # the events stay
    # a decision recorded after the erasure is not linked either
    record_events(stub, [decision("m1:0:review:late", clock, APPROVED, talent=talent)])
    assert list_all(stub, talent_id=talent) == []
    assert not list_all(stub)[-1].talent_linked
    assert verify(stub).ok


def test_a_reused_key_with_another_decision_is_refused(audit_service, clock):
    stub = audit_service.stub
    record_events(stub, [decision("m1:0:review", clock, BLOCKED)])
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        record_events,
        stub,
        [decision("m1:0:review", clock, APPROVED)],
    )
    assert details.reason == "IDEMPOTENCY_KEY_REUSED"
    same = record_events(stub, [decision("m1:0:review", clock, BLOCKED)])
    assert (same.recorded_count, same.duplicate_count) == (0, 1)
    assert rows(audit_service) == 1


def _with(kind: int, verdict: int):
    def mutate(request):
        request.events[0].kind, request.events[0].decision = kind, verdict

    return mutate


@pytest.mark.parametrize(
    ("mutate", "fields"),
    [
        (_with(REVIEW, 0), {"events[0].decision"}),
        (_with(REVIEW, 42), {"events[0].decision"}),
        (_with(MATCH, BLOCKED), {"events[0].decision"}),
        (_with(audit_pb2.EVENT_KIND_UNSPECIFIED, APPROVED), {"events[0].decision"}),
        (_with(7, 0), {"events[0].kind"}),
        (_with(7, BLOCKED), {"events[0].kind", "events[0].decision"}),
    ],
)
def test_malformed_kinds_and_decisions_are_refused_and_nothing_is_written(
    audit_service, clock, mutate, fields
):
    request = audit_pb2.RecordMatchEventsRequest(
        account_id=ACCOUNT, events=[event("bad", clock, talent="t-ada"), event("ok", clock)]
    )
    mutate(request)
    expect_invalid(audit_service.stub.RecordMatchEvents, request, fields=fields)
    assert rows(audit_service) == 0


def test_a_purge_removes_expired_decisions_like_matches(audit_service, clock):
    stub = audit_service.stub
    record_events(stub, [decision("m1:0:review", clock, BLOCKED)])
    clock.advance(days=400)
    record_events(stub, [decision("m2:0:review", clock, APPROVED)])
    reply = stub.PurgeExpired(
        audit_pb2.PurgeExpiredRequest(cutoff=to_timestamp(clock() - timedelta(days=365)))
    )
    assert reply.purged_count == 1 and reply.done
    assert [e.decision for e in list_all(stub)] == [APPROVED]
    assert verify(stub).ok
