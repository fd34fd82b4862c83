"""The consent service over gRPC on a real database: ledger, checks, outbox, erasure."""

from __future__ import annotations

import socket
from datetime import timedelta
from itertools import pairwise

import grpc
import pytest
from sqlalchemy import func, select

from mixip.consent.v1 import consent_pb2 as pb
from mixip.runtime.times import to_timestamp
from services.consent.store import Base, OutboxRow, RecordRow, TombstoneRow
from tests.support.status import expect_error, expect_invalid

ACCOUNT = "acct-a"
BIO = pb.CONSENT_SCOPE_BIOMETRIC_PROCESSING
USAGE = pb.CONSENT_SCOPE_FACE_USAGE
GRANT, REVOKE = pb.CONSENT_DECISION_GRANTED, pb.CONSENT_DECISION_REVOKED


def evidence(clock, **overrides):
    fields = dict(
        method="signed-release",
        policy_version="2026-10",
        actor="staff-7",
        captured_at=to_timestamp(clock()),
    )
    fields.update(overrides)
    return pb.Evidence(**fields)


def consent(stub, clock, talent, scope, decision, project="", account=ACCOUNT, request_id=""):
    return stub.RecordConsent(
        pb.RecordConsentRequest(
            account_id=account,
            talent_id=talent,
            scope=scope,
            project_id=project,
            decision=decision,
            evidence=evidence(clock),
            request_id=request_id,
        )
    )


def state(stub, talent, scope, project="", account=ACCOUNT):
    return stub.CheckConsent(
        pb.CheckConsentRequest(
            account_id=account, talent_id=talent, scope=scope, project_id=project
        )
    ).state


def count(handle, table) -> int:
    with handle.app.db.read() as session:
        return session.scalar(select(func.count()).select_from(table))


def test_state_follows_the_latest_record(consent_service, clock):
    stub = consent_service.stub
    assert state(stub, "t-ada", BIO) == pb.CONSENT_STATE_ABSENT
    consent(stub, clock, "t-ada", BIO, GRANT)
    assert state(stub, "t-ada", BIO) == pb.CONSENT_STATE_ACTIVE
    consent(stub, clock, "t-ada", USAGE, GRANT, project="film-1")
    assert state(stub, "t-ada", USAGE, "film-1") == pb.CONSENT_STATE_ACTIVE
    assert state(stub, "t-ada", USAGE, "film-2") == pb.CONSENT_STATE_ABSENT
    consent(stub, clock, "t-ada", USAGE, REVOKE, project="film-1")
    assert state(stub, "t-ada", USAGE, "film-1") == pb.CONSENT_STATE_REVOKED
    consent(stub, clock, "t-ada", USAGE, GRANT, project="film-1")
    reply = stub.CheckConsent(
        pb.CheckConsentRequest(
            account_id=ACCOUNT, talent_id="t-ada", scope=USAGE, project_id="film-1"
        )
    )
    assert reply.state == pb.CONSENT_STATE_ACTIVE
    assert reply.latest.evidence.policy_version == "2026-10" and reply.latest.sequence == 4


def test_batch_check_answers_in_query_order(consent_service, clock):
    stub = consent_service.stub
    consent(stub, clock, "t-ada", BIO, GRANT)
    consent(stub, clock, "t-bob", BIO, GRANT)
    consent(stub, clock, "t-bob", BIO, REVOKE)
    consent(stub, clock, "t-ada", USAGE, GRANT, project="film-1")
    queries = [
        pb.ConsentQuery(talent_id="t-bob", scope=BIO),
        pb.ConsentQuery(talent_id="t-ada", scope=USAGE, project_id="film-1"),
        pb.ConsentQuery(talent_id="t-ada", scope=BIO),
        pb.ConsentQuery(talent_id="t-cy", scope=BIO),
    ]
    reply = stub.BatchCheckConsent(pb.BatchCheckConsentRequest(account_id=ACCOUNT, queries=queries))
    assert [a.state for a in reply.answers] == [
        pb.CONSENT_STATE_REVOKED,
        pb.CONSENT_STATE_ACTIVE,
        pb.CONSENT_STATE_ACTIVE,
        pb.CONSENT_STATE_ABSENT,
    ]
    assert [a.query.talent_id for a in reply.answers] == ["t-bob", "t-ada", "t-ada", "t-cy"]


