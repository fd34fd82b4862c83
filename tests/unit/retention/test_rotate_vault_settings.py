"""The rotate-vault job's schedule setting."""

from __future__ import annotations

import pytest

from mixip.runtime.config import ConfigError, Env
from services.retention.domain import Job
from services.retention.settings import RetentionSettings


def test_the_vault_rotates_weekly_by_default():
    assert RetentionSettings.load(Env({})).schedule(Job.ROTATE_VAULT) == "0 4 * * sun (UTC)"


def test_the_rotation_schedule_comes_from_the_environment():
    settings = RetentionSettings.load(
        Env({"MIXIP_RETENTION_ROTATE_VAULT_CRON": "0 2 1 * *", "MIXIP_RETENTION_TIMEZONE": "UTC"})
    )
    assert settings.schedule(Job.ROTATE_VAULT) == "0 2 1 * * (UTC)"
    assert settings.schedule(Job.PURGE) == "0 3 * * * (UTC)"  # the others are unchanged


def test_a_bad_rotation_schedule_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="MIXIP_RETENTION_ROTATE_VAULT_CRON"):
        RetentionSettings.load(Env({"MIXIP_RETENTION_ROTATE_VAULT_CRON": "0 4 * * 0"}))
