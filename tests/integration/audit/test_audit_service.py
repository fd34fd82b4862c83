"""The audit service over gRPC on a real database: chain, salts, shred, purge, bad input."""

from __future__ import annotations

import threading
from datetime import timedelta
from itertools import pairwise

import grpc
import pytest
from sqlalchemy import func, select, update

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.common.v1 import common_pb2
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper
from mixip.runtime.times import to_timestamp
from services.audit.app import AuditApp
from services.audit.store import Base, EventRow, SaltRow
from tests.support.status import expect_error, expect_invalid

ACCOUNT = "acct-a"


def event(key: str, clock, *, talent: str = "", project: str = "proj-1", face: int = 0):
    label = common_pb2.FACE_LABEL_CLEARED if talent else common_pb2.FACE_LABEL_UNKNOWN
    reason = common_pb2.LABEL_REASON_CONSENTED_MATCH if talent else common_pb2.LABEL_REASON_NO_MATCH
    return audit_pb2.MatchEventInput(
        idempotency_key=key,
        project_id=project,
        media_id=f"media-{key}",
        face_index=face,
        label=label,
        reason=reason,
        similarity=0.91 if talent else 0.12,
        talent_id=talent,
        actor="key-1",
        occurred_at=to_timestamp(clock()),
    )


def record(stub, clock, keys, *, talent="t-ada", account=ACCOUNT, **kwargs):
    return stub.RecordMatchEvents(
        audit_pb2.RecordMatchEventsRequest(
            account_id=account, events=[event(k, clock, talent=talent, **kwargs) for k in keys]
        )
    )


def list_all(stub, account=ACCOUNT, **filters) -> list[audit_pb2.AuditEvent]:
    events, token = [], ""
    while True:
        page = stub.ListEvents(
            audit_pb2.ListEventsRequest(
                account_id=account, page_size=7, page_token=token, **filters
            )
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


def test_recorded_events_chain_and_verify(audit_service, clock):
    stub = audit_service.stub
    reply = record(stub, clock, [f"m1:{i}" for i in range(3)])
    assert (reply.recorded_count, reply.duplicate_count) == (3, 0)
    record(stub, clock, ["m2:0"], talent="")
    events = list_all(stub)
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert all(e.prev_hash == p.event_hash for p, e in pairwise(events))
    assert [e.talent_linked for e in events] == [True, True, True, False]
    verdict = stub.VerifyLog(audit_pb2.VerifyLogRequest(account_id=ACCOUNT))
    assert verdict.ok and verdict.events_checked == 4 and verdict.first_broken_sequence == 0


def test_recording_is_idempotent_by_key(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["a", "b"])
    again = record(stub, clock, ["a", "b", "c", "c"])
    assert (again.recorded_count, again.duplicate_count) == (1, 3)
    assert [e.idempotency_key for e in list_all(stub)] == ["a", "b", "c"]


def test_tampering_with_a_stored_event_is_caught(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, [f"k{i}" for i in range(5)])
    with audit_service.app.db.write() as session:
        session.execute(update(EventRow).where(EventRow.sequence == 3).values(similarity=0.2))
    verdict = stub.VerifyLog(audit_pb2.VerifyLogRequest())
    assert not verdict.ok
    assert (verdict.first_broken_sequence, verdict.broken_account_id) == (3, ACCOUNT)
    assert "altered" in verdict.detail


def test_deleting_an_event_is_caught(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, [f"k{i}" for i in range(5)])
    with audit_service.app.db.write() as session:
        session.execute(EventRow.__table__.delete().where(EventRow.sequence == 5))
    verdict = stub.VerifyLog(audit_pb2.VerifyLogRequest(account_id=ACCOUNT))
    assert not verdict.ok and verdict.first_broken_sequence == 5


def test_shred_unlinks_the_talent_and_the_log_still_verifies(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["k1", "k2"], talent="t-ada")
    record(stub, clock, ["k3"], talent="t-bob")
    assert len(list_all(stub, talent_id="t-ada")) == 2

    shred = stub.ShredTalentSalt(
        audit_pb2.ShredTalentSaltRequest(account_id=ACCOUNT, talent_id="t-ada")
    )
    assert shred.salt_destroyed

    assert list_all(stub, talent_id="t-ada") == []
    assert len(list_all(stub, talent_id="t-bob")) == 1
    assert len(list_all(stub)) == 3  # the events stay
    assert stub.VerifyLog(audit_pb2.VerifyLogRequest()).ok
    again = stub.ShredTalentSalt(
        audit_pb2.ShredTalentSaltRequest(account_id=ACCOUNT, talent_id="t-ada")
    )
    assert not again.salt_destroyed


def test_new_events_after_a_shred_do_not_link_to_old_ones(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["old"], talent="t-ada")
    stub.ShredTalentSalt(audit_pb2.ShredTalentSaltRequest(account_id=ACCOUNT, talent_id="t-ada"))
    # a new life starts with a biometric consent after the erasure, which lifts the marker
    stub.LiftShredMarker(audit_pb2.LiftShredMarkerRequest(account_id=ACCOUNT, talent_id="t-ada"))
    record(stub, clock, ["new"], talent="t-ada")
    assert [e.idempotency_key for e in list_all(stub, talent_id="t-ada")] == ["new"]


def test_a_shred_on_one_replica_takes_effect_on_another(
    audit_service, serve, channels, clock, tmp_path
):
    """Two replicas on one database: no replica may keep using a shredded salt."""
    from services.audit.app import SERVICE_NAME

    running = serve(_replica(audit_service, tmp_path, clock))
    other = audit_pb2_grpc.AuditServiceStub(channels(f"127.0.0.1:{running.port}", SERVICE_NAME))
    record(audit_service.stub, clock, ["k1"], talent="t-ada")
    assert len(list_all(other, talent_id="t-ada")) == 1
    other.ShredTalentSalt(audit_pb2.ShredTalentSaltRequest(account_id=ACCOUNT, talent_id="t-ada"))
    assert list_all(audit_service.stub, talent_id="t-ada") == []


def _replica(handle, tmp_path, clock) -> AuditApp:
    """Another audit process on the same database and key file (as the fixture makes them)."""
    key_file = tmp_path / "keys" / "audit-kek.key"
    return AuditApp(Database(handle.app.db.url, Base.metadata), LocalKeyWrapper(key_file), clock)


def test_concurrent_first_use_creates_one_salt(audit_service, clock):
    stub = audit_service.stub
    errors: list[Exception] = []

    def worker(i: int) -> None:
        try:
            record(stub, clock, [f"k{i}"], talent="t-new")
        except grpc.RpcError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list_all(stub, talent_id="t-new")) == 8
    with audit_service.app.db.read() as session:
        assert session.scalar(select(func.count()).select_from(SaltRow)) == 1
    assert audit_service.stub.VerifyLog(audit_pb2.VerifyLogRequest()).ok