def version_check(stub, cached="", queries=(), account=ACCOUNT):
    return stub.BatchCheckConsent(
        pb.BatchCheckConsentRequest(account_id=account, queries=queries, cached_version=cached)
    )


def test_every_record_and_erasure_of_something_changes_the_accounts_version_nothing_else_does(
    consent_service, clock
):
    stub = consent_service.stub
    assert version_check(stub, "v").version == ""  # never a record: nothing to cache under
    seen = []
    for change in (
        lambda: consent(stub, clock, "t-ada", BIO, GRANT),
        lambda: consent(stub, clock, "t-ada", USAGE, GRANT, project="film-1"),
        lambda: consent(stub, clock, "t-ada", BIO, REVOKE),
        lambda: stub.EraseTalentConsent(
            pb.EraseTalentConsentRequest(account_id=ACCOUNT, talent_id="t-ada")
        ),
    ):
        change()
        version = version_check(stub, "v").version
        state(stub, "t-ada", BIO)  # reads change nothing
        stub.ListConsentRecords(pb.ListConsentRecordsRequest(account_id=ACCOUNT))
        assert version_check(stub, version).unchanged
        seen.append(version)
    assert len(set(seen)) == len(seen) and all(len(v) == 32 for v in seen)
    consent(stub, clock, "t-bob", BIO, GRANT, account="acct-b")  # another account's change
    stub.EraseTalentConsent(pb.EraseTalentConsentRequest(account_id=ACCOUNT, talent_id="t-ada"))
    assert version_check(stub, seen[-1]).unchanged  # erasing nothing changes no answer


def test_a_check_under_an_unchanged_version_answers_only_what_it_is_asked(consent_service, clock):
    stub = consent_service.stub
    consent(stub, clock, "t-ada", BIO, GRANT)
    first = version_check(stub, queries=[pb.ConsentQuery(talent_id="t-ada", scope=BIO)])
    assert not first.unchanged  # no cached version given
    empty = version_check(stub, first.version)
    assert (empty.unchanged, empty.version, list(empty.answers)) == (True, first.version, [])
    more = version_check(stub, first.version, [pb.ConsentQuery(talent_id="t-bob", scope=BIO)])
    assert more.unchanged and [a.state for a in more.answers] == [pb.CONSENT_STATE_ABSENT]
    consent(stub, clock, "t-ada", BIO, REVOKE)
    stale = version_check(stub, first.version, [pb.ConsentQuery(talent_id="t-ada", scope=BIO)])
    assert not stale.unchanged and stale.version != first.version
    assert [a.state for a in stale.answers] == [pb.CONSENT_STATE_REVOKED]


def test_history_is_append_only_and_paginated(consent_service, clock):
    stub = consent_service.stub
    for i in range(5):
        consent(stub, clock, "t-ada", BIO, GRANT if i % 2 == 0 else REVOKE)
    consent(stub, clock, "t-bob", BIO, GRANT)
    page = stub.ListConsentRecords(
        pb.ListConsentRecordsRequest(account_id=ACCOUNT, talent_id="t-ada", page_size=3)
    )
    rest = stub.ListConsentRecords(
        pb.ListConsentRecordsRequest(
            account_id=ACCOUNT, talent_id="t-ada", page_size=3, page_token=page.next_page_token
        )
    )
    records = [*page.records, *rest.records]
    assert [r.decision for r in records] == [GRANT, REVOKE, GRANT, REVOKE, GRANT]
    assert rest.next_page_token == ""
    expect_invalid(
        stub.ListConsentRecords,
        pb.ListConsentRecordsRequest(
            account_id=ACCOUNT, talent_id="t-bob", page_token=page.next_page_token
        ),
        fields={"page_token"},
    )


def test_a_request_id_makes_recording_idempotent(consent_service, clock):
    stub = consent_service.stub
    first = consent(stub, clock, "t-ada", BIO, GRANT, request_id="req-1")
    again = consent(stub, clock, "t-ada", BIO, GRANT, request_id="req-1")
    assert not first.replayed and again.replayed
    assert again.record.record_id == first.record.record_id
    assert count(consent_service, RecordRow) == 1


