"""The retention service over gRPC on a real database, against a real audit and consent service
and the matcher double: purges, reconciliation, one run per tick across replicas, coalesced
misfires, history, failures and bad input."""

from __future__ import annotations

import logging
import re
import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.events import (
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
)
from sqlalchemy import func, inspect, select

from mixip.audit.v1 import audit_pb2
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2
from mixip.retention.v1 import retention_pb2 as pb
from mixip.runtime.times import to_timestamp
from services.retention.domain import Job, Trigger
from services.retention.store import Base, RunRow, TickRow
from tests.support.status import expect_invalid

ACCOUNT = "acct-a"
PURGE, RECONCILE = pb.RETENTION_JOB_PURGE, pb.RETENTION_JOB_RECONCILE
SUCCEEDED, FAILED, SKIPPED = (
    pb.RUN_OUTCOME_SUCCEEDED,
    pb.RUN_OUTCOME_FAILED,
    pb.RUN_OUTCOME_SKIPPED,
)
SCHEDULER_ON = {"MIXIP_RETENTION_SCHEDULER": "1"}
WAIT_SECONDS = 15


# -- helpers ----------------------------------------------------------------------------------


def record(audit, clock, keys, account=ACCOUNT) -> None:
    """Match events (UNKNOWN faces: no talent) recorded at the clock's current time."""
    audit.stub.RecordMatchEvents(
        audit_pb2.RecordMatchEventsRequest(
            account_id=account,
            events=[
                audit_pb2.MatchEventInput(
                    idempotency_key=key,
                    project_id="proj-1",
                    media_id=f"media-{key}",
                    face_index=0,
                    label=common_pb2.FACE_LABEL_UNKNOWN,
                    reason=common_pb2.LABEL_REASON_NO_MATCH,
                    similarity=0.1,
                    actor="key-1",
                    occurred_at=to_timestamp(clock()),
                )
                for key in keys
            ],
        )
    )


def event_keys(audit, account=ACCOUNT) -> list[str]:
    reply = audit.stub.ListEvents(audit_pb2.ListEventsRequest(account_id=account, page_size=1000))
    return [e.idempotency_key for e in reply.events]


def consent(consent_service, clock, talent, decision, *, scope=None, project="", account=ACCOUNT):
    consent_service.stub.RecordConsent(
        consent_pb2.RecordConsentRequest(
            account_id=account,
            talent_id=talent,
            scope=scope or consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
            project_id=project,
            decision=decision,
            evidence=consent_pb2.Evidence(
                method="signed-release",
                policy_version="2026-10",
                actor="staff-7",
                captured_at=to_timestamp(clock()),
            ),
        )
    )


def run_now(retention, job) -> pb.RunReport:
    return retention.stub.RunNow(pb.RunNowRequest(job=job)).report


def all_runs(retention, job=pb.RETENTION_JOB_UNSPECIFIED) -> list[pb.RunReport]:
    runs, token = [], ""
    while True:
        page = retention.stub.ListRuns(pb.ListRunsRequest(job=job, page_token=token))
        runs.extend(page.runs)
        token = page.next_page_token
        if not token:
            return runs


def unreachable_address() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


class JobEvents:
    """An APScheduler listener for one job: records its events, and sets `executed` once the
    job has run and its submission has been reported."""

    def __init__(self, job: Job) -> None:
        self.job_id = job.value
        self.events: list = []
        self.executed = threading.Event()
        self._submitted = threading.Event()
        self._ran = threading.Event()

    def __call__(self, event) -> None:
        if getattr(event, "job_id", None) != self.job_id:
            return
        self.events.append(event)
        if event.code == EVENT_JOB_SUBMITTED:
            self._submitted.set()
        if event.code == EVENT_JOB_EXECUTED:
            self._ran.set()
        if self._submitted.is_set() and self._ran.is_set():
            self.executed.set()

    def codes(self) -> list[int]:
        return [e.code for e in self.events]


def due_now(retention, job: Job) -> None:
    """Makes the replica's scheduler fire `job` at once: its next run time moves to the past."""
    retention.app.scheduler.apscheduler.modify_job(
        job.value, next_run_time=datetime.now(UTC) - timedelta(minutes=1)
    )


