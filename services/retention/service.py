"""Retention use cases: run a job (manually, or for a scheduled tick) and read the history.

A run is one unit of work to start (for a scheduled run, together with claiming its tick, so a
replica either owns the tick and has a RUNNING row, or neither) and one to finish.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select

from mixip.runtime import logs
from mixip.runtime.db import Database, insert_ignoring_conflicts
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.times import Clock, iso
from services.retention.domain import Job, Outcome, Run, Tally, Trigger
from services.retention.jobs import one_line, purge, purge_access_log, purge_media, reconcile
from services.retention.peers import Peers
from services.retention.schedule import latest_fire_time
from services.retention.settings import RetentionSettings
from services.retention.store import MAX_ERROR_LENGTH, RunDetailRow, RunRow, TickRow

logger = logging.getLogger("mixip.retention")


class RetentionService:
    def __init__(
        self, db: Database, settings: RetentionSettings, peers: Peers, clock: Clock
    ) -> None:
        self.db = db
        self.settings = settings
        self.peers = peers
        self.clock = clock

    # -- runs ---------------------------------------------------------------------------------

    def run_now(self, job: Job, *, as_of: datetime | None = None, requested_by: str = "") -> Run:
        """An operator's run, not tick-locked: both jobs are idempotent. A purge `as_of` a
        later date is a drill: it deletes what would have expired by then. The run's record
        keeps `as_of` and who asked."""
        run = self._new_run(job, Trigger.MANUAL, self.clock(), tick=None, as_of=as_of)
        _detail(run).requested_by = requested_by or None
        with self.db.write() as session:
            session.add(run)
        return _run(self._execute(run))

    def run_scheduled(self, job: Job) -> Run:
        """A scheduler's run. Every replica's scheduler fires it; only the replica that claims
        the tick runs it, the others record a SKIPPED run. The tick comes from the schedule, not
        from when the scheduler fired, so a run fired late inside the misfire grace (a replica
        coming back) finds the tick already taken."""
        now = self.clock()
        tick = latest_fire_time(self.settings.trigger(job), now)
        run = self._new_run(job, Trigger.SCHEDULE, now, tick)
        with self.db.write() as session:
            claimed = insert_ignoring_conflicts(
                session,
                TickRow.__table__,
                [
                    {
                        "job": job.value,
                        "tick": tick,
                        "run_id": run.run_id,
                        "replica_id": self.settings.replica_id,
                        "claimed_at": now,
                    }
                ],
                ["job", "tick"],
            )
            if not claimed:  # nothing runs, so nothing is purged before any cutoff
                run.outcome, run.finished_at, run.cutoff = Outcome.SKIPPED.value, now, None
                _detail(run).as_of = None
            session.add(run)
        if not claimed:
            self._log(run)
            return _run(run)
        return _run(self._execute(run))

    def _new_run(
        self,
        job: Job,
        trigger: Trigger,
        now: datetime,
        tick: datetime | None,
        as_of: datetime | None = None,
    ) -> RunRow:
        as_of = (as_of or now) if job is Job.PURGE else None
        # A drill more than a period ahead would cut off in the future, which audit refuses
        # (events are being recorded): now is as late as a cutoff goes, and all it can delete.
        cutoff = min(as_of - timedelta(days=self.settings.retention_days), now) if as_of else None
        run_id = uuid.uuid4().hex
        return RunRow(
            details=RunDetailRow(
                run_id=run_id, as_of=as_of, media_purged=0, media_objects_deleted=0
            ),
            run_id=run_id,
            job=job.value,
            trigger=trigger.value,
            outcome=Outcome.RUNNING.value,
            started_at=now,
            cutoff=cutoff,
            events_purged=0,
            talents_checked=0,
            vectors_deleted=0,
            tick=tick,
            replica_id=self.settings.replica_id,
        )

    def close_interrupted_runs(self) -> int:
        """Marks this replica's runs still RUNNING as FAILED: the process that ran them is gone
        (called at start-up, before the scheduler can start new ones)."""
        with self.db.write() as session:
            interrupted = session.scalars(
                select(RunRow).where(
                    RunRow.replica_id == self.settings.replica_id,
                    RunRow.outcome == Outcome.RUNNING.value,
                )
            ).all()
            for run in interrupted:
                run.outcome, run.finished_at = Outcome.FAILED.value, self.clock()
                run.error = "interrupted: the replica stopped before the run finished"
        return len(interrupted)

    def _execute(self, run: RunRow) -> RunRow:
        """Runs the job and records how it ended; a failure is a FAILED run, not an error."""
        tally = Tally()
        error = None
        try:
            self._work(run, tally)
        except Exception as exc:  # whatever broke, the run must be recorded as failed
            error = one_line(exc)[:MAX_ERROR_LENGTH]
        with self.db.write() as session:
            session.add(run)
            run.outcome = (Outcome.FAILED if error else Outcome.SUCCEEDED).value
            run.finished_at = self.clock()
            run.events_purged = tally.events_purged
            run.talents_checked = tally.talents_checked
            run.vectors_deleted = tally.vectors_deleted
            _detail(run).media_purged = tally.media_purged
            _detail(run).media_objects_deleted = tally.media_objects_deleted
            run.error = error
        self._log(run)
        return run

    def _work(self, run: RunRow, tally: Tally) -> None:
        if run.job == Job.ROTATE_VAULT:
            self.peers.audit.rotate_vault()
            return
        if run.job != Job.PURGE:
            reconcile(self.peers, tally, run.started_at)
            return
        # Each copy's purge runs even if another's failed; the run fails with the first error.
        cutoff, as_of, gateway = run.cutoff, _detail(run).as_of, self.peers.gateway
        assert cutoff is not None and as_of is not None  # a purge has both (_new_run)
        steps: list[Callable[[], None]] = [
            lambda: purge(self.peers.audit, cutoff, self.settings.purge_batch, tally)
        ]
        if gateway is not None:
            steps.append(lambda: purge_media(gateway, as_of, tally))
            # after the media, as of the same time (a drill purges the log as of its date)
            steps.append(lambda: purge_access_log(gateway, as_of, tally))
        failures = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # the next copy's purge still runs
                failures.append(exc)
        if gateway is not None:
            logs.log(logger, "access log purged", run=run.run_id, entries=tally.access_log_purged)
        if failures:
            raise failures[0]

    def _log(self, run: RunRow) -> None:
        logs.log(
            logger,
            "retention run",
            level=logging.WARNING if run.outcome == Outcome.FAILED else logging.INFO,
            run=run.run_id,
            job=run.job,
            trigger=run.trigger,
            outcome=run.outcome,
            tick=iso(run.tick) or "-",
            events_purged=run.events_purged,
            talents_checked=run.talents_checked,
            vectors_deleted=run.vectors_deleted,
            **_details(run),
            **({"error": run.error} if run.error else {}),
        )

    # -- history ------------------------------------------------------------------------------

    def last_run(self, job: Job) -> Run | None:
        """The job's latest run that actually ran (a SKIPPED record is another replica's
        shadow of a run, and would hide its outcome)."""
        with self.db.read() as session:
            row = session.scalars(
                select(RunRow)
                .where(RunRow.job == job.value, RunRow.outcome != Outcome.SKIPPED.value)
                .order_by(RunRow.seq.desc())
                .limit(1)
            ).one_or_none()
        return _run(row) if row else None

    def list_runs(
        self, job: Job | None, page_size: int, before_seq: int | None
    ) -> tuple[list[Run], int | None]:
        """A page of runs newest first, and the position to continue before (None at the end)."""
        query = select(RunRow)
        if job is not None:
            query = query.where(RunRow.job == job.value)
        if before_seq is not None:
            query = query.where(RunRow.seq < before_seq)
        with self.db.read() as session:
            order = query.order_by(RunRow.seq.desc()).limit(fetch_limit(page_size))
            rows = list(session.scalars(order))
        page, position = page_of(rows, page_size, lambda run: run.seq)
        return [_run(row) for row in page], position


def _run(row: RunRow) -> Run:
    details = row.details
    return Run(
        run_id=row.run_id,
        job=Job(row.job),
        trigger=Trigger(row.trigger),
        outcome=Outcome(row.outcome),
        started_at=row.started_at,
        finished_at=row.finished_at,
        cutoff=row.cutoff,
        events_purged=row.events_purged,
        talents_checked=row.talents_checked,
        vectors_deleted=row.vectors_deleted,
        error=row.error,
        tick=row.tick,
        as_of=details.as_of if details else None,
        requested_by=(details.requested_by or "") if details else "",
        media_purged=details.media_purged if details else 0,
        media_objects_deleted=details.media_objects_deleted if details else 0,
    )


def _detail(run: RunRow) -> RunDetailRow:
    """The details of a run this replica is making (every new run has them)."""
    assert run.details is not None
    return run.details


def _details(run: RunRow) -> dict[str, object]:
    """The run's details for its log line (only what is set)."""
    details = run.details
    if details is None:
        return {}
    fields: dict[str, object] = {"requested_by": details.requested_by, "as_of": iso(details.as_of)}
    if run.job == Job.PURGE:
        fields |= {
            "media_purged": details.media_purged,
            "media_objects_deleted": details.media_objects_deleted,
        }
    return {k: v for k, v in fields.items() if v is not None}
