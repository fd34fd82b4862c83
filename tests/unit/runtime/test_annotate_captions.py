"""Captions on annotated pictures: each face carries its number, and captions never cover one
another, however close the faces are."""

from __future__ import annotations

from mixip.cli.annotate import numbered
from mixip.runtime.annotate import _caption_place, _overlap, caption


def photo_face(label: str, box: list[int]) -> dict:
    return {"label": label, "talent_id": None, "similarity": 0.41, "box": box}


def test_every_face_is_numbered_in_the_order_of_its_results():
    faces = numbered([photo_face("possible", [0, 0, 9, 9]), photo_face("unknown", [9, 9, 9, 9])])
    assert [caption(f) for f in faces] == ["#0 possible (0.41)", "#1 unknown (0.41)"]
    assert caption({**faces[0], "label": "withheld"}) == "#0 face"  # an uploader's view


def test_captions_of_faces_side_by_side_do_not_overlap():
    shape = (240, 320, 3)
    boxes = [[40 + 30 * i, 80 + 5 * i, 28, 28] for i in range(5)]  # five crowded faces
    placed: list[tuple[int, int, int, int]] = []
    for box in boxes:
        rect = _caption_place(shape, box, (120, 16), placed)
        assert not any(_overlap(rect, other) for other in placed)
        assert rect[0] >= 0 and rect[2] <= shape[1] and rect[1] >= 0
        placed.append(rect)


def test_a_caption_sits_above_its_face_when_there_is_room():
    rect = _caption_place((240, 320, 3), [100, 100, 40, 40], (80, 16), [])
    assert rect == (100, 84, 180, 100)
