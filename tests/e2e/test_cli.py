"""The mixip command line against a real `mixip up` (five processes): JSON output, exit codes,
one-line errors, and a clean stop."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mixip.cli.launcher import web_serving
from mixip.runtime.config import SERVICES
from mixip.runtime.tls import channel_credentials
from tests.support import faces
from tests.support.databases import BACKENDS, fresh_schema_url

pytestmark = pytest.mark.slow
MIXIP = [sys.executable, "-m", "mixip.cli.main"]


def mixip(data_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MIXIP, "--data-dir", str(data_dir), *args],
        stdin=subprocess.DEVNULL,  # never a terminal: nothing asks for confirmation
        capture_output=True,
        text=True,
        timeout=180,
        env=env or os.environ.copy(),
    )


def ok_json(data_dir: Path, *args: str) -> dict:
    result = mixip(data_dir, "--json", *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # one JSON object per command
    return json.loads(lines[0])


@pytest.fixture(scope="module", params=BACKENDS)
def running_mesh(request, tmp_path_factory, pg_test_database):
    """`mixip up` as a user runs it; on PostgreSQL each service gets its own schema."""
    data_dir = tmp_path_factory.mktemp("mesh")
    env = os.environ.copy()
    if request.param == "postgresql":
        for service in SERVICES:
            env[f"MIXIP_{service.upper()}_DATABASE_URL"] = fresh_schema_url(
                pg_test_database, service
            )
    process = subprocess.Popen(
        [*MIXIP, "--data-dir", str(data_dir), "--json", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    ready = json.loads(process.stdout.readline() or "{}")
    assert ready.get("event") == "ready", process.stderr.read()
    for project in ("p1", "p-metrics"):  # projects exist once created (matching refuses others)
        ok_json(data_dir, "projects", "create", project, "--name", project.upper())
    yield data_dir, ready, process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def health(address: str, credentials=None) -> int:
    channel = (
        grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    )
    with channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(), timeout=5)
            .status
        )


def test_up_serves_every_service_over_mutual_tls(running_mesh):
    data_dir, ready, _ = running_mesh
    assert set(ready["services"]) == {"gateway", "matcher", "consent", "audit", "retention"}
    assert ready["mutual_tls"] is True
    mesh = json.loads((data_dir / "mesh.json").read_text())
    assert mesh["services"] == ready["services"]
    operator = channel_credentials(Path(mesh["tls_dir"]), "operator")
    serving = health_pb2.HealthCheckResponse.SERVING
    for name, address in ready["services"].items():
        if name == "gateway":  # client-facing: API keys, plaintext on loopback by default
            assert health(address) == serving
            continue
        assert health(address, operator) == serving
        with pytest.raises(grpc.RpcError):  # a plaintext client is refused at the handshake
            health(address)
    assert (data_dir / "dev-api-key").stat().st_mode & 0o077 == 0


def test_up_serves_the_review_page_on_loopback(running_mesh):
    data_dir, ready, _ = running_mesh
    mesh = json.loads((data_dir / "mesh.json").read_text())
    assert mesh["web"] == ready["web"] and ready["web"].startswith("http://127.0.0.1:")
    address = ready["web"].removeprefix("http://")
    with urllib.request.urlopen(f"http://{address}/", timeout=10) as reply:
        page = reply.read().decode()
        assert reply.status == 200 and "Sign in" in page
        assert reply.headers["X-Frame-Options"] == "DENY"


def test_the_whole_flow_through_the_command_line(running_mesh, tmp_path):
    data_dir, _, _ = running_mesh
    portrait = tmp_path / "astronaut.png"
    cv2.imwrite(str(portrait), faces.astronaut())
    group = tmp_path / "group.jpg"
    cv2.imwrite(str(group), faces.composite(faces.astronaut(), faces.grace_hopper()))

    ok_json(data_dir, "consent", "grant", "collins", "--scope", "biometric")
    ok_json(data_dir, "consent", "grant", "collins", "--scope", "usage", "--project", "p1")
    shown = ok_json(data_dir, "consent", "show", "collins")
    assert shown["current"] == {"biometric_processing": "active", "face_usage p1": "active"}
    enrolled = ok_json(data_dir, "enroll", "collins", str(portrait))
    assert len(enrolled["faces"]) == 1

    annotated = tmp_path / "out.png"
    matched = ok_json(
        data_dir, "match", str(group), "--project", "p1", "--annotate", str(annotated)
    )
    assert set(matched) >= {"media_id", "faces"}
    labels = sorted((f["label"], f["talent_id"]) for f in matched["faces"])
    assert labels == [("cleared", "collins"), ("unknown", None)]
    for face in matched["faces"]:
        assert set(face) == {"label", "talent_id", "similarity", "reason", "box"}
        assert len(face["box"]) == 4
    assert cv2.imread(str(annotated)) is not None

    # global options are also accepted after the command
    result = mixip(data_dir, "audit", "verify", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["ok"] is True
    listed = ok_json(data_dir, "audit", "list", "--talent", "collins")
    assert len(listed["events"]) == 1

    export_file = tmp_path / "export.json"
    ok_json(data_dir, "export", "collins", "-o", str(export_file))
    assert json.loads(export_file.read_text())["talent_id"] == "collins"

    receipt = ok_json(data_dir, "erase", "collins")
    assert receipt["steps"][0]["name"] == "consent.erase_ledger"
    again = ok_json(data_dir, "erase", "collins")  # erasing an erased talent stays idempotent
    assert {s["count"] for s in again["steps"]} == {0}
    typo = mixip(data_dir, "erase", "colins")
    assert typo.returncode == 1 and typo.stderr.startswith("mixip: not found: no talent 'colins'")
    assert ok_json(data_dir, "audit", "list", "--talent", "collins")["events"] == []
    assert ok_json(data_dir, "audit", "verify")["ok"] is True
    gone = mixip(data_dir, "export", "collins")
    assert gone.returncode == 1 and "not found" in gone.stderr

    status = ok_json(data_dir, "retention", "status")
    assert {j["job"] for j in status["jobs"]} == {"purge", "reconcile", "rotate-vault"}
    run = ok_json(data_dir, "retention", "run", "--job", "reconcile")
    assert run["outcome"] == "succeeded"
    # five services and the review page logged the whole flow: not one line names the talent
    logs = list((data_dir / "logs").glob("*.log"))
    assert sorted(log.stem for log in logs) == sorted(
        ["gateway", "matcher", "consent", "audit", "retention", "web"]
    )
    assert all("collins" not in log.read_text() for log in logs)


def test_no_metrics_endpoint_names_an_account_or_a_talent(running_mesh, tmp_path):
    """The metrics ports have no authentication (#8): after an enrollment and a match, every
    service's endpoint is scraped, and none holds an account id or the talent's id."""
    data_dir, _, _ = running_mesh
    portrait = tmp_path / "hopper.png"
    cv2.imwrite(str(portrait), faces.grace_hopper())
    ok_json(data_dir, "consent", "grant", "metrics-talent-9", "--scope", "biometric")
    ok_json(data_dir, "enroll", "metrics-talent-9", str(portrait))
    ok_json(data_dir, "match", str(portrait), "--project", "p-metrics")
    accounts = [a["account_id"] for a in ok_json(data_dir, "accounts", "list")["accounts"]]
    endpoints = json.loads((data_dir / "mesh.json").read_text())["metrics"]
    assert accounts and set(SERVICES) <= set(endpoints)
    for instance, address in endpoints.items():
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert "grpc_server_handled_total" in text, instance
        assert "metrics-talent-9" not in text, instance
        assert not [a for a in accounts if a in text], instance
        if instance == "matcher":  # the collection is counted, over every account
            enrolled = re.search(r"^mixip_matcher_enrolled_faces (\S+)$", text, re.MULTILINE)
            assert enrolled and float(enrolled[1]) >= 1


def test_after_traffic_no_file_in_the_data_dir_is_key_material_and_the_key_dir_holds_it(
    running_mesh, tmp_path
):
    """Issue 17, #2: a copy of the data directory is not a copy of the keys that seal it."""
    data_dir, _, _ = running_mesh
    portrait = tmp_path / "astronaut.png"
    cv2.imwrite(str(portrait), faces.astronaut())
    ok_json(data_dir, "consent", "grant", "apart", "--scope", "biometric")
    ok_json(data_dir, "enroll", "apart", str(portrait))
    ok_json(data_dir, "match", str(portrait), "--project", "p1")  # media sealed by the gateway
    key_dir = Path(json.loads((data_dir / "mesh.json").read_text())["key_dir"])
    assert not key_dir.is_relative_to(data_dir) and key_dir.stat().st_mode & 0o777 == 0o700
    keys = {p.relative_to(key_dir).as_posix() for p in key_dir.rglob("*") if p.is_file()}
    assert {"gateway-kek.key", "gateway-admin.key", "tls/ca.key"} <= keys, keys
    assert any(k.startswith("audit-kek") and k.endswith(".key") for k in keys), keys
    secrets = [p.read_bytes() for p in key_dir.rglob("*.key")]
    data_files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any("media" in p.relative_to(data_dir).parts for p in data_files)  # stored media
    for path in data_files:
        parts = path.relative_to(data_dir).parts
        assert path.suffix != ".key" and "keys" not in parts and "tls" not in parts, path
        content = path.read_bytes()
        assert not any(secret in content for secret in secrets), path


def test_a_video_match_has_ranges_and_a_contact_sheet(running_mesh, tmp_path):
    data_dir, _, _ = running_mesh
    video = tmp_path / "clip.mp4"
    faces.make_video(video, [(faces.astronaut(), 1.0), (faces.grace_hopper(), 1.0)])
    sheet = tmp_path / "sheet.png"
    matched = ok_json(data_dir, "match", str(video), "--project", "p1", "--annotate", str(sheet))
    assert len(matched["faces"]) == 2 and all(f["ranges"] for f in matched["faces"])
    assert cv2.imread(str(sheet)).shape[1] >= 2 * 200


def test_a_purge_drill_reaches_the_gateways_internal_port_and_is_recorded(running_mesh):
    """Retention calls the gateway's internal port over mutual TLS (caller rules on): a drill a
    year and a day ahead deletes every stored media; an account's period is set by the CLI."""
    from datetime import UTC, datetime, timedelta

    data_dir, _, _ = running_mesh
    account = ok_json(data_dir, "accounts", "create", "brief-studio")["account_id"]
    kept = ok_json(data_dir, "accounts", "retention", account, "--days", "30")
    assert kept["retention_days"] == 30 and kept["account_id"] == account

    as_of = (datetime.now(UTC) + timedelta(days=366)).isoformat()
    drill = ok_json(data_dir, "retention", "run", "--job", "purge", "--as-of", as_of)

    assert drill["outcome"] == "succeeded" and drill["media_purged"] >= 1
    assert drill["media_objects_deleted"] >= drill["media_purged"]
    assert drill["as_of"] is not None and drill["requested_by"]
    media = data_dir / "media"
    assert not [p for p in media.rglob("*") if p.is_file()]
    again = ok_json(data_dir, "retention", "run", "--job", "purge", "--as-of", as_of)
    assert again["media_purged"] == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("match", "/no/such/file.jpg", "--project", "p1"), 1, "cannot read /no/such/file.jpg"),
        (("consent", "grant", "t", "--scope", "usage"), 2, "--scope usage needs --project"),
        (("consent", "grant", "bad id!", "--scope", "biometric"), 1, "invalid argument"),
        (("audit", "list", "--since", "yesterday"), 2, "is not an ISO 8601 time"),
        (("retention", "run", "--as-of", "yesterday"), 2, "is not an ISO 8601 time"),
        (("retention", "run", "--as-of", "2020-01-01T00:00:00Z"), 1, "must not be in the past"),
        (("enroll", "nobody", "{image}"), 1, "biometric processing consent"),
    ],
)
def test_errors_are_one_line_with_a_non_zero_exit(running_mesh, tmp_path, args, code, message):
    data_dir, _, _ = running_mesh
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), faces.astronaut())
    result = mixip(data_dir, *(a.format(image=image) for a in args))
    assert result.returncode == code
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_typo_in_a_project_id_is_an_error_that_suggests_the_project_meant(running_mesh, tmp_path):
    data_dir, _, _ = running_mesh
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), faces.astronaut())
    before = ok_json(data_dir, "projects", "list")
    for args in (
        ("match", str(image), "--project", "p-metric"),
        ("consent", "grant", "typo-talent", "--scope", "usage", "--project", "p-metric"),
    ):
        result = mixip(data_dir, *args)
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip() == (
            "mixip: not found: no project 'p-metric'; did you mean 'p-metrics'? create it with "
            '`mixip projects create p-metric --name "..."` (`mixip projects list` lists yours)'
        )
    assert ok_json(data_dir, "projects", "list") == before  # nothing created
    assert ok_json(data_dir, "consent", "show", "typo-talent")["records"] == []  # none recorded


