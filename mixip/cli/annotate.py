"""Annotated images for people: each face boxed and labelled (green cleared, amber possible,
red unknown); for a video, a contact sheet with one tile per face track. Every image ends with
a legend saying the labels are advisory: a person decides.

Photos are decoded as the matcher decodes them (`mixip.runtime.pixels`: upright by their EXIF
orientation, HEIC through pillow-heif), so the reported boxes land on the faces.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mixip.runtime.media import MediaError, sniff
from mixip.runtime.pixels import decode_upright

# BGR
COLOURS = {"cleared": (60, 180, 60), "possible": (0, 170, 255), "unknown": (50, 50, 220)}
TILE = 240  # a contact-sheet thumbnail's side, px
FONT = cv2.FONT_HERSHEY_SIMPLEX
CAPTION_SCALE = 0.5  # the same on every tile, whatever the face's size: readable at TILE
LINE_HEIGHT = 20
PADDING = 6
LEGEND = "Labels are advisory: a person decides whether media is cleared for use."


def _caption(face: dict) -> str:
    who = f": {face['talent_id']}" if face["talent_id"] else ""
    return f"{face['label']}{who} ({face['similarity']:.2f})"


def _draw(image: np.ndarray, face: dict, box: list[int]) -> None:
    x, y, w, h = box
    colour = COLOURS[face["label"]]
    thickness = max(2, round(max(image.shape[:2]) / 400))
    cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
    scale = max(0.5, max(image.shape[:2]) / 1400)
    text = _caption(face)
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    top = max(0, y - th - base - 6)
    cv2.rectangle(image, (x, top), (x + tw + 8, top + th + base + 6), colour, -1)
    cv2.putText(image, text, (x + 4, top + th + 3), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def annotate_image(data: bytes, faces: list[dict], out: Path) -> None:
    try:
        image = decode_upright(data, sniff(data))
    except MediaError as exc:
        raise ValueError(f"cannot annotate: {exc}") from None
    if image is None:
        raise ValueError("cannot annotate: the image cannot be decoded")
    for face in faces:
        _draw(image, face, face["box"])
    _write(out, image)


def contact_sheet(video_path: Path, faces: list[dict], out: Path) -> None:
    """One tile per track: the frame that decided its label, cropped around the face, with a
    caption band under it at a fixed, readable size."""
    capture = cv2.VideoCapture(str(video_path), cv2.CAP_FFMPEG)
    tiles = []
    try:
        for face in faces:
            capture.set(cv2.CAP_PROP_POS_MSEC, face["best_frame_seconds"] * 1000)
            ok, frame = capture.read()
            if not ok:
                frame = np.zeros((TILE, TILE, 3), np.uint8)
            tiles.append(_tile(frame, face))
    finally:
        capture.release()
    if not tiles:
        tiles = [np.zeros((TILE, TILE, 3), np.uint8)]
    height = max(tile.shape[0] for tile in tiles)
    tiles = [_pad(tile, height) for tile in tiles]
    columns = min(4, len(tiles))
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    rows[-1] += [np.zeros_like(tiles[0])] * (columns - len(rows[-1]))
    _write(out, np.vstack([np.hstack(row) for row in rows]))


def caption_lines(face: dict, width: int = TILE - 2 * PADDING) -> list[str]:
    """A tile's caption, each line fitting `width` px at CAPTION_SCALE: the label and score,
    the talent id (wrapped, never cut mid-tile), the best frame's time and the ranges."""
    lines = [f"{face['label'].upper()}  {face['similarity']:.2f}"]
    if face["talent_id"]:
        lines += _wrapped(face["talent_id"], width, max_lines=3, separators=" ,.-_:")
    lines.append(f"best frame {face['best_frame_seconds']:.1f} s")
    spans = [f"{a:.1f}-{b:.1f}s" for a, b in face.get("ranges", [])]
    lines += _wrapped(", ".join(spans), width, max_lines=2, separators=",") if spans else []
    return lines


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, FONT, CAPTION_SCALE, 1)[0][0]