def test_concurrent_vault_creators_get_the_same_salt(audit_service):
    """The vault itself is race-safe, even outside the per-account append lock."""
    vault, db = audit_service.app.log.vault, audit_service.app.db
    seen: list[bytes] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        barrier.wait()
        with db.write() as session:
            seen.append(vault.salts(session, ACCOUNT, ["t-race"], create=True)["t-race"])

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 6 and len(set(seen)) == 1


def test_purge_removes_expired_events_and_the_rest_still_verifies(audit_service, clock, backend):
    stub = audit_service.stub
    record(stub, clock, [f"old{i}" for i in range(5)])
    record(stub, clock, ["b-old"], account="acct-b")
    clock.advance(days=400)
    record(stub, clock, ["new1", "new2"])
    cutoff = to_timestamp(clock() - timedelta(days=365))

    total, rounds = 0, 0
    while True:
        reply = stub.PurgeExpired(audit_pb2.PurgeExpiredRequest(cutoff=cutoff, batch_size=2))
        total += reply.purged_count
        rounds += 1
        # SQLite deletes a batch per call; PostgreSQL drops the whole expired month at once
        assert reply.purged_count <= 2 or backend == "postgresql"
        if reply.done:
            break
    assert total == 6 and rounds == (3 if backend == "sqlite" else 1)
    assert [e.idempotency_key for e in list_all(stub)] == ["new1", "new2"]
    assert list_all(stub, account="acct-b") == []
    verdict = stub.VerifyLog(audit_pb2.VerifyLogRequest())
    assert verdict.ok and verdict.events_checked == 2 and verdict.chains_checked == 2
    again = stub.PurgeExpired(audit_pb2.PurgeExpiredRequest(cutoff=cutoff))
    assert (again.purged_count, again.done) == (0, True)
    record(stub, clock, ["after-purge"])  # the chain continues from its head
    assert stub.VerifyLog(audit_pb2.VerifyLogRequest()).ok