# -- purge ------------------------------------------------------------------------------------


def test_a_purge_deletes_events_older_than_the_period_and_the_log_still_verifies(
    retention_service, audit_service, clock
):
    record(audit_service, clock, ["old-1", "old-2", "old-3"])
    record(audit_service, clock, ["old-b"], account="acct-b")
    clock.advance(days=300)
    record(audit_service, clock, ["recent"])  # 100 days old at the purge: within the period
    clock.advance(days=100)
    record(audit_service, clock, ["new"])

    report = run_now(retention_service, PURGE)

    assert report.outcome == SUCCEEDED and report.trigger == pb.RUN_TRIGGER_MANUAL
    assert report.job == PURGE and report.events_purged == 4 and report.error == ""
    assert report.cutoff == to_timestamp(clock() - timedelta(days=365))
    assert report.started_at == report.finished_at == to_timestamp(clock())
    assert event_keys(audit_service) == ["recent", "new"]
    assert event_keys(audit_service, "acct-b") == []
    verdict = audit_service.stub.VerifyLog(audit_pb2.VerifyLogRequest())
    assert verdict.ok and verdict.events_checked == 2
    assert run_now(retention_service, PURGE).events_purged == 0  # idempotent


def test_a_purge_runs_in_bounded_batches_within_one_run(
    retention_factory, retention_peers, audit_service, clock, monkeypatch
):
    batches: list[int] = []
    purge = audit_service.app.log.purge

    def counting_purge(cutoff, batch_size):
        batches.append(batch_size)
        return purge(cutoff, batch_size)

    monkeypatch.setattr(audit_service.app.log, "purge", counting_purge)
    retention = retention_factory(**retention_peers, env={"MIXIP_RETENTION_PURGE_BATCH": "2"})
    record(audit_service, clock, [f"old-{i}" for i in range(5)])
    # The cutoff falls in the events' month: on PostgreSQL whole expired months are dropped
    # at once (services/audit), the boundary month goes in batches as on SQLite.
    clock.advance(days=366)

    report = run_now(retention, PURGE)

    assert report.outcome == SUCCEEDED and report.events_purged == 5
    assert batches == [2, 2, 2]
    assert [r.run_id for r in all_runs(retention)] == [report.run_id]


# -- one run per tick -------------------------------------------------------------------------


def test_a_tick_runs_once_even_when_a_replica_fires_it_late(
    retention_factory, retention_peers, audit_service, clock
):
    """Replica b comes back inside the misfire grace and fires the tick a already ran."""
    record(audit_service, clock, ["old-1", "old-2"])
    clock.advance(days=400)
    a = retention_factory(**retention_peers).app.service
    b = retention_factory(**retention_peers, env={"MIXIP_RETENTION_REPLICA_ID": "b"}).app.service

    first = a.run_scheduled(Job.PURGE)
    clock.advance(hours=2)
    late = b.run_scheduled(Job.PURGE)
    clock.advance(days=1)
    next_day = b.run_scheduled(Job.PURGE)

    assert (first.outcome, first.events_purged) == ("succeeded", 2)
    assert (late.outcome, late.tick, late.events_purged) == ("skipped", first.tick, 0)
    assert first.tick == datetime(2027, 12, 6, 3, 0, tzinfo=UTC)  # the clock's day, 03:00
    assert next_day.outcome == "succeeded" and next_day.tick == first.tick + timedelta(days=1)


def test_two_replicas_fire_a_due_tick_and_it_runs_once(
    retention_factory, retention_peers, audit_service, clock
):
    record(audit_service, clock, ["old-1", "old-2", "old-3"])
    clock.advance(days=400)
    replicas = []
    for replica_id in ("replica-a", "replica-b"):
        listener = JobEvents(Job.PURGE)
        env = {**SCHEDULER_ON, "MIXIP_RETENTION_REPLICA_ID": replica_id}
        replicas.append(
            (retention_factory(**retention_peers, env=env, listener=listener), listener)
        )

    for retention, _ in replicas:
        due_now(retention, Job.PURGE)
    for _, listener in replicas:
        assert listener.executed.wait(WAIT_SECONDS)

    retention = replicas[0][0]
    runs = all_runs(retention, PURGE)
    [ran] = [r for r in runs if r.outcome == SUCCEEDED]
    [skipped] = [r for r in runs if r.outcome == SKIPPED]
    assert all(r.trigger == pb.RUN_TRIGGER_SCHEDULE for r in runs)
    assert ran.events_purged == 3 and ran.cutoff == to_timestamp(clock() - timedelta(days=365))
    assert skipped.events_purged == 0 and not skipped.HasField("cutoff")
    with retention.app.db.read() as session:
        assert session.scalar(select(func.count()).select_from(TickRow)) == 1
    stores = [t for t in inspect(retention.app.db.engine).get_table_names() if "_jobs_" in t]
    assert len(stores) == 2  # one job store per scheduler, never shared