def _wrapped(text: str, width: int, *, max_lines: int, separators: str) -> list[str]:
    """`text` broken into lines that fit `width` (after a separator where one is not too far
    back), at most `max_lines`, the last ending in an ellipsis if anything was left out."""
    lines: list[str] = []
    rest = text
    while rest and len(lines) < max_lines:
        end = len(rest)
        while end > 1 and _text_width(rest[:end]) > width:
            end -= 1
        if end < len(rest):  # break after a separator rather than inside a word or number
            separator = max(rest.rfind(c, 0, end) for c in separators)
            end = separator + 1 if separator >= end // 2 else end
        lines.append(rest[:end].rstrip(", "))
        rest = rest[end:].lstrip(", ")
    if rest:
        last = lines[-1]
        while len(last) > 1 and _text_width(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def _tile(frame: np.ndarray, face: dict) -> np.ndarray:
    x, y, w, h = face["box"]
    margin = max(w, h) // 2
    top, left = max(0, y - margin), max(0, x - margin)
    crop = frame[top : y + h + margin, left : x + w + margin]
    if crop.size == 0:
        crop = np.zeros((TILE, TILE, 3), np.uint8)
    scale = TILE / max(crop.shape[:2])  # small faces are enlarged, large ones reduced
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    thumbnail = cv2.resize(
        crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    )
    colour = COLOURS[face["label"]]
    box = [round(v * scale) for v in (x - left, y - top, w, h)]
    cv2.rectangle(thumbnail, (box[0], box[1]), (box[0] + box[2], box[1] + box[3]), colour, 2)
    lines = caption_lines(face)
    band = PADDING + LINE_HEIGHT * len(lines) + PADDING
    tile = np.zeros((TILE + band, TILE, 3), np.uint8)
    tile[: thumbnail.shape[0], : thumbnail.shape[1]] = thumbnail
    cv2.rectangle(tile, (0, TILE), (TILE - 1, TILE + LINE_HEIGHT + PADDING // 2), colour, -1)
    for i, line in enumerate(lines):
        baseline = TILE + PADDING + LINE_HEIGHT * i + 12
        cv2.putText(
            tile, line, (PADDING, baseline), FONT, CAPTION_SCALE, (255, 255, 255), 1, cv2.LINE_AA
        )
    return tile


def _legend_lines(text: str, width: int, scale: float) -> list[str]:
    """`text` in lines that fit `width` pixels at `scale`."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        fits = cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width
        if lines and fits:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def with_legend(image: np.ndarray) -> np.ndarray:
    """The image with a dark strip below it: the colour key and the advisory notice."""
    width = image.shape[1]
    scale = max(0.4, min(1.0, width / 1400))
    line = round(26 * scale) + 8
    notice = _legend_lines(LEGEND, width - 12, scale)
    strip = np.full((line * (1 + len(notice)) + 8, width, 3), 32, np.uint8)
    x = 6
    for name, colour in COLOURS.items():
        cv2.rectangle(strip, (x, 6), (x + line - 10, line - 4), colour, -1)
        x += line - 4
        cv2.putText(strip, name, (x, line - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (235,) * 3, 1)
        x += cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] + 12
    for row, text in enumerate(notice, start=2):
        cv2.putText(
            strip,
            text,
            (6, row * line - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return np.vstack([image, strip])


def _pad(tile: np.ndarray, height: int) -> np.ndarray:
    if tile.shape[0] == height:
        return tile
    return np.vstack([tile, np.zeros((height - tile.shape[0], *tile.shape[1:]), np.uint8)])


def _write(out: Path, image: np.ndarray) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    image = with_legend(image)
    if not cv2.imwrite(str(out), image):
        raise ValueError(f"cannot write {out} (use a .png or .jpg name)")
