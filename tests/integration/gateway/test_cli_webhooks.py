"""`mixip webhooks` against a real gateway (in-process `mixip`) and a real receiver on a
loopback port (the gateway's development setting allows it, except where a test turns it
off)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from mixip.cli.main import main
from tests.conftest import FakeClock
from tests.support.webhooks import receiving


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(microsecond=0))  # receivers check timestamps


@pytest.fixture
def gateway_overrides() -> dict:
    return {"webhooks_allow_private": True}


@pytest.fixture
def cli(gateway, monkeypatch, tmp_path, capsys):
    """Runs `mixip --gateway <the fixture's gateway> ARGS` as a new account; returns (exit
    code, stdout, stderr)."""
    _, meta = gateway.new_account("studio")
    monkeypatch.setenv("MIXIP_API_KEY", meta[0][1].removeprefix("Bearer "))
    monkeypatch.delenv("MIXIP_GATEWAY_CA", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--data-dir", str(tmp_path / "cli"), "--gateway", gateway.address, *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_add_list_test_rotate_and_remove_with_json(cli, gateway):
    with receiving() as receiver:
        code, out, _ = cli(
            "webhooks", "add", receiver.url, "--event", "erasure.completed", "--json"
        )
        added = json.loads(out)
        webhook_id, secret = added["webhook"]["webhook_id"], added["secret"]
        assert code == 0 and secret.startswith("whsec_")
        assert added["webhook"]["event_types"] == ["erasure.completed"]
        code, out, _ = cli("webhooks", "list", "--json")
        [listed] = json.loads(out)["webhooks"]
        assert code == 0 and listed == added["webhook"] and secret not in out
        code, out, _ = cli("webhooks", "test", webhook_id, "--json")
        message_id = json.loads(out)["message_id"]
        [delivered] = receiver.wait_for(1)
        assert delivered.message_id == message_id
        assert delivered.verified_by(secret)["data"]["webhook_id"] == webhook_id
        code, out, _ = cli("webhooks", "rotate-secret", webhook_id, "--json")
        rotated = json.loads(out)
        assert code == 0 and rotated["secret"] != secret
        assert rotated["webhook"]["previous_secret_expires_at"]
        code, out, _ = cli("webhooks", "remove", webhook_id)
        assert code == 0 and f"removed webhook {webhook_id}" in out
        code, out, _ = cli("webhooks", "list")
        assert code == 0 and out.startswith("0 webhook(s)")


def test_bad_input_is_one_line_and_exit_2_and_an_unknown_id_exit_1(cli):
    for args in (
        ("webhooks", "add", "ftp://hooks.example.com/x"),
        ("webhooks", "add", "https://hooks.example.com/x", "--event", "media.uploaded"),
        ("webhooks", "test", "not an id"),
    ):
        code, out, err = cli(*args)
        assert (code, out) == (2, ""), args
        assert err.startswith("mixip: invalid argument: ") and len(err.splitlines()) == 1
    code, _, err = cli("webhooks", "remove", "wh_unknown")
    assert code == 1 and "no such webhook" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("gateway_overrides", [{}])
def test_without_the_development_setting_private_addresses_and_http_are_refused(cli):
    for url in (
        "https://127.0.0.1:8443/hooks",
        "https://10.1.2.3/hooks",
        "https://[::1]/hooks",
        "https://169.254.169.254/latest",
        "https://224.0.0.1/hooks",
        "https://localhost/hooks",
        "http://hooks.example.com/hooks",
    ):
        code, _, err = cli("webhooks", "add", url)
        assert code == 2 and "url" in err and len(err.splitlines()) == 1, url
    code, out, _ = cli("webhooks", "add", "https://hooks.example.com/hooks", "--json")
    assert code == 0 and json.loads(out)["webhook"]["url"] == "https://hooks.example.com/hooks"
