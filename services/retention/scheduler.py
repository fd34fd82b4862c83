"""APScheduler inside the retention service: a BackgroundScheduler per replica with a persistent
SQLAlchemyJobStore in the retention database.

Job stores must never be shared between schedulers, so each replica keeps its jobs in its own
table; every replica fires every tick, and `RetentionService.run_scheduled` lets one run it.
Jobs coalesce missed runs into one, never overlap themselves, and fire late only within the
misfire grace. APScheduler fires on real time; the service's injected clock decides the tick.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from services.retention.domain import Job
from services.retention.schedule import job_store_table
from services.retention.settings import RetentionSettings

Runner = Callable[[Job], object]

# The job store pickles a job's function by reference, so it must be a module-level function;
# it finds the replica's service in this registry (a process may host several replicas: tests).
JOB_FUNCTION = "services.retention.scheduler:fire"
_runners: dict[str, Runner] = {}
_runners_lock = threading.Lock()


def fire(replica_id: str, job: str) -> None:
    """What the job store persists for every job: run `job` on replica `replica_id`."""
    _runners[replica_id](Job(job))


class RetentionScheduler:
    def __init__(self, engine: Engine, settings: RetentionSettings, run: Runner) -> None:
        self.settings = settings
        self.run = run
        store = SQLAlchemyJobStore(engine=engine, tablename=job_store_table(settings.replica_id))
        self.apscheduler = BackgroundScheduler(jobstores={"default": store}, timezone=settings.zone)

    def start(self) -> None:
        """Starts paused, brings the stored jobs in line with the settings, then resumes, so
        nothing fires on a job as it was configured before this start."""
        with _runners_lock:
            if self.settings.replica_id in _runners:
                raise RuntimeError("a scheduler with this replica id already runs here")
            _runners[self.settings.replica_id] = self.run
        self.apscheduler.start(paused=True)
        for job in Job:
            self._write_job(job)
        self.apscheduler.resume()

    def _write_job(self, job: Job) -> None:
        """(Re)writes the job from the settings. A stored job on the same schedule keeps its
        next run time: after a restart, a tick missed while the replica was down still fires
        (once, coalesced, within the grace) instead of being skipped by the rewrite."""
        trigger = self.settings.trigger(job)
        stored = self.apscheduler.get_job(job.value)
        keep = {}
        if stored is not None and repr(stored.trigger) == repr(trigger) and stored.next_run_time:
            keep["next_run_time"] = stored.next_run_time
        self.apscheduler.add_job(
            JOB_FUNCTION,
            trigger,
            args=[self.settings.replica_id, job.value],
            id=job.value,
            name=f"retention {job.value}",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=self.settings.misfire_grace_seconds,
            replace_existing=True,
            **keep,
        )

    def next_run_time(self, job: Job) -> datetime | None:
        """When this replica's scheduler fires the job next; None when it does not run."""
        if not self.apscheduler.running:
            return None
        stored = self.apscheduler.get_job(job.value)
        return stored.next_run_time if stored else None

    def shutdown(self) -> None:
        """Stops firing and waits for a running job to finish. Safe to call twice.

        The job store is detached first: APScheduler 3 wakes its loop once more after
        shutdown() and processes due jobs, which it can no longer submit but whose next run
        time it still advances and persists, losing a tick that was due at shutdown. Detached,
        the store keeps it due, so the next start fires it (within the grace)."""
        if self.apscheduler.running:
            self.apscheduler.remove_jobstore("default")
            self.apscheduler.shutdown()
        with _runners_lock:
            if _runners.get(self.settings.replica_id) is self.run:
                del _runners[self.settings.replica_id]
