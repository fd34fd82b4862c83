"""Fixtures of the gateway tests."""

from __future__ import annotations

import pytest

from mixip.cli.main import main
from mixip.consent.v1 import consent_pb2 as cpb
from tests.support import faces
from tests.support.gateway_calls import PROJECT, consent, enroll


@pytest.fixture
def studio(gateway, clock):
    """An account whose astronaut is enrolled with consent for film-1."""
    account, meta = gateway.new_account("studio")
    consent(gateway, meta, clock, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, meta, clock, "astronaut", cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
    enroll(gateway, meta, "astronaut", faces.astronaut())
    return account, meta


@pytest.fixture
def cli(gateway, studio, monkeypatch, tmp_path, capsys):
    """Runs `mixip --gateway <the fixture's gateway> ARGS`; returns (exit code, stdout, stderr)."""
    _, meta = studio
    monkeypatch.setenv("MIXIP_API_KEY", meta[0][1].removeprefix("Bearer "))
    monkeypatch.setenv("MIXIP_ADMIN_KEY", gateway.app.admin_key)
    monkeypatch.delenv("MIXIP_GATEWAY_CA", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--data-dir", str(tmp_path / "cli"), "--gateway", gateway.address, *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    # The CLI matches only into a project that exists (a typo is an error, not a new project).
    assert run("projects", "create", PROJECT, "--name", "Film One")[0] == 0
    return run
