"""Every file holding data or secrets is created 0600 in a 0700 directory, by the services
(checked on a real `mixip up` process) and by the libraries they use (checked with os.stat)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert

from gateway.media_store import LocalEncryptedStore
from mixip.cli.annotate import contact_sheet
from mixip.cli.demo import group_image
from mixip.cli.launcher import Mesh
from mixip.runtime.connection import write_secret
from mixip.runtime.db import Database
from mixip.runtime.files import private_dir, write_private
from mixip.runtime.keys import LocalKeyWrapper
from tests.support import faces
from tests.support.umask import umask

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # file modes: no PostgreSQL here


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_sqlite_database_and_its_wal_are_0600_in_a_0700_directory(tmp_path, backend):
    path = tmp_path / "data" / "service.db"
    metadata = MetaData()
    table = Table("t", metadata, Column("id", Integer, primary_key=True))
    db = Database(f"sqlite:///{path}", metadata)
    db.create_tables()
    with db.write() as session:
        session.execute(insert(table).values(id=1))
    assert mode(path.parent) == 0o700 and mode(path) == 0o600
    assert (tmp_path / "data" / "service.db-wal").exists()
    assert mode(tmp_path / "data" / "service.db-wal") == 0o600
    db.dispose()


def test_key_files_and_stored_media_are_owner_only(tmp_path, backend):
    wrapper = LocalKeyWrapper(tmp_path / "keys" / "kek.key")
    assert mode(tmp_path / "keys") == 0o700 and mode(tmp_path / "keys" / "kek.key") == 0o600
    store = LocalEncryptedStore(tmp_path / "media", wrapper)
    key = store.put("acct", b"media bytes")
    stored = next(p for p in (tmp_path / "media").rglob("*") if p.is_file())
    assert key in stored.name and mode(stored) == 0o600
    assert mode(stored.parent) == 0o700 and mode(tmp_path / "media") == 0o700


def test_rewriting_a_world_readable_secret_narrows_it(tmp_path, backend):
    path = tmp_path / "dev-api-key"
    path.write_text("old\n")
    path.chmod(0o644)
    write_secret(path, "new")
    assert mode(path) == 0o600 and path.read_text() == "new\n"
    with pytest.raises(FileExistsError):
        write_private(path, "again", exclusive=True)
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert mode(private_dir(loose)) == 0o700


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_the_command_lines_images_and_secrets_are_0600_under_a_permissive_umask(
    tmp_path, backend, mask
):
    """A video's contact sheet (`match --annotate`), the demo's group photo and a key file
    (#6); the annotated photo, exports and previews: see test_cli_rights.py."""
    first, second = tmp_path / "a.jpg", tmp_path / "b.jpg"
    first.write_bytes(faces.encode(faces.astronaut()))
    second.write_bytes(faces.encode(faces.grace_hopper()))
    video = tmp_path / "clip.mp4"
    faces.make_video(video, [(faces.astronaut(), 0.2)], size=(160, 120))
    face = {"label": "unknown", "talent_id": None, "similarity": 0.1, "box": [40, 10, 40, 50]}
    out = tmp_path / "out"
    written = [out / "sheet.png", out / "group.jpg", out / "dev-api-key"]
    with umask(mask):
        contact_sheet(
            video, [{**face, "ranges": [[0.0, 0.2]], "best_frame_seconds": 0.1}], written[0]
        )
        group_image(first, second, written[1], height=100)
        write_secret(written[2], "secret")
    assert [mode(path) for path in written] == [0o600] * 3


def test_a_running_service_creates_only_owner_only_files(tmp_path, backend):
    """A real `mixip up` mesh of one service: its data directory (logs, database, lock) and its
    key directory (certificates' keys, key file)."""
    data = tmp_path / "data"
    mesh = Mesh(data, services=["audit"])
    mesh.start(ready_timeout=60)
    try:
        files = [p for root in (data, mesh.key_dir) for p in root.rglob("*") if p.is_file()]
        names = {p.name for p in files}
        assert {"mesh.json", "audit.log", "audit.db", "audit.lock"} <= names
        assert {"ca.key", "audit.key", "audit-kek.key"} <= names
        for path in files:
            expected = 0o644 if path.suffix == ".pem" else 0o600  # certificates are public
            assert mode(path) == expected, path
        roots = (data, mesh.key_dir)
        for directory in [*roots, *(p for root in roots for p in root.rglob("*") if p.is_dir())]:
            assert mode(directory) == 0o700, directory
    finally:
        mesh.stop()
