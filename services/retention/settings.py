"""Retention settings from `MIXIP_RETENTION_*` environment variables.

- `MIXIP_RETENTION_DAYS` (365): audit events recorded more than this many days ago are purged
  (at least 1).
- `MIXIP_RETENTION_PURGE_CRON` ("0 3 * * *"): when the purge runs, as a five-field crontab
  (minute hour day-of-month month day-of-week). Weekdays by name only (mon-sun): APScheduler 3
  numbers them from Monday where crontab starts at Sunday, so numbers would be misread.
- `MIXIP_RETENTION_RECONCILE_CRON` ("30 3 * * *"): when the reconciliation of face vectors with
  biometric consent runs; same format.
- `MIXIP_RETENTION_ROTATE_VAULT_CRON` ("0 4 * * sun"): when the audit vault's keys are rotated
  (weekly by default: a backup taken before a shred stays linkable until the next rotation);
  same format.
- `MIXIP_RETENTION_TIMEZONE` ("UTC"): the IANA zone both cron expressions are read in, e.g.
  "Europe/Paris" (a 3 a.m. schedule then follows daylight saving time).
- `MIXIP_RETENTION_PURGE_BATCH` (10000): events deleted per audit `PurgeExpired` call (1-100000),
  so no single audit transaction grows with the backlog.
- `MIXIP_RETENTION_MISFIRE_GRACE_SECONDS` (21600): a run missed while the scheduler was down still
  fires when it comes back within this many seconds (at least 1); several missed runs of a job
  fire once (coalesced).
- `MIXIP_RETENTION_REPLICA_ID` (the host name): names this replica's own job-store table
  (`retention_jobs_<id>_<hash>`); replicas sharing a database must have different ids. At most
  128 printable characters.
- `MIXIP_RETENTION_SCHEDULER` (true): false runs no scheduler in this process; jobs then run only
  on `RunNow`.

A bad value is a `ConfigError` naming the variable, raised at start-up (cron expressions and the
zone included), never later when a job fires.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from mixip.runtime.config import ConfigError, Env
from mixip.runtime.limits import DEFAULT_EVENT_PURGE_BATCH, MAX_EVENT_PURGE_BATCH
from services.retention.domain import Job
from services.retention.schedule import cron_trigger

MAX_REPLICA_ID_LENGTH = 128


@dataclass(frozen=True)
class RetentionSettings:
    retention_days: int
    purge_cron: str
    reconcile_cron: str
    zone: ZoneInfo
    purge_batch: int
    misfire_grace_seconds: int
    replica_id: str
    scheduler_enabled: bool
    rotate_vault_cron: str = "0 4 * * sun"

    @classmethod
    def load(cls, env: Env | None = None) -> RetentionSettings:
        env = env or Env()
        zone = _zone(env)
        return cls(
            retention_days=env.int("MIXIP_RETENTION_DAYS", 365, minimum=1),
            purge_cron=_cron(env, "MIXIP_RETENTION_PURGE_CRON", "0 3 * * *", zone),
            reconcile_cron=_cron(env, "MIXIP_RETENTION_RECONCILE_CRON", "30 3 * * *", zone),
            zone=zone,
            purge_batch=_purge_batch(env),
            misfire_grace_seconds=env.int(
                "MIXIP_RETENTION_MISFIRE_GRACE_SECONDS", 21_600, minimum=1
            ),
            replica_id=_replica_id(env),
            scheduler_enabled=env.bool("MIXIP_RETENTION_SCHEDULER", True),
            rotate_vault_cron=_cron(env, "MIXIP_RETENTION_ROTATE_VAULT_CRON", "0 4 * * sun", zone),
        )

    def cron(self, job: Job) -> str:
        if job is Job.ROTATE_VAULT:
            return self.rotate_vault_cron
        return self.purge_cron if job is Job.PURGE else self.reconcile_cron

    def trigger(self, job: Job) -> CronTrigger:
        return cron_trigger(self.cron(job), self.zone)

    def schedule(self, job: Job) -> str:
        """The schedule as operators read it: the cron expression and its zone."""
        return f"{self.cron(job)} ({self.zone.key})"


def _zone(env: Env) -> ZoneInfo:
    name = env.str("MIXIP_RETENTION_TIMEZONE", "UTC")
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):  # ZoneInfoNotFoundError is a KeyError
        raise ConfigError(
            f"MIXIP_RETENTION_TIMEZONE={name!r} is not an IANA time zone (e.g. UTC, Europe/Paris)"
        ) from None


def _cron(env: Env, name: str, default: str, zone: ZoneInfo) -> str:
    expression = " ".join(env.str(name, default).split())
    try:
        cron_trigger(expression, zone)
    except ValueError as exc:
        raise ConfigError(f"{name}={expression!r} is not a usable crontab: {exc}") from None
    return expression


def _purge_batch(env: Env) -> int:
    batch = env.int("MIXIP_RETENTION_PURGE_BATCH", DEFAULT_EVENT_PURGE_BATCH, minimum=1)
    if batch > MAX_EVENT_PURGE_BATCH:
        raise ConfigError(
            f"MIXIP_RETENTION_PURGE_BATCH={batch} must be at most {MAX_EVENT_PURGE_BATCH}"
        )
    return batch


def _replica_id(env: Env) -> str:
    replica_id = env.str("MIXIP_RETENTION_REPLICA_ID", socket.gethostname())
    if len(replica_id) > MAX_REPLICA_ID_LENGTH or not replica_id.isprintable():
        raise ConfigError(
            f"MIXIP_RETENTION_REPLICA_ID must be at most {MAX_REPLICA_ID_LENGTH} printable "
            "characters"
        )
    return replica_id