def test_biometric_revocation_is_delivered_to_the_matcher(consent_service, matcher_double, clock):
    stub = consent_service.stub
    consent(stub, clock, "t-ada", BIO, GRANT)
    consent(stub, clock, "t-ada", USAGE, REVOKE, project="film-1")  # no deletion owed
    assert count(consent_service, OutboxRow) == 0
    consent(stub, clock, "t-ada", BIO, REVOKE)
    assert consent_service.app.outbox.pending() == 1
    assert consent_service.app.outbox.run_once() == 1
    assert [(a, t) for a, t, _ in matcher_double.deletions] == [(ACCOUNT, "t-ada")]
    assert consent_service.app.outbox.pending() == 0
    assert consent_service.app.outbox.run_once() == 0  # acknowledged rows are not re-sent


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_revocation_survives_a_matcher_outage_and_a_restart(
    consent_factory, matcher_double, clock
):
    down = consent_factory(_dead_address())
    consent(down.stub, clock, "t-ada", BIO, GRANT)
    consent(down.stub, clock, "t-ada", BIO, REVOKE)
    assert down.app.outbox.run_once() == 0
    with down.app.db.read() as session:
        row = session.scalars(select(OutboxRow)).one()
    assert row.attempts == 1 and row.delivered_at is None
    assert row.last_error in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}  # retried until the deadline
    assert row.next_attempt_at > clock()
    assert down.app.outbox.run_once() == 0  # not due yet: backoff holds
    down.running.stop(0)
    down.app.close()

    restarted = consent_factory(matcher_double.address)  # same database, matcher back
    clock.advance(seconds=5)
    assert restarted.app.outbox.run_once() == 1
    assert [(a, t) for a, t, _ in matcher_double.deletions] == [(ACCOUNT, "t-ada")]
    assert restarted.app.outbox.pending() == 0


def test_backoff_grows_while_the_matcher_refuses(consent_service, matcher_double, clock):
    matcher_double.fail_with = grpc.StatusCode.UNAVAILABLE
    consent(consent_service.stub, clock, "t-ada", BIO, REVOKE)
    delays = []
    for _ in range(4):
        clock.advance(minutes=5)
        consent_service.app.outbox.run_once()
        with consent_service.app.db.read() as session:
            row = session.scalars(select(OutboxRow)).one()
        delays.append((row.next_attempt_at - clock()).total_seconds())
    assert all(later > earlier for earlier, later in pairwise(delays))
    matcher_double.fail_with = None
    clock.advance(minutes=5)
    assert consent_service.app.outbox.run_once() == 1


def test_the_background_dispatcher_delivers_promptly(consent_factory, matcher_double, clock):
    live = consent_factory(matcher_double.address, dispatch=True, poll_seconds=0.1)
    consent(live.stub, clock, "t-ada", BIO, REVOKE)
    assert matcher_double.called.wait(10), "the dispatcher did not deliver"
    assert matcher_double.deletions[0][:2] == (ACCOUNT, "t-ada")


def test_erasure_leaves_a_tombstone_without_personal_data(consent_service, clock):
    stub = consent_service.stub
    consent(stub, clock, "t-ada-unique", BIO, GRANT)
    consent(stub, clock, "t-ada-unique", USAGE, GRANT, project="film-1")
    consent(stub, clock, "t-ada-unique", BIO, REVOKE)
    consent(stub, clock, "t-bob", BIO, GRANT)
    reply = stub.EraseTalentConsent(
        pb.EraseTalentConsentRequest(
            account_id=ACCOUNT, talent_id="t-ada-unique", request_id="erase-1"
        )
    )
    assert (reply.records_deleted, reply.outbox_rows_deleted) == (3, 1) and reply.tombstone_id
    assert state(stub, "t-ada-unique", BIO) == pb.CONSENT_STATE_ABSENT
    assert state(stub, "t-bob", BIO) == pb.CONSENT_STATE_ACTIVE
    with consent_service.app.db.read() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(table.select()):
                assert "t-ada-unique" not in repr(tuple(row)), table.name
        assert session.scalar(select(func.count()).select_from(TombstoneRow)) == 1

    replay = stub.EraseTalentConsent(
        pb.EraseTalentConsentRequest(
            account_id=ACCOUNT, talent_id="t-ada-unique", request_id="erase-1"
        )
    )
    assert replay.tombstone_id == reply.tombstone_id
    again = stub.EraseTalentConsent(
        pb.EraseTalentConsentRequest(account_id=ACCOUNT, talent_id="t-ada-unique")
    )
    assert (again.records_deleted, again.tombstone_id) == (0, "")
    assert count(consent_service, TombstoneRow) == 1