def test_tenants_do_not_see_each_other(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["a1"], talent="t-ada", account="acct-a")
    record(stub, clock, ["b1"], talent="t-ada", account="acct-b")
    a_events = list_all(stub, account="acct-a", talent_id="t-ada")
    assert [e.account_id for e in a_events] == ["acct-a"]
    stub.ShredTalentSalt(audit_pb2.ShredTalentSaltRequest(account_id="acct-b", talent_id="t-ada"))
    assert len(list_all(stub, account="acct-a", talent_id="t-ada")) == 1


def test_page_tokens_are_bound_to_their_filters(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, [f"k{i}" for i in range(25)])
    first = stub.ListEvents(audit_pb2.ListEventsRequest(account_id=ACCOUNT, page_size=10))
    assert len(first.events) == 10 and first.next_page_token
    assert len(list_all(stub)) == 25
    expect_invalid(
        stub.ListEvents,
        audit_pb2.ListEventsRequest(
            account_id=ACCOUNT, project_id="other", page_token=first.next_page_token
        ),
        fields={"page_token"},
    )
    expect_invalid(
        stub.ListEvents,
        audit_pb2.ListEventsRequest(account_id=ACCOUNT, page_token="garbage!"),
        fields={"page_token"},
    )


def _count_rows(handle) -> int:
    with handle.app.db.read() as session:
        return session.scalar(select(func.count()).select_from(EventRow))


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: setattr(r, "account_id", ""), "account_id"),
        (lambda r: setattr(r, "account_id", "x" * 129), "account_id"),
        (lambda r: setattr(r, "account_id", "has space"), "account_id"),
        (lambda r: setattr(r.events[0], "label", 42), "events[0].label"),
        (lambda r: setattr(r.events[0], "label", 0), "events[0].label"),
        (lambda r: setattr(r.events[0], "reason", 99), "events[0].reason"),
        (lambda r: setattr(r.events[0], "idempotency_key", "k" * 201), "events[0].idempotency_key"),
        (lambda r: setattr(r.events[0], "actor", "a" * 129), "events[0].actor"),
        (lambda r: setattr(r.events[0], "similarity", float("nan")), "events[0].similarity"),
        (lambda r: setattr(r.events[0], "face_index", -1), "events[0].face_index"),
        (lambda r: r.events[0].ClearField("occurred_at"), "events[0].occurred_at"),
        (lambda r: setattr(r.events[0], "talent_id", ""), "events[0].talent_id"),
        (lambda r: r.ClearField("events"), "events"),
    ],
)
def test_bad_events_are_refused_and_nothing_is_written(audit_service, clock, mutate, field):
    request = audit_pb2.RecordMatchEventsRequest(
        account_id=ACCOUNT, events=[event("ok", clock, talent="t-ada"), event("k2", clock)]
    )
    mutate(request)
    expect_invalid(audit_service.stub.RecordMatchEvents, request, fields={field})
    assert _count_rows(audit_service) == 0


def test_every_bad_field_is_reported_at_once(audit_service):
    details = expect_invalid(
        audit_service.stub.ListEvents,
        audit_pb2.ListEventsRequest(account_id="", talent_id="bad id", page_size=5000),
        fields={"account_id", "talent_id", "page_size"},
    )
    assert details.reason == "INVALID_ARGUMENT" and details.domain == "audit.mixip"


def test_purge_refuses_a_future_cutoff_or_a_huge_batch(audit_service, clock):
    future = to_timestamp(clock() + timedelta(days=1))
    expect_invalid(
        audit_service.stub.PurgeExpired,
        audit_pb2.PurgeExpiredRequest(cutoff=future, batch_size=10**6),
        fields={"cutoff", "batch_size"},
    )
    expect_invalid(
        audit_service.stub.PurgeExpired, audit_pb2.PurgeExpiredRequest(), fields={"cutoff"}
    )


