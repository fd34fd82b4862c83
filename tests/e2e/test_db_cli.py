"""`mixip db upgrade` as an init step runs it: every service's database, found as the service
finds it, migrated once; configuration errors are one line, exit 2, and touch nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixip.runtime import migrations
from mixip.runtime.config import SERVICES
from tests.support.databases import fresh_schema_url

pytestmark = pytest.mark.slow


def db_upgrade(data_dir: Path, *args: str, env: dict | None = None):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mixip.cli.main",
            "--data-dir",
            str(data_dir),
            "db",
            "upgrade",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def one_line_error(result, exit_code: int) -> str:
    assert result.returncode == exit_code, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_every_service_database_is_migrated_once(backend, tmp_path, pg_test_database):
    env, urls = {}, {s: f"sqlite:///{tmp_path / (s + '.db')}" for s in SERVICES}
    if backend == "postgresql":
        urls = {s: fresh_schema_url(pg_test_database, s) for s in SERVICES}
        env = {f"MIXIP_{s.upper()}_DATABASE_URL": url for s, url in urls.items()}
    first = db_upgrade(tmp_path, "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)["services"]
    assert report == {
        s: {"revision": migrations.revisions(s)[-1], "applied": migrations.revisions(s)}
        for s in SERVICES
    }
    again = json.loads(db_upgrade(tmp_path, "--json", env=env).stdout)["services"]
    assert all(again[s]["applied"] == [] for s in SERVICES)
    assert all(migrations.drift(urls[s], s) == [] for s in SERVICES)


def test_one_service_only(tmp_path):
    result = db_upgrade(tmp_path, "--service", "audit")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("audit ") and "applied" in result.stdout
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["audit.db"]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MIXIP_RETENTION_DATABASE_URL", "mysql://db/retention", "mysql is not supported"),
        ("MIXIP_RETENTION_DATABASE_URL", "::not a url", "is not a database URL"),
        ("MIXIP_MAX_MESSAGE_BYTES", "lots", "is not an integer"),
    ],
)
def test_a_configuration_error_is_one_line_exit_2_and_migrates_nothing(
    tmp_path, variable, value, message
):
    stderr = one_line_error(db_upgrade(tmp_path, env={variable: value}), 2)
    assert variable in stderr and message in stderr
    assert list(tmp_path.glob("*.db")) == []  # read every URL before touching any database


def test_an_unknown_service_is_one_line_exit_2(tmp_path):
    assert "unknown service 'vault'" in one_line_error(
        db_upgrade(tmp_path, "--service", "vault"), 2
    )


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path):
    url = "postgresql://audit:s3cret-pw@127.0.0.1:1/audit"
    result = db_upgrade(tmp_path, "--service", "audit", env={"MIXIP_AUDIT_DATABASE_URL": url})
    stderr = one_line_error(result, 1)
    assert stderr.startswith("mixip: audit database:") and "s3cret-pw" not in stderr
