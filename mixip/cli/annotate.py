"""The annotated image and the video contact sheet `mixip match --annotate` writes: the drawing
is shared with the gateway's previews (`mixip.runtime.annotate`); this module writes files."""

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
]


def annotate_image(data: bytes, faces: list[Face], out: Path) -> None:
    _write(out, annotated_photo(data, faces))


def contact_sheet(video_path: Path, faces: list[Face], out: Path) -> None:
    _write(out, contact_sheet_of(str(video_path), faces))


def _write(out: Path, image: Pixels) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), image):
        raise ValueError(f"cannot write {out} (use a .png or .jpg name)")
