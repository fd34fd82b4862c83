"""Annotated pictures for people: each face boxed and labelled (green cleared, amber possible,
red unknown); for a video, a contact sheet with one tile per face track. Every picture ends
with a legend saying the labels are advisory: a person decides.

Shared by the CLI (`mixip match --annotate` writes a file) and the gateway (GetMediaPreview
renders in memory and returns a JPEG; no picture is kept). Photos are decoded as the matcher
decodes them (`mixip.runtime.pixels`: upright by their EXIF orientation, HEIC through
pillow-heif), so the reported boxes land on the faces. A face is the CLI's JSON shape: a dict
with "label" (cleared/possible/unknown), "talent_id" (or None), "similarity", "box" [x, y, w, h]
and, for a video, "best_frame_seconds" and "ranges"; an optional "index" prefixes its caption.
Any other label is a label withheld from the caller's role (an uploader's, gateway/role_views.py):
the face is boxed in grey and captioned by its index only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import cv2
import numpy as np

from mixip.runtime.media import MediaError, sniff
from mixip.runtime.pixels import decode_upright

Face = dict[str, Any]
Pixels = np.ndarray[Any, np.dtype[Any]]

# BGR
COLOURS = {"cleared": (60, 180, 60), "possible": (0, 170, 255), "unknown": (50, 50, 220)}
WITHHELD = (150, 150, 150)  # a face whose label the caller's role does not see
TILE = 240  # a contact-sheet thumbnail's side, px
FONT = cv2.FONT_HERSHEY_SIMPLEX
CAPTION_SCALE = 0.5  # the same on every tile, whatever the face's size: readable at TILE
LINE_HEIGHT = 20
PADDING = 6
LEGEND = "Labels are advisory: a person decides whether media is cleared for use."
# A preview's labels are drawn after it is scaled down, at this size or more: readable on a
# thumbnail, where a label drawn on the full picture would shrink to a smudge.
PREVIEW_LABEL_SCALE = 0.42


def caption(face: Face) -> str:
    """A photo's label: "[index ]label[: talent] (similarity)"; "[index ]face" when withheld."""
    who = f": {face['talent_id']}" if face["talent_id"] else ""
    number = f"#{face['index']} " if "index" in face else ""
    if not _labelled(face):
        return f"{number}face"
    return f"{number}{face['label']}{who} ({face['similarity']:.2f})"


def _labelled(face: Face) -> bool:
    return face["label"] in COLOURS


def _colour(face: Face) -> tuple[int, int, int]:
    return COLOURS.get(face["label"], WITHHELD)


Rect = tuple[int, int, int, int]  # left, top, right, bottom


