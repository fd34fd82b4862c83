"""deploy/kubernetes is validated offline (no cluster, no kustomize binary in CI): every manifest
against the Kubernetes schemas (kubernetes-validate, strict), every kustomization's references,
each Deployment's hardening, and the NetworkPolicies against the caller-rule table."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mixip.runtime.acl import RULES
from mixip.runtime.config import DEFAULT_PORTS, PER_SERVICE_SETTINGS, SERVICES
from mixip.runtime.vault import VAULT_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy/kubernetes"
BASE = KUBE / "base"
LOCAL = KUBE / "overlays/local"
VERSIONS = ("1.29.0", "1.33.0")  # the oldest and a recent version we support
MODULES = {name: f"services.{name}" for name in SERVICES} | {"gateway": "gateway"}
OPERATOR = {"mixip.io/operator": "true"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[Path]:
    return sorted(p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml")


def _base() -> dict[tuple[str, str], dict]:
    paths = [p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"]
    return {(d["kind"], d["metadata"]["name"]): d for p in paths for d in _docs(p)}


def _kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


# Where each port of the caller-rule table is served: a service's own port, and the gateway's
# internal one (GatewayInternalService), which lives in the gateway's pods.
ENDPOINTS = {name: name for name in SERVICES} | {"gateway_internal": "gateway"}
METRICS_PORT = 9090


def _endpoint(full_name: str) -> str:
    """mixip.<service>.v1.<Name>Service -> the endpoint (a key of ENDPOINTS) serving it."""
    if full_name == "mixip.gateway.v1.GatewayInternalService":
        return "gateway_internal"
    return full_name.split(".")[1]


def _callers() -> dict[str, set[str]]:
    """endpoint -> every identity the caller-rule table lets call one of its RPCs."""
    callers: dict[str, set[str]] = {endpoint: set() for endpoint in ENDPOINTS}
    for full_name, methods in RULES.items():
        for allowed in methods.values():
            callers[_endpoint(full_name)] |= allowed
    return callers


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: str(p.relative_to(KUBE)))
def test_every_manifest_is_valid_kubernetes(path):
    documents = _docs(path)
    assert documents
    for version in VERSIONS:
        for document in documents:
            kubernetes_validate.validate(document, version, strict=True)


def test_every_kustomization_lists_exactly_its_files_and_patches_what_exists():
    for folder in (BASE, LOCAL):
        listed = _kustomization(folder)["resources"]
        for entry in listed:
            assert (folder / entry).exists(), (folder, entry)
        own = {p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert own == {e for e in listed if not e.startswith("..")}, folder
    base = _base()
    for entry in _kustomization(LOCAL)["patches"]:
        patch = yaml.safe_load(entry["patch"])
        assert (patch["kind"], patch["metadata"]["name"]) in base
    generated = {s["name"]: s for s in _kustomization(LOCAL)["secretGenerator"]}
    assert set(generated) == {f"mixip-{name}" for name in SERVICES}
    for name in SERVICES:  # each Secret holds its own key and nobody else's
        secret = generated[f"mixip-{name}"]
        assert secret["files"] == [f"certs/{f}" for f in ("ca.pem", f"{name}.pem", f"{name}.key")]
        assert any(v.startswith("database-url=postgresql://") for v in secret["literals"])


def _container(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", SERVICES)
def test_each_deployment_is_probed_bounded_hardened_and_holds_only_its_secret(name):
    base = _base()
    deployment = base[("Deployment", name)]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert container["command"] == ["python", "-m", MODULES[name]]
    health = ["mixip", "health", "--as", name, f"127.0.0.1:{DEFAULT_PORTS[name]}"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == health  # gRPC health over mutual TLS
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    secrets |= {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secrets == {f"mixip-{name}"}
    env = {e["name"]: e for e in container["env"]}
    assert env[f"MIXIP_{name.upper()}_LISTEN"]["value"] == f"0.0.0.0:{DEFAULT_PORTS[name]}"
    assert env["MIXIP_TLS_DIR"]["value"] == "/certs"
    service = base[("Service", name)]["spec"]
    assert service["ports"][0]["port"] == DEFAULT_PORTS[name]
    # internal services are headless: clients resolve every pod and balance round_robin
    assert service.get("clusterIP") == (None if name == "gateway" else "None")


def _pods(name: str) -> list[dict]:
    """Deployment `name`'s pod in the base and in the local overlay (the base with the overlay's
    patch merged as kustomize merges it: volumes by name, mounts by path, env by name), each as
    {"volumes": {name: volume}, "mounts": {path: mount}, "env": {name: value}}."""
    deployment = _base()[("Deployment", name)]
    container = _container(deployment)
    base = {
        "volumes": {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]},
        "mounts": {m["mountPath"]: m for m in container["volumeMounts"]},
        "env": {e["name"]: e.get("value", "") for e in container["env"]},
    }
    local = {key: dict(value) for key, value in base.items()}
    for entry in _kustomization(LOCAL)["patches"]:
        patch = yaml.safe_load(entry["patch"])
        if (patch["kind"], patch["metadata"]["name"]) != ("Deployment", name):
            continue
        spec = patch["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            merged = {**local["volumes"].get(volume["name"], {}), **volume}
            local["volumes"][volume["name"]] = {k: v for k, v in merged.items() if v is not None}
        for patched in spec.get("containers", []):
            local["mounts"] |= {m["mountPath"]: m for m in patched.get("volumeMounts", [])}
            local["env"] |= {e["name"]: e.get("value", "") for e in patched.get("env", [])}
    return [base, local]


def _under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


@pytest.mark.parametrize("name", SERVICES)
def test_no_key_path_sits_under_a_data_volume_and_keys_come_from_secrets_or_their_own_volume(
    name,
):
    """Issue 17, #2: a snapshot of a data volume is not a copy of the keys that seal it."""
    claims = {d["metadata"]["name"] for d in _docs(LOCAL / "volumes.yaml")}
    base, local = _pods(name)
    for pod in (base, local):
        env = pod["env"]
        assert env["MIXIP_KEY_DIR"] == "/keys" and env["MIXIP_DATA_DIR"] == "/data"
        key_paths = [env["MIXIP_KEY_DIR"], env["MIXIP_TLS_DIR"]]
        key_paths += [v for k, v in env.items() if k.endswith(("_KEK_FILE", "_TLS_KEY")) and v]
        volume_of = {path: pod["volumes"][m["name"]] for path, m in pod["mounts"].items()}
        data_mounts = [p for p, v in volume_of.items() if "secret" not in v and p != "/keys"]
        for path in key_paths:
            assert not any(_under(path, mount) for mount in data_mounts), (name, path)
        assert "secret" in volume_of["/certs"]  # TLS keys: the service's own Secret
        if "/keys" in volume_of:  # key files on a claim of their own, never a data volume's
            claim = volume_of["/keys"]["persistentVolumeClaim"]["claimName"]
            assert claim == f"{name}-keys" and claim in claims
            others = [v.get("persistentVolumeClaim", {}) for p, v in volume_of.items()]
            assert [c for c in others if c.get("claimName") == claim] == [{"claimName": claim}]
    assert "/keys" not in base["mounts"]  # production: keys in KMS, none on a volume
    vaults = {"gateway", "audit", "matcher", "consent"}
    assert ("/keys" in local["mounts"]) == (name in vaults)  # local: key files
    kms = {"audit": "MIXIP_AUDIT_KMS_KEY_ID"} | {
        s: f"MIXIP_{s.upper()}_VAULT_KMS_KEY_ID" for s in vaults - {"audit"}
    }
    if name in vaults:  # production: every vault's KEK in KMS (from mixip-aws); local: none
        [entry] = [
            e for e in _container(_base()[("Deployment", name)])["env"] if e["name"] == kms[name]
        ]
        assert entry["valueFrom"]["configMapKeyRef"]["name"] == "mixip-aws"
        assert local["env"][kms[name]] == ""