def test_a_run_missed_while_down_fires_once_on_restart(
    retention_factory, retention_peers, audit_service, clock
):
    """The replica's job store says the purge was due three days ago (it was down since):
    on start, the missed days are coalesced into one run, within the misfire grace."""
    record(audit_service, clock, ["old-1"])
    clock.advance(days=400)
    env = {**SCHEDULER_ON, "MIXIP_RETENTION_MISFIRE_GRACE_SECONDS": str(4 * 86_400)}
    before = retention_factory(**retention_peers, env=env)
    before.app.scheduler.apscheduler.pause()
    missed_since = datetime.now(UTC) - timedelta(days=3)
    before.app.scheduler.apscheduler.modify_job("purge", next_run_time=missed_since)
    before.running.stop(0)
    before.app.close()

    listener = JobEvents(Job.PURGE)
    restarted = retention_factory(**retention_peers, env=env, listener=listener)
    assert listener.executed.wait(WAIT_SECONDS)

    [submitted] = [e for e in listener.events if e.code == EVENT_JOB_SUBMITTED]
    assert len(submitted.scheduled_run_times) == 1  # coalesced: one run for three missed days
    assert submitted.scheduled_run_times[0] > missed_since + timedelta(days=2)
    assert not {EVENT_JOB_MISSED, EVENT_JOB_MAX_INSTANCES} & set(listener.codes())
    [run] = all_runs(restarted, PURGE)
    assert run.outcome == SUCCEEDED and run.trigger == pb.RUN_TRIGGER_SCHEDULE
    assert run.events_purged == 1
    assert restarted.app.scheduler.next_run_time(Job.PURGE) > datetime.now(UTC)


# -- reconcile --------------------------------------------------------------------------------


def test_reconcile_deletes_vectors_of_talent_without_active_biometric_consent(
    retention_service, consent_service, matcher_double, clock, caplog
):
    caplog.set_level(logging.DEBUG)
    granted, revoked = consent_pb2.CONSENT_DECISION_GRANTED, consent_pb2.CONSENT_DECISION_REVOKED
    consent(consent_service, clock, "t-keep", granted)
    consent(consent_service, clock, "t-revoked", granted)
    consent(consent_service, clock, "t-revoked", revoked)
    consent(consent_service, clock, "t-erased", granted)
    consent_service.stub.EraseTalentConsent(
        consent_pb2.EraseTalentConsentRequest(account_id=ACCOUNT, talent_id="t-erased")
    )
    consent(
        consent_service,
        clock,
        "t-usage-only",
        granted,
        scope=consent_pb2.CONSENT_SCOPE_FACE_USAGE,
        project="film-1",
    )
    consent(consent_service, clock, "t-keep-b", granted, account="acct-b")
    matcher_double.faces = {
        (ACCOUNT, "t-keep"): 2,
        (ACCOUNT, "t-revoked"): 1,
        (ACCOUNT, "t-erased"): 3,
        (ACCOUNT, "t-usage-only"): 1,
        ("acct-b", "t-keep-b"): 1,
        ("acct-b", "t-revoked"): 4,  # another account's talent: its own, absent, consent
    }
    matcher_double.page_limit = 2

    report = run_now(retention_service, RECONCILE)

    assert report.outcome == SUCCEEDED and report.job == RECONCILE
    assert (report.talents_checked, report.vectors_deleted) == (6, 9)
    assert not report.HasField("cutoff")
    assert set(matcher_double.faces) == {(ACCOUNT, "t-keep"), ("acct-b", "t-keep-b")}
    assert matcher_double.list_calls == 3
    request_ids = [request_id for _, _, request_id in matcher_double.deletions]
    assert len(set(request_ids)) == 4 and all(re.fullmatch("[0-9a-f]{32}", r) for r in request_ids)
    again = run_now(retention_service, RECONCILE)
    assert (again.talents_checked, again.vectors_deleted) == (2, 0)
    _assert_no_talent_id_in_rows_or_logs(retention_service, caplog, ["t-keep", "t-revoked"])