def test_a_text_file_named_jpg_is_refused(running_mesh, tmp_path):
    data_dir, _, _ = running_mesh
    fake = tmp_path / "photo.jpg"
    fake.write_text("not a photo")
    result = mixip(data_dir, "match", str(fake), "--project", "p1")
    assert result.returncode == 1 and "invalid argument: the file: " in result.stderr
    assert "chunk" not in result.stderr  # the CLI's words, not the contract's field names
    assert "Traceback" not in result.stderr


def test_without_a_mesh_the_cli_says_so(tmp_path):
    result = mixip(tmp_path, "audit", "verify")
    assert result.returncode == 2 and "mixip up" in result.stderr  # configuration, as documented
    down = mixip(tmp_path, "down")
    assert down.returncode == 2 and "no running mesh found" in down.stderr
    usage = mixip(tmp_path, "consent", "grant", "t", "--scope", "forever")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_a_bad_log_level_is_a_one_line_configuration_error(tmp_path):
    env = {**os.environ, "MIXIP_LOG_LEVEL": "verbose", "MIXIP_DATA_DIR": str(tmp_path)}
    cli = mixip(tmp_path, "audit", "verify", env=env)
    service = subprocess.run(
        [sys.executable, "-m", "services.audit"], capture_output=True, text=True, env=env
    )
    for result in (cli, service):
        assert result.returncode == 2 and "MIXIP_LOG_LEVEL" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_the_vault_rotates_from_the_cli_and_only_its_current_key_file_remains(running_mesh):
    data_dir, _, _ = running_mesh
    before = ok_json(data_dir, "audit", "vault-status")
    assert set(before) == {"key_version", "rotated_at"} and before["key_version"] >= 1
    run = ok_json(data_dir, "retention", "run", "--job", "rotate-vault")
    assert (run["job"], run["outcome"]) == ("rotate-vault", "succeeded"), run["error"]
    after = ok_json(data_dir, "audit", "vault-status")
    assert after["key_version"] == before["key_version"] + 1
    assert after["rotated_at"] >= before["rotated_at"]
    key_dir = Path(json.loads((data_dir / "mesh.json").read_text())["key_dir"])
    keys = sorted(p.name for p in key_dir.glob("audit-kek*"))
    assert keys == [f"audit-kek.v{after['key_version']}.key"]
    text = mixip(data_dir, "audit", "vault-status")
    assert text.returncode == 0 and f"key version {after['key_version']}" in text.stdout


