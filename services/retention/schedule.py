"""The retention schedules in APScheduler's terms: a crontab expression's trigger, the tick a
run belongs to, and each replica's own job store table (the scheduler is `scheduler.py`)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

# A five-field cron has no year, so whatever it matches recurs within the 400-year Gregorian
# cycle: a schedule that matches nothing after this instant never fires at all.
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)
_FIRST_LOOKBACK = timedelta(minutes=1)
_MAX_LOOKBACK = timedelta(days=366 * 400)


def cron_trigger(expression: str, zone: ZoneInfo) -> CronTrigger:
    """The trigger of a standard five-field crontab expression in `zone`; ValueError if the
    expression is malformed or never fires.

    APScheduler 3 numbers weekdays from Monday = 0 where crontab starts at Sunday = 0, so a
    numeric day of week would silently fire on the wrong day: only names (mon-sun) are taken."""
    fields = expression.split()
    if len(fields) == 5 and any(ch.isdigit() for ch in fields[4]):
        raise ValueError("use weekday names (mon-sun) in the day-of-week field, not numbers")
    trigger = CronTrigger.from_crontab(expression, timezone=zone)
    if trigger.get_next_fire_time(None, _REFERENCE) is None:
        raise ValueError("the expression never fires")
    return trigger


def latest_fire_time(trigger: CronTrigger, now: datetime) -> datetime:
    """The tick a run at `now` belongs to: the schedule's latest fire time at or before `now`
    (UTC). A run fired late (a misfire inside the grace) still belongs to the tick it missed.

    A CronTrigger only looks forward, so this looks back from `now` in doubling steps until a
    fire time appears, then walks forward to the last one not after `now`."""
    lookback = _FIRST_LOOKBACK
    fire = trigger.get_next_fire_time(None, now - lookback)
    while fire is None or fire > now:
        if lookback > _MAX_LOOKBACK:
            raise ValueError("the schedule never fired before this time")
        lookback *= 2
        fire = trigger.get_next_fire_time(None, now - lookback)
    while True:
        following = trigger.get_next_fire_time(None, fire + timedelta(microseconds=1))
        if following is None or following > now:
            fired: datetime = fire.astimezone(UTC)
            return fired
        fire = following


def job_store_table(replica_id: str) -> str:
    """The replica's own APScheduler table: job stores must never be shared between schedulers.

    Lower-case letters, digits and underscores (safe unquoted everywhere), plus a hash of the
    raw id so ids that read alike ("pod-1", "pod_1") stay apart, and short enough that the index
    APScheduler names after the table fits PostgreSQL's 63 characters."""
    readable = re.sub(r"[^a-z0-9]+", "_", replica_id.lower()).strip("_")[:20]
    digest = hashlib.sha256(replica_id.encode()).hexdigest()[:8]
    return "_".join(part for part in ("retention_jobs", readable, digest) if part)