def _assert_no_talent_id_in_rows_or_logs(retention, caplog, talent_ids) -> None:
    with retention.app.db.read() as session:
        rows = [session.execute(select(t)).all() for t in Base.metadata.sorted_tables]
    logged = [(r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]
    for talent_id in talent_ids:
        assert talent_id not in repr(rows) and talent_id not in repr(logged)


def test_reconcile_asks_consent_about_at_most_1000_talents_per_call(
    retention_service, consent_service, matcher_double, monkeypatch
):
    asked: list[int] = []
    check = consent_service.app.ledger.versioned_check

    def counting_check(account_id, keys):
        asked.append(len(keys))
        return check(account_id, keys)

    monkeypatch.setattr(consent_service.app.ledger, "versioned_check", counting_check)
    matcher_double.faces = {(ACCOUNT, f"t-{i:04d}"): 1 for i in range(1001)}

    report = run_now(retention_service, RECONCILE)

    assert report.outcome == SUCCEEDED
    assert (report.talents_checked, report.vectors_deleted) == (1001, 1001)
    assert asked == [1000, 1] and matcher_double.list_calls == 2
    assert matcher_double.faces == {}


# -- failures ---------------------------------------------------------------------------------


def test_a_failed_run_is_recorded_and_the_service_keeps_serving(
    retention_factory, consent_service, matcher_double
):
    retention = retention_factory(
        audit=unreachable_address(),
        matcher=matcher_double.address,
        consent=consent_service.address,
    )

    report = run_now(retention, PURGE)

    assert report.outcome == FAILED and report.error == "audit.PurgeExpired: UNAVAILABLE"
    assert report.HasField("finished_at") and report.events_purged == 0
    assert [r.outcome for r in all_runs(retention)] == [FAILED]
    assert run_now(retention, RECONCILE).outcome == SUCCEEDED
    status = retention.stub.GetStatus(pb.GetStatusRequest())
    assert status.jobs[0].last_run.error == "audit.PurgeExpired: UNAVAILABLE"


def test_a_run_failing_half_way_reports_what_it_did(
    retention_factory, retention_peers, audit_service, clock, monkeypatch
):
    purge = audit_service.app.log.purge
    calls: list[int] = []

    def failing_second_batch(cutoff, batch_size):
        calls.append(batch_size)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return purge(cutoff, batch_size)

    monkeypatch.setattr(audit_service.app.log, "purge", failing_second_batch)
    retention = retention_factory(**retention_peers, env={"MIXIP_RETENTION_PURGE_BATCH": "2"})
    record(audit_service, clock, [f"old-{i}" for i in range(5)])
    # The cutoff falls in the events' month: on PostgreSQL whole expired months are dropped
    # at once (services/audit), the boundary month goes in batches as on SQLite.
    clock.advance(days=366)

    report = run_now(retention, PURGE)

    assert report.outcome == FAILED and report.error == "audit.PurgeExpired: INTERNAL"
    assert report.events_purged == 2  # the first batch, committed by audit before the failure
    assert event_keys(audit_service) == ["old-2", "old-3", "old-4"]


def test_reconcile_deletes_nothing_without_consent_answers(
    retention_service, matcher_double, consent_service
):
    matcher_double.faces = {(ACCOUNT, "t-1"): 1}
    consent_service.running.stop(0)

    report = run_now(retention_service, RECONCILE)

    assert report.outcome == FAILED and report.error == "consent.BatchCheckConsent: UNAVAILABLE"
    assert (report.talents_checked, report.vectors_deleted) == (0, 0)
    assert matcher_double.faces == {(ACCOUNT, "t-1"): 1}


# -- status, history, bad input ---------------------------------------------------------------


def test_status_and_history_over_grpc(retention_factory, retention_peers, clock):
    retention = retention_factory(
        **retention_peers, env={**SCHEDULER_ON, "MIXIP_RETENTION_TIMEZONE": "Europe/Paris"}
    )
    status = retention.stub.GetStatus(pb.GetStatusRequest())
    assert status.retention_days == 365
    jobs = [j for j in status.jobs if j.job in (PURGE, RECONCILE)]  # others have own tests
    assert [j.job for j in jobs] == [PURGE, RECONCILE]
    assert [j.schedule for j in jobs] == [
        "0 3 * * * (Europe/Paris)",
        "30 3 * * * (Europe/Paris)",
    ]
    assert not any(j.HasField("last_run") for j in status.jobs)
    for job in status.jobs:
        assert job.next_run_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)

    started = []
    for job in (PURGE, RECONCILE, PURGE, RECONCILE, PURGE):
        started.append(run_now(retention, job).run_id)
        clock.advance(minutes=1)

    pages = []
    token = ""
    while True:
        page = retention.stub.ListRuns(pb.ListRunsRequest(page_size=2, page_token=token))
        pages.append([r.run_id for r in page.runs])
        token = page.next_page_token
        if not token:
            break
    assert pages == [started[:-3:-1], started[-3:-5:-1], started[:1]]  # newest first

    purges = retention.stub.ListRuns(pb.ListRunsRequest(job=PURGE, page_size=2))
    rest = retention.stub.ListRuns(
        pb.ListRunsRequest(job=PURGE, page_size=2, page_token=purges.next_page_token)
    )
    assert [r.run_id for r in [*purges.runs, *rest.runs]] == started[::-2]
    assert rest.next_page_token == ""
    expect_invalid(
        retention.stub.ListRuns,
        pb.ListRunsRequest(job=RECONCILE, page_token=purges.next_page_token),
        fields={"page_token"},
    )

    status = retention.stub.GetStatus(pb.GetStatusRequest())
    last = {j.job: j.last_run.run_id for j in status.jobs}
    assert [last[PURGE], last[RECONCILE]] == [started[4], started[3]]