def _erase_on_a_terminal(data_dir: Path, talent: str, typed: str) -> tuple[int, str]:
    """`mixip erase` with a terminal as standard input, answering `typed` to its question."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [*MIXIP, "--data-dir", str(data_dir), "erase", talent],
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(secondary)
    os.write(primary, (typed + "\n").encode())
    out, err = process.communicate(timeout=120)
    os.close(primary)
    return process.returncode, out + err


def test_erase_asks_on_a_terminal_and_erases_only_when_confirmed(running_mesh, tmp_path):
    data_dir, _, _ = running_mesh
    ok_json(data_dir, "consent", "grant", "ask-me", "--scope", "biometric")
    code, output = _erase_on_a_terminal(data_dir, "ask-me", "no")
    assert code == 1 and "not erased" in output
    assert ok_json(data_dir, "consent", "show", "ask-me")["records"]  # nothing was erased
    code, output = _erase_on_a_terminal(data_dir, "ask-me", "ask-me")
    assert code == 0 and "erased ask-me" in output
    assert mixip(data_dir, "export", "ask-me").returncode == 1  # NOT_FOUND: gone


def test_up_stops_every_process_on_sigterm(running_mesh):
    data_dir, ready, process = running_mesh
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert not (data_dir / "mesh.json").exists()
    for address in ready["services"].values():
        with pytest.raises(grpc.RpcError):
            health(address)
    assert not web_serving(ready["web"].removeprefix("http://"))  # the review page stopped too


def test_the_demo_runs_start_to_end(tmp_path):
    result = subprocess.run(
        [*MIXIP, "--json", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    before = sorted((f["label"], f["talent_id"]) for f in summary["labels_before_erasure"])
    assert before == [("cleared", "eileen-collins"), ("unknown", None)]
    assert summary["review_decision"]["decision"] == "approved_for_release"
    assert all(f["label"] == "unknown" for f in summary["labels_after_erasure"])
    assert summary["audit"]["ok"] and summary["events_linked_after_erasure"] == 0
    assert Path(summary["annotated"]).exists()
