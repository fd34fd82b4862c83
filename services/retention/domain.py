"""Pure retention rules: the jobs, their triggers and outcomes, and what a run counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Job(StrEnum):
    """The retention jobs; the value is the scheduler's job id and what the history stores."""

    PURGE = "purge"
    RECONCILE = "reconcile"
    ROTATE_VAULT = "rotate-vault"


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"


class Outcome(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Run:
    """One run of a job as the history reports it."""

    run_id: str
    job: Job
    trigger: Trigger
    outcome: Outcome
    started_at: datetime
    finished_at: datetime | None
    cutoff: datetime | None
    events_purged: int
    talents_checked: int
    vectors_deleted: int
    error: str | None
    tick: datetime | None
    as_of: datetime | None = None
    requested_by: str = ""
    media_purged: int = 0
    media_objects_deleted: int = 0


@dataclass
class Tally:
    """What a run has done so far. Jobs add to it as they go, so a run that fails half-way still
    reports what it did before failing."""

    events_purged: int = 0
    talents_checked: int = 0
    vectors_deleted: int = 0
    media_purged: int = 0
    media_objects_deleted: int = 0
    access_log_purged: int = 0  # logged with the run (the run report has no field for it)
