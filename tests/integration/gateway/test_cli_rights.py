"""The command line's rights and key commands against a real gateway (in-process `mixip`), and
its fail-closed edges: no plaintext to a remote gateway, no export over an existing file,
labels said to be advisory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from mixip.cli.annotate import annotate_image
from mixip.cli.main import main
from mixip.runtime.addresses import is_loopback
from tests.support import faces
from tests.support.umask import umask


def test_faces_list_and_delete_correct_one_enrollment(cli, gateway, studio):
    from tests.support.gateway_calls import enroll

    _, meta = studio
    wrong = enroll(gateway, meta, "astronaut", faces.grace_hopper()).face.face_id
    code, out, _ = cli("faces", "list", "astronaut", "--json")
    listed = json.loads(out)
    assert code == 0 and wrong in {f["face_id"] for f in listed["faces"]}
    assert len(listed["faces"]) == 2
    code, out, _ = cli("faces", "delete", "astronaut", wrong, "--json")
    assert code == 0 and json.loads(out)["deleted"]["face_id"] == wrong
    code, out, _ = cli("faces", "list", "astronaut")
    assert code == 0 and "1 enrolled face(s)" in out and wrong not in out
    code, _, err = cli("faces", "delete", "astronaut", wrong)
    assert code == 1 and "not found" in err


def test_keys_list_create_revoke_with_json(cli, studio):
    account, _ = studio
    code, out, _ = cli("keys", "create", account, "--json")
    created = json.loads(out)
    assert code == 0 and created["api_key"].startswith(f"mixip_{created['api_key_id']}_")
    code, out, _ = cli("keys", "list", account, "--json")
    keys = json.loads(out)["api_keys"]
    assert code == 0 and len(keys) == 2
    assert all(
        set(k) == {"api_key_id", "account_id", "prefix", "created_at", "revoked_at"} for k in keys
    )
    secret = created["api_key"].split("_", 2)[2]
    assert secret not in out
    code, out, _ = cli("keys", "revoke", created["api_key_id"], "--json")
    assert code == 0 and json.loads(out)["revoked_at"]
    code, out, _ = cli("keys", "list", account)
    assert "revoked" in out and "live" in out and secret not in out


def test_export_refuses_to_overwrite_unless_forced_and_writes_0600(cli, tmp_path):
    target = tmp_path / "export.json"
    target.write_text("precious\n")
    code, _, err = cli("export", "astronaut", "-o", str(target))
    assert code == 2 and "exists; pass --force" in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "precious\n"
    os.chmod(target, 0o644)
    code, _, _ = cli("export", "astronaut", "-o", str(target), "--force")
    assert code == 0 and json.loads(target.read_text())["talent_id"] == "astronaut"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.json"
    assert cli("export", "astronaut", "-o", str(fresh))[0] == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_match_says_labels_are_advisory_in_text_and_in_the_annotated_image(cli, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(faces.encode(faces.astronaut(), ".jpg"))
    annotated = tmp_path / "annotated.png"
    code, out, _ = cli("match", str(photo), "--project", "film-1", "--annotate", str(annotated))
    assert code == 0 and "CLEARED" in out
    assert "labels are advisory" in out
    image = cv2.imread(str(annotated))
    assert image.shape[0] > faces.astronaut().shape[0]  # the legend strip below the photo


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_every_file_the_command_line_writes_is_owner_only_under_a_permissive_umask(
    cli, tmp_path, mask
):
    """An annotated image names a face (#6), an export and a preview are personal data: each
    is written 0600 whatever the umask."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(faces.encode(faces.astronaut(), ".jpg"))
    written = [tmp_path / "annotated.png", tmp_path / "annotated.jpg"]
    with umask(mask):
        for target in written:
            code, out, _ = cli(
                "match", str(photo), "--project", "film-1", "--annotate", str(target), "--json"
            )
            assert code == 0
        media_id = json.loads(out)["media_id"]
        written += [tmp_path / "export.json", tmp_path / "preview.jpg"]
        assert cli("export", "astronaut", "-o", str(written[2]))[0] == 0
        assert cli("media", "preview", media_id, "-o", str(written[3]))[0] == 0
    for target in written:
        assert stat.S_IMODE(target.stat().st_mode) == 0o600, target
    assert cv2.imread(str(written[0])) is not None and cv2.imread(str(written[1])) is not None


def test_the_annotated_legend_is_drawn_below_the_image(tmp_path):
    image = np.zeros((120, 320, 3), np.uint8)
    _, data = cv2.imencode(".png", image)
    out = tmp_path / "a.png"
    annotate_image(data.tobytes(), [], out)
    written = cv2.imread(str(out))
    assert written.shape[0] > 120 and written.shape[1] == 320
    assert written[:120].max() == 0 and written[120:].max() > 200  # text drawn in the strip


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "address", ["10.20.30.40:50051", "127.attacker.example:50051", "127.0.0.1.nip.io:1"]
)
def test_the_cli_refuses_plaintext_to_a_remote_gateway(
    tmp_path, monkeypatch, capsys, backend, address
):
    monkeypatch.setenv("MIXIP_API_KEY", "mixip_0123456789abcdef_" + "a" * 43)
    monkeypatch.delenv("MIXIP_GATEWAY_CA", raising=False)
    code = main(["--data-dir", str(tmp_path), "--gateway", address, "audit", "verify"])
    err = capsys.readouterr().err
    assert code == 2 and f"refusing plaintext to {address}" in err and "--insecure" in err
    assert is_loopback("127.0.0.1:1") and is_loopback("localhost:5") and is_loopback("[::1]:5")
    assert not is_loopback("gateway.example.com:443") and not is_loopback("10.0.0.1:1")


def test_a_lost_dev_key_is_replaced_and_revoked_never_duplicated(gateway, monkeypatch, tmp_path):
    """`mixip up`'s dev account is created with a fixed request id: after its key file is lost
    the replay mints no key, so a new one is made and the lost one revoked."""
    from mixip.cli.dev_mesh import ensure_dev_account
    from mixip.gateway.v1 import admin_pb2
    from mixip.runtime.connection import Connection

    monkeypatch.setenv("MIXIP_ADMIN_KEY", gateway.app.admin_key)
    conn = Connection(tmp_path / "data", gateway.address)
    (tmp_path / "data").mkdir()
    key_file = Path(ensure_dev_account(conn))
    first = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_file.unlink()
    second = Path(ensure_dev_account(conn)).read_text().strip()
    assert second.startswith("mixip_") and second != first
    accounts = gateway.admin.ListAccounts(
        admin_pb2.ListAccountsRequest(), metadata=gateway.admin_metadata()
    ).accounts
    dev = [a for a in accounts if a.name == "dev"]
    assert len(dev) == 1
    keys = gateway.admin.ListApiKeys(
        admin_pb2.ListApiKeysRequest(account_id=dev[0].account_id),
        metadata=gateway.admin_metadata(),
    ).api_keys
    live = [k.api_key_id for k in keys if not k.HasField("revoked_at")]
    assert live == [second.split("_")[1]] and len(keys) == 2