def test_accounts_are_isolated(consent_service, clock):
    stub = consent_service.stub
    consent(stub, clock, "t-ada", BIO, GRANT, account="acct-a")
    assert state(stub, "t-ada", BIO, account="acct-b") == pb.CONSENT_STATE_ABSENT
    listed = stub.ListConsentRecords(pb.ListConsentRecordsRequest(account_id="acct-b"))
    assert list(listed.records) == []
    stub.EraseTalentConsent(pb.EraseTalentConsentRequest(account_id="acct-b", talent_id="t-ada"))
    assert state(stub, "t-ada", BIO, account="acct-a") == pb.CONSENT_STATE_ACTIVE


@pytest.mark.parametrize(
    ("mutate", "fields"),
    [
        (lambda r, c: r.ClearField("evidence"), {"evidence"}),
        (lambda r, c: setattr(r, "scope", 0), {"scope"}),
        (lambda r, c: setattr(r, "scope", 7), {"scope"}),
        (lambda r, c: setattr(r, "decision", 9), {"decision"}),
        (lambda r, c: setattr(r, "project_id", "film-1"), {"project_id"}),
        (lambda r, c: setattr(r, "talent_id", ""), {"talent_id"}),
        (lambda r, c: setattr(r, "talent_id", "ada@example.com"), {"talent_id"}),
        (lambda r, c: setattr(r, "account_id", "a" * 500), {"account_id"}),
        (lambda r, c: setattr(r.evidence, "method", "m" * 65), {"evidence.method"}),
        (lambda r, c: setattr(r.evidence, "actor", "tab\there"), {"evidence.actor"}),
        (
            lambda r, c: r.evidence.captured_at.CopyFrom(to_timestamp(c() + timedelta(days=2))),
            {"evidence.captured_at"},
        ),
        (
            lambda r, c: (setattr(r, "scope", USAGE), setattr(r, "decision", 0)),
            {"project_id", "decision"},
        ),
    ],
)
def test_bad_records_are_refused_and_nothing_is_written(consent_service, clock, mutate, fields):
    request = pb.RecordConsentRequest(
        account_id=ACCOUNT, talent_id="t-ada", scope=BIO, decision=REVOKE, evidence=evidence(clock)
    )
    mutate(request, clock)
    expect_invalid(consent_service.stub.RecordConsent, request, fields=fields)
    assert count(consent_service, RecordRow) == 0
    assert count(consent_service, OutboxRow) == 0


def test_bad_checks_are_refused(consent_service):
    stub = consent_service.stub
    expect_invalid(
        stub.BatchCheckConsent, pb.BatchCheckConsentRequest(account_id=ACCOUNT), fields={"queries"}
    )
    too_many = [pb.ConsentQuery(talent_id=f"t{i}", scope=BIO) for i in range(1001)]
    expect_invalid(
        stub.BatchCheckConsent,
        pb.BatchCheckConsentRequest(account_id=ACCOUNT, queries=too_many),
        fields={"queries"},
    )
    expect_invalid(
        stub.BatchCheckConsent,
        pb.BatchCheckConsentRequest(
            account_id=ACCOUNT, queries=[pb.ConsentQuery(talent_id="t", scope=USAGE)]
        ),
        fields={"queries[0].project_id"},
    )
    expect_invalid(
        stub.BatchCheckConsent,
        pb.BatchCheckConsentRequest(account_id=ACCOUNT, cached_version="v" * 33),
        fields={"cached_version"},
    )
    expect_invalid(
        stub.ListConsentRecords,
        pb.ListConsentRecordsRequest(account_id=ACCOUNT, page_size=-1),
        fields={"page_size"},
    )


def test_a_request_id_reused_for_a_different_record_is_refused(consent_service, clock):
    stub = consent_service.stub
    consent(stub, clock, "t-alice", BIO, GRANT, request_id="req-1")
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        stub.RecordConsent,
        pb.RecordConsentRequest(
            account_id=ACCOUNT,
            talent_id="t-bob",
            scope=BIO,
            decision=REVOKE,
            evidence=evidence(clock),
            request_id="req-1",
        ),
    )
    assert details.reason == "IDEMPOTENCY_KEY_REUSED"
    assert count(consent_service, RecordRow) == 1 and count(consent_service, OutboxRow) == 0
