"""Erasure reaches every byte: after `mixip erase`, nothing on disk names or describes the talent
(finding #1 of the red-team), and a copy of the data directory taken before the erasure, restored
after the rotation the erasure schedules, links nothing to the talent any more (finding #2).

Real `mixip up` meshes (five processes): databases, WAL files, logs, media and keys are what
they are in production. The enrolled vector is computed afresh from the same photo, as an
attacker would, and looked for as float32 little-endian bytes; so are the plain digests an
attacker would recompute from a photo and a guess (the enrollment's, the review note's), which
no service may keep."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from mixip.common.v1 import common_pb2
from mixip.runtime.config import SERVICES
from mixip.runtime.idempotency import content_digest
from tests.e2e.test_cli import MIXIP, mixip, ok_json
from tests.support import faces
from tests.support.databases import BACKENDS, fresh_schema_url
from tests.support.disk import relation_files, schema_dump

pytestmark = pytest.mark.slow


def start(data_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(
        [*MIXIP, "--data-dir", str(data_dir), "--json", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    ready = json.loads(process.stdout.readline() or "{}")
    assert ready.get("event") == "ready", process.stderr.read()
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def key_dir(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + "-keys")


def enrolled_vector(photo: np.ndarray) -> np.ndarray:
    """The embedding of the photo's face as the local engine computes it (what enrollment
    stores), float32."""
    from services.matcher.engines.local import LocalEngine

    engine = LocalEngine(index_for=lambda account: None)
    [face, *_] = engine.detect(photo)
    [vector] = engine.describe(photo, [face])
    return np.asarray(vector, dtype="<f4")


def holds_vector(data: bytes, vector: np.ndarray) -> bool:
    """Whether 128 consecutive float32 little-endian numbers anywhere in `data` (at any byte
    alignment) are the vector, up to the last bits a re-computation may change: cosine > 0.99
    (random data scores about 0.1)."""
    unit = vector.astype(np.float64) / np.linalg.norm(vector)
    for offset in range(4):
        usable = (len(data) - offset) // 4
        if usable < len(unit):
            continue
        numbers = np.frombuffer(data, dtype="<f4", count=usable, offset=offset)
        with np.errstate(invalid="ignore", over="ignore"):
            numbers = np.nan_to_num(numbers.astype(np.float64), posinf=0.0, neginf=0.0)
        numbers = np.clip(numbers, -1e6, 1e6)
        windows = np.lib.stride_tricks.sliding_window_view(numbers, len(unit))
        norms = np.sqrt(np.convolve(numbers**2, np.ones(len(unit)), mode="valid"))
        scores = (windows @ unit) / np.where(norms > 0, norms, np.inf)
        if np.any(scores > 0.99):
            return True
    return False


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        yield from (path for path in root.rglob("*") if path.is_file())


def holding(needles: dict[str, bytes], vector: np.ndarray | None, paths) -> list[tuple[str, str]]:
    """(what, file) for every needle, and the vector (if given), found in any of the files."""
    found = []
    for path in paths:
        data = Path(path).read_bytes()
        found += [(name, str(path)) for name, needle in needles.items() if needle in data]
        if vector is not None and holds_vector(data, vector):
            found.append(("vector", str(path)))
    return found


def group_name() -> str:
    """A file name for the group photo that names the talent as a caller's may, and that no
    byte sequence holds by accident."""
    return f"jane-doe-{secrets.token_hex(8)}-headshot.jpg"


def scenario(
    data_dir: Path, tmp_path: Path, talent: str, note: str, name: str
) -> tuple[str, dict[str, bytes]]:
    """Consent, enrollment, a match with the talent in a group photo (file `name`) and a review
    decision with a note on the talent's face. Returns the media id, and the plain digests
    (hex, as an older mesh stored them) of the enrollment and of the decision."""
    portrait, group = tmp_path / "portrait.png", tmp_path / name
    cv2.imwrite(str(portrait), faces.astronaut())
    cv2.imwrite(str(group), faces.composite(faces.astronaut(), faces.grace_hopper()))
    ok_json(data_dir, "projects", "create", "p1", "--name", "P1")  # again: the same project
    ok_json(data_dir, "consent", "grant", talent, "--scope", "biometric")
    ok_json(data_dir, "consent", "grant", talent, "--scope", "usage", "--project", "p1")
    ok_json(data_dir, "enroll", talent, str(portrait))
    matched = ok_json(data_dir, "match", str(group), "--project", "p1")
    [index] = [i for i, f in enumerate(matched["faces"]) if f["talent_id"] == talent]
    media = matched["media_id"]
    listed = ok_json(data_dir, "media", "list", "--project", "p1")
    assert name in json.dumps(listed)  # the name is kept (sealed), and shown
    ok_json(data_dir, "review", media, str(index), "--decision", "approve", "--note", note)
    approved = str(common_pb2.REVIEW_DECISION_APPROVED_FOR_RELEASE)
    return str(media), {
        "enrollment digest": content_digest(talent, portrait.read_bytes()).encode(),
        "decision digest": content_digest(media, str(index), approved, note).encode(),
    }


@pytest.fixture(params=BACKENDS)
def mesh_env(request, pg_test_database) -> tuple[str, dict[str, str], list[str]]:
    """The environment of a `mixip up`, with every service on its own PostgreSQL schema when
    the backend is PostgreSQL; and those schemas' names."""
    env = os.environ.copy()
    schemas: list[str] = []
    if request.param == "postgresql":
        for service in SERVICES:
            url = fresh_schema_url(pg_test_database, service)
            env[f"MIXIP_{service.upper()}_DATABASE_URL"] = url
            schemas.append(url.rsplit("search_path%3D", 1)[-1].split("&", 1)[0])
    return request.param, env, schemas


