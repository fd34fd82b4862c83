"""The annotated image and the video contact sheet `mixip match --annotate` writes: the drawing
is shared with the gateway's previews (`mixip.runtime.annotate`); this module writes files,
mode 0600 (a label on a face is biometric data: `mixip.runtime.files`)."""

from __future__ import annotations

from pathlib import Path

import cv2

from mixip.runtime.annotate import (
    CAPTION_SCALE,
    COLOURS,
    FONT,
    LINE_HEIGHT,
    PADDING,
    TILE,
    Face,
    Pixels,
    annotated_photo,
    caption_lines,
    contact_sheet_of,
    with_legend,
)
from mixip.runtime.files import write_private

__all__ = [
    "CAPTION_SCALE",
    "COLOURS",
    "FONT",
    "LINE_HEIGHT",
    "PADDING",
    "TILE",
    "annotate_image",
    "caption_lines",
    "contact_sheet",
    "with_legend",
    "write_image",
]


def annotate_image(data: bytes, faces: list[Face], out: Path) -> None:
    write_image(out, annotated_photo(data, numbered(faces)))


def contact_sheet(video_path: Path, faces: list[Face], out: Path) -> None:
    write_image(out, contact_sheet_of(str(video_path), numbered(faces)))


def numbered(faces: list[Face]) -> list[Face]:
    """The faces with their numbers (their order in the results): the FACE `mixip review`
    takes, drawn on every face."""
    return [{"index": i} | face for i, face in enumerate(faces)]


def write_image(out: Path, image: Pixels) -> None:
    """Encodes `image` in the format its name says (.png, .jpg, ...) and writes it 0600."""
    try:
        ok, encoded = cv2.imencode(out.suffix or ".", image)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"cannot write {out} (use a .png or .jpg name)")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_private(out, encoded.tobytes())