def test_no_talent_id_is_stored_in_clear(audit_service, clock):
    talent = "talent-zq7-unique"
    record(audit_service.stub, clock, ["k1", "k2"], talent=talent)
    with audit_service.app.db.read() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(table.select()):
                for value in row:
                    raw = bytes(value) if isinstance(value, bytes | memoryview) else str(value)
                    needle = talent.encode() if isinstance(raw, bytes) else talent
                    assert needle not in raw, f"talent id in clear in {table.name}"


def test_no_rpc_returns_a_salt(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["k1"], talent="t-ada")
    with audit_service.app.db.read() as session:
        salt = audit_service.app.log.vault.salts(session, ACCOUNT, ["t-ada"], create=False)["t-ada"]
    responses = [
        stub.ListEvents(audit_pb2.ListEventsRequest(account_id=ACCOUNT)),
        stub.ListEvents(audit_pb2.ListEventsRequest(account_id=ACCOUNT, talent_id="t-ada")),
        stub.VerifyLog(audit_pb2.VerifyLogRequest()),
        stub.ShredTalentSalt(
            audit_pb2.ShredTalentSaltRequest(account_id=ACCOUNT, talent_id="t-ada")
        ),
    ]
    for response in responses:
        wire = response.SerializeToString()
        assert salt not in wire and salt.hex() not in wire.decode("latin-1")
    # and no message of the contract has a field that could carry one (only a yes/no)
    for message in audit_pb2.DESCRIPTOR.message_types_by_name.values():
        carriers = [f.name for f in message.fields if "salt" in f.name and f.type != f.TYPE_BOOL]
        assert carriers == [], message.name


def test_the_vault_survives_a_restart_with_the_same_key(audit_service, clock, tmp_path):
    record(audit_service.stub, clock, ["k1"], talent="t-ada")
    audit_service.running.stop(0)
    replica = _replica(audit_service, tmp_path, clock)
    with replica.db.read() as session:
        assert replica.log.vault.salts(session, ACCOUNT, ["t-ada"], create=False)
    replica.close()


def test_a_reused_key_with_other_content_is_refused_and_nothing_is_written(audit_service, clock):
    """A retry must repeat the first call: labels that changed in between are not recorded
    under the old key (and so can never be returned without their events)."""
    stub = audit_service.stub
    record(stub, clock, ["m:0"], talent="t-ada")
    changed = event("m:0", clock, talent="t-bob")
    also_new = event("m:1", clock, talent="t-ada")
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        stub.RecordMatchEvents,
        audit_pb2.RecordMatchEventsRequest(account_id=ACCOUNT, events=[also_new, changed]),
    )
    assert details.reason == "IDEMPOTENCY_KEY_REUSED"
    assert _count_rows(audit_service) == 1  # the whole batch was refused
    same = record(stub, clock, ["m:0"], talent="t-ada")
    assert (same.recorded_count, same.duplicate_count) == (0, 1)


def test_a_retry_about_an_erased_talent_is_refused(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["m:0"], talent="t-ada")
    stub.ShredTalentSalt(audit_pb2.ShredTalentSaltRequest(account_id=ACCOUNT, talent_id="t-ada"))
    expect_error(grpc.StatusCode.FAILED_PRECONDITION, record, stub, clock, ["m:0"], talent="t-ada")
    assert list_all(stub, talent_id="t-ada") == []  # and no new salt was made for it


def test_concurrent_purges_never_move_a_checkpoint_backwards(audit_service, clock):
    """A manual purge may overlap a scheduled one, on two replicas: the log must still verify."""
    stub = audit_service.stub
    for account in ("acct-a", "acct-b"):
        record(stub, clock, [f"{account}-{i}" for i in range(20)], account=account)
    clock.advance(days=400)
    record(stub, clock, ["fresh"])
    cutoff = to_timestamp(clock() - timedelta(days=365))
    totals, errors = [], []

    def purger() -> None:
        try:
            while True:
                reply = stub.PurgeExpired(
                    audit_pb2.PurgeExpiredRequest(cutoff=cutoff, batch_size=3)
                )
                totals.append(reply.purged_count)
                if reply.done:
                    return
        except grpc.RpcError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=purger) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sum(totals) == 40
    verdict = stub.VerifyLog(audit_pb2.VerifyLogRequest())
    assert verdict.ok and verdict.events_checked == 1
