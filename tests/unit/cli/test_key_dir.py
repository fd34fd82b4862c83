"""`mixip up` keeps key material apart from data (issue 17, #2): the key directory beside the
data directory by default, handed to every service, and key files an older `mixip up` left in
the data directory moved there once, never kept in both places."""

from __future__ import annotations

import pytest

from mixip.cli.launcher import Mesh
from mixip.cli.output import CliError


def test_the_key_dir_is_beside_the_data_dir_and_every_service_is_told(tmp_path, monkeypatch):
    monkeypatch.delenv("MIXIP_KEY_DIR", raising=False)
    mesh = Mesh(tmp_path / "var", tls=True)
    assert mesh.key_dir == (tmp_path / "var-keys").resolve()
    assert mesh.tls_dir == mesh.key_dir / "tls"
    assert mesh.environment()["MIXIP_KEY_DIR"] == str(mesh.key_dir)
    assert (
        Mesh(tmp_path / "var", extra_env={"MIXIP_KEY_DIR": str(tmp_path / "k")}).key_dir
        == (tmp_path / "k").resolve()
    )


def test_a_key_dir_inside_the_data_dir_is_refused_before_anything_is_written(tmp_path):
    mesh = Mesh(tmp_path / "var", extra_env={"MIXIP_KEY_DIR": str(tmp_path / "var" / "keys")})
    with pytest.raises(CliError) as refused:
        mesh.start()
    assert refused.value.exit_code == 2 and "inside the data directory" in str(refused.value)
    assert not (tmp_path / "var").exists()


def test_key_files_an_older_mesh_left_in_the_data_dir_are_moved_once(tmp_path):
    data = tmp_path / "var"
    (data / "keys").mkdir(parents=True)
    (data / "tls").mkdir()
    (data / "keys" / "audit-kek.v3.key").write_bytes(b"a" * 32)
    (data / "keys" / "gateway-kek.key").write_bytes(b"g" * 32)
    (data / "tls" / "ca.key").write_text("ca")
    (data / "gateway-admin.key").write_text("admin")
    said: list[str] = []
    mesh = Mesh(data, say=said.append, extra_env={"MIXIP_KEY_DIR": str(tmp_path / "keys")})
    mesh._adopt_old_keys()
    keys = mesh.key_dir
    assert (keys / "audit-kek.v3.key").read_bytes() == b"a" * 32
    assert (keys / "gateway-kek.key").read_bytes() == b"g" * 32
    assert (keys / "tls" / "ca.key").read_text() == "ca"
    assert (keys / "gateway-admin.key").read_text() == "admin"
    assert sorted(p.name for p in data.iterdir()) == []  # nothing of it left behind
    assert len(said) == 3 and all("keys live apart from data" in line for line in said)
    mesh._adopt_old_keys()  # once: a second start has nothing to move
    assert len(said) == 3


def test_key_files_in_both_places_are_refused_and_neither_is_touched(tmp_path):
    data, keys = tmp_path / "var", tmp_path / "keys"
    (data / "keys").mkdir(parents=True)
    keys.mkdir()
    (data / "keys" / "gateway-kek.key").write_bytes(b"old" * 8)
    (keys / "gateway-kek.key").write_bytes(b"new" * 8)
    mesh = Mesh(data, extra_env={"MIXIP_KEY_DIR": str(keys)})
    with pytest.raises(CliError) as refused:
        mesh._adopt_old_keys()
    assert "both exist" in str(refused.value) and "gateway-kek.key" in str(refused.value)
    assert (data / "keys" / "gateway-kek.key").read_bytes() == b"old" * 8
    assert (keys / "gateway-kek.key").read_bytes() == b"new" * 8
