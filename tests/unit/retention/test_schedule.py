"""Ticks, schedules and settings of the retention service: pure computation, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mixip.runtime.config import ConfigError, Env
from services.retention.domain import Job
from services.retention.schedule import cron_trigger, job_store_table, latest_fire_time
from services.retention.settings import RetentionSettings

UTC_ZONE = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


def at(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def tick(cron: str, now: datetime, zone: ZoneInfo = UTC_ZONE) -> datetime:
    return latest_fire_time(cron_trigger(cron, zone), now)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (at(2026, 11, 1, 9, 0), at(2026, 11, 1, 3, 0)),  # later the same day
        (at(2026, 11, 1, 2, 59, 59), at(2026, 10, 31, 3, 0)),  # before today's fire time
        (at(2026, 11, 1, 3, 0), at(2026, 11, 1, 3, 0)),  # exactly at a fire time
        (at(2026, 11, 1, 3, 0, 0) + timedelta(microseconds=1), at(2026, 11, 1, 3, 0)),
        (at(2027, 1, 1, 0, 30), at(2026, 12, 31, 3, 0)),  # across a year boundary
    ],
)
def test_the_tick_is_the_latest_fire_time_at_or_before_now(now, expected):
    assert tick("0 3 * * *", now) == expected


def test_every_instant_between_two_fire_times_belongs_to_the_earlier_one():
    """A late fire (a misfire inside the grace) maps to the tick it missed."""
    fire = at(2026, 11, 1, 3, 0)
    for minutes in range(0, 24 * 60, 7):
        assert tick("0 3 * * *", fire + timedelta(minutes=minutes)) == fire


@pytest.mark.parametrize(
    ("cron", "now", "expected"),
    [
        ("*/15 * * * *", at(2026, 11, 1, 9, 44, 10), at(2026, 11, 1, 9, 30)),
        ("0 3 * * sun", at(2026, 11, 4, 12, 0), at(2026, 11, 1, 3, 0)),  # 1 Nov 2026: Sunday
        ("0 0 29 2 *", at(2027, 6, 1), at(2024, 2, 29)),  # years back
    ],
)
def test_sparse_and_dense_schedules(cron, now, expected):
    assert tick(cron, now) == expected


def test_a_zone_shifts_the_tick_with_daylight_saving_time():
    assert tick("0 3 * * *", at(2026, 7, 1, 12, 0), PARIS) == at(2026, 7, 1, 1, 0)  # CEST
    assert tick("0 3 * * *", at(2026, 12, 1, 12, 0), PARIS) == at(2026, 12, 1, 2, 0)  # CET


@pytest.mark.parametrize(
    "cron", ["0 3 * *", "61 3 * * *", "x 3 * * *", "0 3 * * 0", "0 3 * * 1-5", "0 0 31 2 *"]
)
def test_malformed_numeric_weekday_or_never_firing_crons_are_refused(cron):
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the cause
        cron_trigger(cron, UTC_ZONE)


def test_each_replica_has_its_own_job_store_table():
    names = {job_store_table(r) for r in ("pod-1", "pod_1", "POD-1", "pod-2", "ünïcode")}
    assert len(names) == 5
    assert all(n.startswith("retention_jobs_") and n.isascii() for n in names)
    longest = job_store_table("replica-" * 16)
    # APScheduler indexes next_run_time as ix_<table>_next_run_time: PostgreSQL allows 63.
    assert len(f"ix_{longest}_next_run_time") <= 63
    assert job_store_table("pod-1") == job_store_table("pod-1")


def test_settings_defaults():
    settings = RetentionSettings.load(Env({}))
    assert settings.retention_days == 365
    assert settings.schedule(Job.PURGE) == "0 3 * * * (UTC)"
    assert settings.schedule(Job.RECONCILE) == "30 3 * * * (UTC)"
    assert settings.purge_batch == 10_000
    assert settings.misfire_grace_seconds == 21_600
    assert settings.replica_id  # the host name
    assert settings.scheduler_enabled


def test_settings_from_the_environment():
    settings = RetentionSettings.load(
        Env(
            {
                "MIXIP_RETENTION_DAYS": "30",
                "MIXIP_RETENTION_PURGE_CRON": " 15  4 * * mon-fri ",
                "MIXIP_RETENTION_TIMEZONE": "Europe/Paris",
                "MIXIP_RETENTION_REPLICA_ID": "pod-7",
                "MIXIP_RETENTION_SCHEDULER": "false",
            }
        )
    )
    assert settings.retention_days == 30
    assert settings.schedule(Job.PURGE) == "15 4 * * mon-fri (Europe/Paris)"
    assert settings.replica_id == "pod-7" and not settings.scheduler_enabled


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MIXIP_RETENTION_DAYS", "0"),
        ("MIXIP_RETENTION_DAYS", "a year"),
        ("MIXIP_RETENTION_PURGE_CRON", "every night"),
        ("MIXIP_RETENTION_RECONCILE_CRON", "30 3 * * 7"),
        ("MIXIP_RETENTION_TIMEZONE", "Mars/Olympus"),
        ("MIXIP_RETENTION_TIMEZONE", "/etc/passwd"),
        ("MIXIP_RETENTION_PURGE_BATCH", "0"),
        ("MIXIP_RETENTION_PURGE_BATCH", "100001"),
        ("MIXIP_RETENTION_MISFIRE_GRACE_SECONDS", "0"),
        ("MIXIP_RETENTION_REPLICA_ID", "x" * 129),
        ("MIXIP_RETENTION_REPLICA_ID", "pod\t1"),
        ("MIXIP_RETENTION_SCHEDULER", "maybe"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        RetentionSettings.load(Env({name: value}))
