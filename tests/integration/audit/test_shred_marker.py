"""The shred marker: no new salt for an erased talent until a biometric consent lifts it."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from mixip.audit.v1 import audit_pb2
from services.audit.store import EventRow, SaltRow, ShredMarkerRow
from tests.integration.audit.test_audit_service import ACCOUNT, list_all, record
from tests.support.status import expect_invalid


def _shred(stub, talent="t-ada"):
    return stub.ShredTalentSalt(
        audit_pb2.ShredTalentSaltRequest(account_id=ACCOUNT, talent_id=talent)
    )


def _lift(stub, talent="t-ada"):
    return stub.LiftShredMarker(
        audit_pb2.LiftShredMarkerRequest(account_id=ACCOUNT, talent_id=talent)
    )


def _salts(handle) -> int:
    with handle.app.db.read() as session:
        return session.scalar(select(func.count()).select_from(SaltRow))


def test_events_of_a_shredded_talent_are_recorded_unlinkable_and_make_no_salt(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["before"], talent="t-ada")
    assert _shred(stub).salt_destroyed is True  # a salt existed and went
    assert _salts(audit_service) == 0

    reply = record(stub, clock, ["late-1", "late-2"], talent="t-ada")  # an upload in flight
    assert reply.recorded_count == 2
    assert _salts(audit_service) == 0
    with audit_service.app.db.read() as session:
        hashes = session.scalars(
            select(EventRow.talent_hash).where(EventRow.idempotency_key.like("late-%"))
        ).all()
        assert hashes == [None, None]
        # the marker holds the vault's lookup HMAC and the account: no talent id, no salt
        (marker,) = session.scalars(select(ShredMarkerRow)).all()
        assert b"t-ada" not in marker.lookup and len(marker.lookup) == 32
    assert list_all(stub, talent_id="t-ada") == []
    # a retry of an unlinkable event is the same event
    assert record(stub, clock, ["late-1"], talent="t-ada").duplicate_count == 1
    assert stub.VerifyLog(audit_pb2.VerifyLogRequest(account_id=ACCOUNT)).ok


def test_a_shred_marks_even_a_talent_never_seen(audit_service, clock):
    stub = audit_service.stub
    assert _shred(stub, "t-new").salt_destroyed is False
    record(stub, clock, ["first"], talent="t-new")
    assert _salts(audit_service) == 0 and list_all(stub, talent_id="t-new") == []


def test_lifting_the_marker_starts_a_new_unlinked_life(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["old"], talent="t-ada")
    _shred(stub)
    record(stub, clock, ["late"], talent="t-ada")
    assert _lift(stub).lifted is True
    assert _lift(stub).lifted is False  # idempotent
    record(stub, clock, ["new"], talent="t-ada")
    assert [e.idempotency_key for e in list_all(stub, talent_id="t-ada")] == ["new"]
    assert _salts(audit_service) == 1


def test_markers_are_per_talent_and_per_account(audit_service, clock):
    stub = audit_service.stub
    _shred(stub, "t-ada")
    record(stub, clock, ["bob"], talent="t-bob")
    record(stub, clock, ["ada-b"], talent="t-ada", account="acct-b")
    assert len(list_all(stub, talent_id="t-bob")) == 1
    assert len(list_all(stub, account="acct-b", talent_id="t-ada")) == 1


def test_a_shred_and_an_append_are_serialized(audit_service, clock):
    """Many appends racing a shred: whichever order each took, no salt is left after it."""
    stub = audit_service.stub
    record(stub, clock, ["seed"], talent="t-ada")
    start = threading.Barrier(9)

    def append(n: int) -> None:
        start.wait()
        record(stub, clock, [f"race-{n}"], talent="t-ada")

    threads = [threading.Thread(target=append, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    start.wait()
    _shred(stub)
    for thread in threads:
        thread.join()
    assert _salts(audit_service) == 0
    assert list_all(stub, talent_id="t-ada") == []


def test_lift_refuses_bad_input(audit_service):
    expect_invalid(
        audit_service.stub.LiftShredMarker,
        audit_pb2.LiftShredMarkerRequest(account_id="", talent_id=""),
        fields={"account_id", "talent_id"},
    )
