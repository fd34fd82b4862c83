"""`mixip demo --samples DIR` writes the README's photos from the bundled public-domain ones,
owner-only, without starting a mesh."""

from __future__ import annotations

import json
import stat

import cv2

from mixip.cli.main import main


def test_samples_are_the_astronaut_alone_and_beside_grace_hopper(tmp_path, capsys):
    assert main(["--json", "demo", "--samples", str(tmp_path / "samples")]) == 0
    written = json.loads(capsys.readouterr().out)
    face, group = cv2.imread(written["face"]), cv2.imread(written["group"])
    assert face.shape[:2] == (512, 512)  # scikit-image's astronaut, as shipped
    assert group.shape[0] == 600 and group.shape[1] > 1000  # two photos, 600 px tall, side by side
    for path in written.values():
        assert stat.S_IMODE((tmp_path / "samples" / path.rsplit("/", 1)[1]).stat().st_mode) == 0o600
    assert not (tmp_path / "var").exists()  # no mesh, no data directory