def test_without_a_scheduler_there_is_no_next_run_time(retention_service):
    status = retention_service.stub.GetStatus(pb.GetStatusRequest())
    assert not any(j.HasField("next_run_time") for j in status.jobs)
    assert status.jobs[0].schedule == "0 3 * * * (UTC)"


@pytest.mark.parametrize("job", [pb.RETENTION_JOB_UNSPECIFIED, 99])
def test_run_now_refuses_an_unspecified_or_unknown_job(retention_service, job):
    expect_invalid(retention_service.stub.RunNow, pb.RunNowRequest(job=job), fields={"job"})
    assert all_runs(retention_service) == []


def test_list_runs_reports_every_bad_field(retention_service):
    expect_invalid(
        retention_service.stub.ListRuns,
        pb.ListRunsRequest(job=99, page_size=5000),
        fields={"job", "page_size"},
    )
    expect_invalid(
        retention_service.stub.ListRuns,
        pb.ListRunsRequest(page_token="not-a-token"),
        fields={"page_token"},
    )
    expect_invalid(
        retention_service.stub.ListRuns, pb.ListRunsRequest(page_size=-1), fields={"page_size"}
    )


def test_a_run_left_running_by_a_crash_is_closed_as_failed_on_restart(
    retention_factory, retention_peers, clock
):
    first = retention_factory(**retention_peers)
    other = retention_factory(**retention_peers, env={"MIXIP_RETENTION_REPLICA_ID": "b"})
    with first.app.db.write() as session:  # as if each replica died mid-run
        for service in (first.app.service, other.app.service):
            session.add(service._new_run(Job.PURGE, Trigger.SCHEDULE, clock(), tick=None))
    restarted = retention_factory(**retention_peers)  # replica-a comes back
    with restarted.app.db.read() as session:
        runs = {r.replica_id: r for r in session.scalars(select(RunRow))}
    assert runs["replica-a"].outcome == "failed" and "interrupted" in runs["replica-a"].error
    assert runs["b"].outcome == "running"  # another replica's run is not ours to close