def test_the_gateway_and_the_matcher_scale_with_hpas_and_retention_runs_several_replicas():
    base = _base()
    for name in ("gateway", "matcher"):
        hpa = base[("HorizontalPodAutoscaler", name)]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
        assert "replicas" not in base[("Deployment", name)]["spec"]  # the HPA owns the count
    retention = base[("Deployment", "retention")]
    assert retention["spec"]["replicas"] >= 2  # ticks are locked in the database
    env = {e["name"]: e for e in _container(retention)["env"]}
    assert env["MIXIP_RETENTION_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.name"
    )


def test_the_migration_job_gives_each_service_only_its_own_database():
    job = _base()[("Job", "mixip-migrate")]["spec"]["template"]["spec"]
    assert {c["name"] for c in job["containers"]} == set(SERVICES)
    for container in job["containers"]:
        [env] = container["env"]
        assert env["name"] == f"MIXIP_{container['name'].upper()}_DATABASE_URL"
        assert env["valueFrom"]["secretKeyRef"]["name"] == f"mixip-{container['name']}"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _peer(selector: dict) -> str:
    labels = selector["podSelector"]["matchLabels"]
    return "operator" if labels == OPERATOR else labels["app.kubernetes.io/name"]


def test_network_policies_equal_the_caller_rules():
    base = _base()
    assert base[("NetworkPolicy", "default-deny")]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }
    callers = _callers()
    for name in SERVICES:
        policy = base[("NetworkPolicy", name)]["spec"]
        assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        ingress = {}
        for rule in policy["ingress"]:
            [port] = rule["ports"]
            assert port["protocol"] == "TCP"
            ingress[port["port"]] = rule
        served = [e for e, pod in ENDPOINTS.items() if pod == name]
        assert set(ingress) == {DEFAULT_PORTS[e] for e in served} | {METRICS_PORT}
        for endpoint in served:
            rule = ingress[DEFAULT_PORTS[endpoint]]
            if endpoint == "gateway":
                assert "from" not in rule  # the client-facing API: TLS and API keys
            else:
                assert {_peer(p) for p in rule["from"]} == callers[endpoint]
        # the metrics port: Prometheus only, no mesh peer
        assert {_peer(p) for p in ingress[METRICS_PORT]["from"]} == {"prometheus"}
        callees = [
            (_peer(to), rule["ports"])
            for rule in policy["egress"]
            for to in rule.get("to", [])
            if "namespaceSelector" not in to
        ]
        reachable = [e for e in ENDPOINTS if name in callers[e]]
        assert sorted(callees) == sorted(
            (ENDPOINTS[e], [{"protocol": "TCP", "port": DEFAULT_PORTS[e]}]) for e in reachable
        )
        env = {e["name"]: e.get("value") for e in _container(base[("Deployment", name)])["env"]}
        given = {e for e in ENDPOINTS if f"MIXIP_{e.upper()}_ADDRESS" in env}
        assert given == set(reachable)  # it is given exactly the addresses it may reach
        for endpoint in given:  # by the name on the callee's certificate
            address = env[f"MIXIP_{endpoint.upper()}_ADDRESS"]
            assert address == f"{ENDPOINTS[endpoint]}:{DEFAULT_PORTS[endpoint]}"