def draw_faces(
    image: Pixels,
    faces: Sequence[Face],
    boxes: Sequence[Sequence[int]],
    scale: float | None = None,
) -> None:
    """Boxes each face and writes its caption next to its box (inside the picture), where it
    covers no other caption: above the box, else below it, else inside its top, else moved
    down past the captions in its way. Boxes first, so no box is drawn over a caption."""
    thickness = max(2, round(max(image.shape[:2]) / 400))
    scale = scale if scale is not None else max(0.5, max(image.shape[:2]) / 1400)
    for face, (x, y, w, h) in zip(faces, boxes, strict=True):
        cv2.rectangle(image, (x, y), (x + w, y + h), _colour(face), thickness)
    placed: list[Rect] = []
    for face, box in zip(faces, boxes, strict=True):
        text = caption(face)
        (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
        rect = _caption_place(image.shape, box, (tw + 8, th + base + 6), placed)
        placed.append(rect)
        left, top, right, bottom = rect
        cv2.rectangle(image, (left, top), (right, bottom), _colour(face), -1)
        cv2.putText(
            image, text, (left + 4, top + th + 3), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA
        )


def _caption_place(
    shape: tuple[int, ...], box: Sequence[int], size: tuple[int, int], placed: list[Rect]
) -> Rect:
    """Where a caption of `size` (width, height) goes for a face at `box` (see draw_faces)."""
    x, y, _, h = box
    width, height = size
    rows, columns = shape[0], shape[1]
    left = max(0, min(x, columns - width))  # a caption near the right edge stays in

    def at(top: int) -> Rect:
        top = max(0, min(top, rows - height))
        return (left, top, left + width, top + height)

    def free(rect: Rect) -> bool:
        return not any(_overlap(rect, other) for other in placed)

    for rect in (at(y - height), at(y + h), at(y)):
        if free(rect):
            return rect
    rect = at(y - height)
    for _ in range(len(placed) + 1):  # each step moves below one caption in the way
        blocking = [other for other in placed if _overlap(rect, other)]
        if not blocking:
            break
        top = max(other[3] for other in blocking) + 1
        rect = (left, top, left + width, top + height)
    return rect


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def decode_photo(data: bytes) -> Pixels:
    """The photo's pixels, upright as its viewer sees them (ValueError if it cannot be)."""
    try:
        image = decode_upright(data, sniff(data))
    except MediaError as exc:
        raise ValueError(f"cannot annotate: {exc}") from None
    if image is None:
        raise ValueError("cannot annotate: the image cannot be decoded")
    return image


def annotated_photo(data: bytes, faces: Sequence[Face]) -> Pixels:
    """The photo at full size, faces boxed and labelled, with the legend."""
    image = decode_photo(data)
    draw_faces(image, faces, [face["box"] for face in faces])
    return with_legend(image)


def preview_photo(
    data: bytes, faces: Sequence[Face], max_side: int, *, legend: bool = True
) -> Pixels:
    """The photo scaled to `max_side`, then boxed and labelled at a readable size; with the
    legend (unless a page shows it once for all its pictures), scaled again if the legend made
    it taller than `max_side`."""
    image = decode_photo(data)
    factor = min(1.0, max_side / max(image.shape[:2]))
    if factor < 1.0:
        size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    scale = max(PREVIEW_LABEL_SCALE, max(image.shape[:2]) / 1400)
    draw_faces(image, faces, [[round(v * factor) for v in face["box"]] for face in faces], scale)
    return fit(with_legend(image) if legend else image, max_side)


def contact_sheet_of(video_path: str, faces: Sequence[Face], *, legend: bool = True) -> Pixels:
    """One tile per track: the frame that decided its label, cropped around the face, with a
    caption band under it at a fixed, readable size (the face's number first); the legend
    below (unless a page shows it once for all its pictures)."""
    capture = cv2.VideoCapture(video_path, cv2.CAP_FFMPEG)
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
    sheet = np.vstack([np.hstack(row) for row in rows])
    return with_legend(sheet) if legend else sheet


def video_contact_sheet(data: bytes, faces: Sequence[Face], *, legend: bool = True) -> Pixels:
    """The contact sheet of a video held in memory: FFmpeg reads it through an anonymous
    in-memory file (memfd), so nothing reaches a disk (as the matcher decodes videos)."""
    with _memory_file(data) as path:
        return contact_sheet_of(path, faces, legend=legend)


@contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    fd = os.memfd_create("mixip-preview", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def fit(image: Pixels, max_side: int) -> Pixels:
    """`image` scaled down so that its longest side is at most `max_side` (never enlarged)."""
    longest = max(image.shape[:2])
    if longest <= max_side:
        return image
    factor = max_side / longest
    size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def jpeg(image: Pixels, quality: int = 85) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode the preview as JPEG")
    return bytes(encoded.tobytes())


def caption_lines(face: Face, width: int = TILE - 2 * PADDING) -> list[str]:
    """A tile's caption, each line fitting `width` px at CAPTION_SCALE: the label and score,
    the talent id (wrapped, never cut mid-tile), the best frame's time and the ranges (only the
    index and the ranges when the label is withheld)."""
    number = f"#{face['index']} " if "index" in face else ""
    if _labelled(face):
        lines = [f"{number}{face['label'].upper()}  {face['similarity']:.2f}"]
        if face["talent_id"]:
            lines += _wrapped(face["talent_id"], width, max_lines=3, separators=" ,.-_:")
        lines.append(f"best frame {face['best_frame_seconds']:.1f} s")
    else:  # withheld: the best frame is the one that decided the label
        lines = [f"{number}FACE"]
    spans = [f"{a:.1f}-{b:.1f}s" for a, b in face.get("ranges", [])]
    lines += _wrapped(", ".join(spans), width, max_lines=2, separators=",") if spans else []
    return lines


def _text_width(text: str) -> int:
    return int(cv2.getTextSize(text, FONT, CAPTION_SCALE, 1)[0][0])


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


def _tile(frame: Pixels, face: Face) -> Pixels:
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
    colour = _colour(face)
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
    """`text` in whole words, in lines that fit `width` pixels at `scale` (the legend's scale
    follows the image's width; captions use `_wrapped` at one fixed scale)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        fits = cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width
        if lines and fits:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def with_legend(image: Pixels) -> Pixels:
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


def _pad(tile: Pixels, height: int) -> Pixels:
    if tile.shape[0] == height:
        return tile
    return np.vstack([tile, np.zeros((height - tile.shape[0], *tile.shape[1:]), np.uint8)])
