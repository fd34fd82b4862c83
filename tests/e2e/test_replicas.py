"""Replicas behind one name (`mixip up --replicas matcher=2,gateway=2`, real processes): a face
enrolled through one gateway replica is matched through the other, and both matcher replicas
serve matches. Which replica served an RPC is read from its own Prometheus endpoint (listed in
`mesh.json` under "metrics"): `grpc_server_handled_total` by method."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mixip.cli.dev_mesh import ensure_dev_account
from mixip.cli.launcher import Mesh, parse_replicas, target
from mixip.cli.output import CliError
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.runtime.config import SERVICES, variable
from mixip.runtime.connection import Connection
from mixip.runtime.times import utcnow
from tests.support import faces
from tests.support.databases import fresh_schema_url
from tests.support.gateway_calls import consent, enroll, upload_requests


def test_replicas_are_parsed_and_bad_specs_are_usage_errors():
    assert parse_replicas("matcher=2, gateway=3") == {"matcher": 2, "gateway": 3}
    assert parse_replicas("") == {}
    for bad in ("matcher", "matcher=0", "matcher=x", "nosuch=2", "gateway=9"):
        with pytest.raises(CliError) as caught:
            parse_replicas(bad)
        assert caught.value.exit_code == 2
    assert target(["127.0.0.1:1"]) == "127.0.0.1:1"
    assert target(["127.0.0.1:1", "127.0.0.1:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"


@pytest.fixture
def mesh(tmp_path, backend, pg_test_database):
    env = {}
    if backend == "postgresql":
        env = {variable(s, "DATABASE_URL"): fresh_schema_url(pg_test_database, s) for s in SERVICES}
    mesh = Mesh(tmp_path / "data", extra_env=env, replicas={"matcher": 2, "gateway": 2})
    mesh.start()
    yield mesh
    mesh.stop()


def _stub(mesh: Mesh, instance: str):
    conn = Connection(mesh.data_dir, mesh.listen[instance])
    stub, meta = conn.gateway()
    return type("Calls", (), {"stub": stub})(), meta


def _served(mesh: Mesh, instance: str, method: str) -> int:
    """How many `method` calls the instance answered OK, from its own metrics endpoint."""
    metrics = json.loads(mesh.mesh_file.read_text())["metrics"][instance]
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "grpc_server_handled_total"
        and sample.labels["grpc_method"] == method
        and sample.labels["grpc_code"] == "OK"
    )


@pytest.mark.slow
def test_enroll_through_one_gateway_match_through_the_other_on_both_matchers(mesh):
    assert set(mesh.processes) == {*SERVICES, "matcher-2", "gateway-2"}
    assert mesh.addresses["matcher"] == target([mesh.listen["matcher"], mesh.listen["matcher-2"]])
    ensure_dev_account(Connection(mesh.data_dir, mesh.listen["gateway"]))
    first, meta = _stub(mesh, "gateway")
    consent(first, meta, utcnow, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(first, meta, utcnow, "astronaut", cpb.CONSENT_SCOPE_FACE_USAGE, project="p1")
    enroll(first, meta, "astronaut", faces.astronaut())

    second, meta = _stub(mesh, "gateway-2")
    photo = faces.encode(faces.astronaut())
    for i in range(6):
        reply = second.stub.UploadMedia(
            upload_requests(photo, project="p1", request_id=f"r-{i}"), metadata=meta
        )
        assert [f.talent_id for f in reply.faces] == ["astronaut"]

    assert _served(mesh, "gateway", "EnrollTalent") == 1
    assert _served(mesh, "gateway-2", "EnrollTalent") == 0
    assert _served(mesh, "gateway-2", "UploadMedia") == 6
    per_matcher = [_served(mesh, m, "MatchMedia") for m in ("matcher", "matcher-2")]
    assert sum(per_matcher) == 6 and min(per_matcher) >= 1, per_matcher


def test_a_bad_replicas_option_is_one_line_and_exit_2_and_starts_nothing(tmp_path, capsys):
    from mixip.cli.main import main

    assert main(["--data-dir", str(tmp_path / "d"), "up", "--replicas", "matcher=two"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mixip: --replicas: 'matcher=two'")
    assert not (tmp_path / "d").exists()
