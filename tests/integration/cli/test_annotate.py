"""The annotated image and the video contact sheet the CLI writes for people to look at."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mixip.cli.annotate import (
    CAPTION_SCALE,
    COLOURS,
    FONT,
    LINE_HEIGHT,
    PADDING,
    TILE,
    annotate_image,
    caption_lines,
    contact_sheet,
    with_legend,
)
from tests.support import faces

LONG_ID = "talent:studio-north.casting-2026.background-extra.row-14.seat-07"


def video_face(box: list[int], talent_id: str | None = LONG_ID) -> dict:
    return {
        "label": "cleared" if talent_id else "unknown",
        "talent_id": talent_id,
        "similarity": 0.6123,
        "box": box,
        "ranges": [[0.0, 1.5], [3.0, 4.5], [6.0, 7.5], [9.0, 9.5]],
        "best_frame_seconds": 0.5,
    }


def text_width(line: str) -> int:
    return cv2.getTextSize(line, FONT, CAPTION_SCALE, 1)[0][0]


def test_every_caption_line_fits_the_tile_and_a_long_talent_id_is_wrapped_whole():
    lines = caption_lines(video_face([10, 10, 20, 20]))

    assert all(text_width(line) <= TILE - 2 * PADDING for line in lines)
    assert lines[0] == "CLEARED  0.61"
    assert "".join(lines[1:4]) == LONG_ID  # wrapped over lines, not cut at the tile's edge
    assert lines[1].endswith(".")  # at a separator, not inside a word
    assert lines[4] == "best frame 0.5 s"
    assert lines[5].startswith("0.0-1.5s, 3.0-4.5s") and lines[6] == "9.0-9.5s"


def test_an_overlong_caption_ends_in_an_ellipsis_instead_of_running_off():
    face = video_face([10, 10, 20, 20], talent_id="x" * 128)
    face["ranges"] = [[i, i + 0.5] for i in range(40)]

    lines = caption_lines(face)

    assert all(text_width(line) <= TILE - 2 * PADDING for line in lines)
    assert len(lines) <= 1 + 3 + 1 + 2
    assert lines[3].endswith("...") and lines[-1].endswith("...")


def test_a_small_face_gets_a_tile_with_its_whole_caption(tmp_path):
    # A face about 25 px wide in a 640x360 frame: the crop is enlarged, the caption is not
    # scaled with it, so every line is drawn at the same readable size.
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[100:228, 300:428] = faces.scaled(faces.astronaut(), 0.25)  # 128x128
    video = tmp_path / "clip.mp4"
    faces.make_video(video, [(frame, 1.0)])
    box = [300 + 44, 100 + 16, 23, 28]  # the astronaut's face (178, 63, 90, 113) / 4
    sheet_path = tmp_path / "sheet.png"

    contact_sheet(video, [video_face(box), video_face(box, talent_id=None)], sheet_path)

    sheet = cv2.imread(str(sheet_path))
    lines = caption_lines(video_face(box))
    band = PADDING + LINE_HEIGHT * len(lines) + PADDING
    legend = with_legend(np.zeros((0, 2 * TILE, 3), np.uint8)).shape[0]  # the advisory strip
    assert sheet.shape == (TILE + band + legend, 2 * TILE, 3)
    # the thumbnail is the enlarged crop around the face, not a speck
    assert float(np.mean(sheet[:TILE, :TILE])) > 20
    # every caption line left white text in its row of the band
    for i in range(len(lines)):
        row = sheet[
            TILE + PADDING + LINE_HEIGHT * i : TILE + PADDING + LINE_HEIGHT * (i + 1), :TILE
        ]
        assert np.count_nonzero(np.all(row > 200, axis=2)) > 10, f"line {i} is missing"


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF"])
def test_boxes_are_drawn_on_the_photo_as_the_viewer_sees_it(tmp_path, fmt):
    upright = faces.grace_hopper()
    data = faces.encode_pillow(upright, fmt, orientation=6)  # stored sideways
    box = [183, 120, 170, 213]  # where the face is in the upright photo
    out = tmp_path / "annotated.png"

    annotate_image(
        data,
        [{"label": "cleared", "talent_id": "hopper", "similarity": 0.9, "box": box}],
        out,
    )

    annotated = cv2.imread(str(out))
    legend = with_legend(np.zeros((0, upright.shape[1], 3), np.uint8)).shape[0]
    assert annotated.shape == (upright.shape[0] + legend, *upright.shape[1:])
    x, y, _, h = box
    edge = annotated[y + h // 2, x - 1 : x + 2].astype(int)
    assert np.abs(edge - np.array(COLOURS["cleared"])).sum(axis=1).min() < 40