def test_the_gateway_serves_its_internal_port_behind_its_service():
    base = _base()
    container = _container(base[("Deployment", "gateway")])
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = DEFAULT_PORTS["gateway_internal"]
    assert env["MIXIP_GATEWAY_INTERNAL_LISTEN"] == f"0.0.0.0:{port}"
    assert {"name": "internal", "containerPort": port} in container["ports"]
    ports = base[("Service", "gateway")]["spec"]["ports"]
    assert {"name": "internal", "port": port, "targetPort": "internal", "appProtocol": "grpc"} in (
        ports
    )


def test_every_deployment_serves_prometheus_metrics_on_a_scraped_port_and_may_export_traces():
    base = _base()
    deployments = {name: d for (kind, name), d in base.items() if kind == "Deployment"}
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        container = _container(deployment)
        assert {"name": "metrics", "containerPort": METRICS_PORT} in container["ports"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[f"MIXIP_{name.upper()}_METRICS_LISTEN"] == f"0.0.0.0:{METRICS_PORT}"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(METRICS_PORT),
            "prometheus.io/path": "/metrics",
        }
        # OTLP export is optional: the standard OTEL_* variables come from one ConfigMap
        assert container["envFrom"] == [{"configMapRef": {"name": "mixip-otel", "optional": True}}]
    assert ("ConfigMap", "mixip-otel") in base


def test_every_variable_the_manifests_set_is_one_the_code_reads():
    code = "".join(
        path.read_text()
        for folder in ("mixip", "services", "gateway")
        for path in (ROOT / folder).rglob("*.py")
    )
    known = set(re.findall(r"MIXIP_[A-Z0-9_]+", code))
    known |= {f"MIXIP_{s.upper()}_{k}" for s in SERVICES for k in PER_SERVICE_SETTINGS}
    known |= {f"MIXIP_{s.upper()}_VAULT_{k}" for s in SERVICES for k in VAULT_SETTINGS}
    containers = [_container(d) for (kind, _), d in _base().items() if kind == "Deployment"]
    containers += _base()[("Job", "mixip-migrate")]["spec"]["template"]["spec"]["containers"]
    used = {e["name"] for c in containers for e in c["env"]}
    assert {v for v in used if v.startswith("MIXIP_")} - known == set()
    assert used - {v for v in used if v.startswith("MIXIP_")} == {"AWS_REGION"}
    assert "AWS_REGION" in code