def test_after_an_erasure_no_byte_on_disk_names_or_describes_the_talent(
    mesh_env, tmp_path_factory, pg_test_database
):
    backend, env, schemas = mesh_env
    data_dir = tmp_path_factory.mktemp("mesh")
    talent, note = f"talent-{secrets.token_hex(8)}", f"note-{secrets.token_hex(8)}"
    name = group_name()
    vector = enrolled_vector(faces.astronaut())
    needles = {"talent id": talent.encode(), "note": note.encode(), "file name": name.encode()}
    # the scan finds what it looks for (else an empty result proves nothing): the vector at an
    # odd offset, a little off in its last bits, and the strings
    probe = tmp_path_factory.mktemp("probe") / "probe.bin"
    nearly = (vector * np.float32(1.0001)).astype("<f4").tobytes()
    probe.write_bytes(os.urandom(4097) + nearly + b"".join(needles.values()))
    assert {name for name, _ in holding(needles, vector, [probe])} == {*needles, "vector"}
    assert holding(needles, vector, [Path(faces.__file__)]) == []

    def on_disk(needles: dict[str, bytes], vector: np.ndarray | None) -> list[tuple[str, str]]:
        found = holding(needles, vector, files_under(data_dir, key_dir(data_dir)))
        if backend == "postgresql":
            engine = create_engine(
                pg_test_database, poolclass=NullPool, isolation_level="AUTOCOMMIT"
            )
            with engine.connect() as connection:
                files = relation_files(connection, schemas)
            engine.dispose()
            assert len(files) > 10 * len(schemas)  # every service's tables, indexes and TOAST
            found += holding(needles, vector, files)
            dump = schema_dump(pg_test_database, schemas)
            assert dump.count(b"COPY ") > 10  # the services' tables, with their rows
            found += holding(needles, vector, [dump_file(dump, data_dir)])
        return found

    process = start(data_dir, env)
    try:
        media, digests = scenario(data_dir, tmp_path_factory.mktemp("m"), talent, note, name)
        # before the erasure too: the retry digests are keyed, nobody recomputes them from a
        # photo and a guessed id or note (the scan does read the rows: it finds the media id)
        assert on_disk({"media id": media.encode()}, None)
        assert on_disk(digests, None) == []
        receipt = ok_json(data_dir, "erase", talent)
        assert receipt["steps"] and all(step["completed_at"] for step in receipt["steps"])
        assert ok_json(data_dir, "audit", "verify")["ok"] is True
        assert on_disk(needles | digests, vector) == []
    finally:
        stop(process)


def dump_file(dump: bytes, data_dir: Path) -> Path:
    path = data_dir.with_name(data_dir.name + ".dump")
    path.write_bytes(dump)
    return path


def wait_for_rotations(keys: Path, deadline_seconds: float = 60) -> None:
    """Until every vault in the key directory has rotated once (its key files are versions)."""
    deadline = time.monotonic() + deadline_seconds
    vaults = ("audit-kek", "gateway-vault", "consent-vault", "matcher-vault")
    while time.monotonic() < deadline:
        names = {path.name for path in keys.iterdir()}
        rotated = all(any(n.startswith(v + ".v") for n in names) for v in vaults)
        if rotated and not any(f"{v}.key" in names for v in vaults):
            return
        time.sleep(0.2)
    raise AssertionError(f"the vaults did not rotate: {sorted(p.name for p in keys.iterdir())}")


def test_a_data_directory_copied_before_an_erasure_links_nothing_after_the_rotation(tmp_path):
    """SQLite: a plain copy of the data directory (a stopped mesh's, so it is consistent),
    restored after the erasure and the rotation it owes, into a fresh mesh that has the key
    directory (never part of a data-directory backup)."""
    data_dir = tmp_path / "mesh"
    env = os.environ.copy() | {
        "MIXIP_VAULT_ROTATE_WITHIN_SECONDS": "0",
        "MIXIP_VAULT_ROTATION_CHECK_SECONDS": "0.2",
    }
    talent, note = f"talent-{secrets.token_hex(8)}", f"note-{secrets.token_hex(8)}"
    name = group_name()
    process = start(data_dir, env)
    try:
        media, _ = scenario(data_dir, tmp_path, talent, note, name)
        assert len(ok_json(data_dir, "audit", "list", "--talent", talent)["events"]) >= 1
    finally:
        stop(process)
    backup = tmp_path / "backup"
    shutil.copytree(data_dir, backup)
    assert not (backup / "keys").exists()  # the keys were never in the data directory

    process = start(data_dir, env)
    try:
        ok_json(data_dir, "erase", talent)
        wait_for_rotations(key_dir(data_dir))
    finally:
        stop(process)

    shutil.rmtree(data_dir)
    shutil.copytree(backup, data_dir)  # the restore: old data, today's keys
    # its vaults name keys the rotation destroyed: started only on the operator's word
    process = start(data_dir, env | {"MIXIP_VAULT_RESET_UNREADABLE": "true"})
    try:
        assert ok_json(data_dir, "audit", "list", "--talent", talent)["events"] == []
        assert ok_json(data_dir, "audit", "verify")["ok"] is True
        listed = mixip(data_dir, "--json", "media", "list", "--project", "p1")
        assert media in listed.stdout and name not in listed.stdout
        exported = mixip(data_dir, "export", talent)
        assert exported.returncode == 1 and "not found" in exported.stderr
        matched = ok_json(data_dir, "match", str(tmp_path / name), "--project", "p1")
        assert all(face["talent_id"] is None for face in matched["faces"])
        assert {face["label"] for face in matched["faces"]} == {"unknown"}
        shown = mixip(data_dir, "--json", "media", "show", media)
        assert talent not in shown.stdout and note not in shown.stdout
    finally:
        stop(process)
