"""Annotated images for people: each face boxed and labelled (green cleared, amber possible,
red unknown); for a video, a contact sheet with one tile per face track. Every image ends with
a legend saying the labels are advisory: a person decides."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# BGR
COLOURS = {"cleared": (60, 180, 60), "possible": (0, 170, 255), "unknown": (50, 50, 220)}
TILE = 220
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
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    top = max(0, y - th - base - 6)
    cv2.rectangle(image, (x, top), (x + tw + 8, top + th + base + 6), colour, -1)
    cv2.putText(
        image,
        text,
        (x + 4, top + th + 3),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )


def annotate_image(data: bytes, faces: list[dict], out: Path) -> None:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    for face in faces:
        _draw(image, face, face["box"])
    _write(out, image)


def contact_sheet(video_path: Path, faces: list[dict], out: Path) -> None:
    """One tile per track: its best frame, cropped around the face, labelled."""
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
    columns = min(4, len(tiles))
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    rows[-1] += [np.zeros_like(tiles[0])] * (columns - len(rows[-1]))
    _write(out, np.vstack([np.hstack(row) for row in rows]))


def _tile(frame: np.ndarray, face: dict) -> np.ndarray:
    x, y, w, h = face["box"]
    margin = max(w, h) // 2
    top, left = max(0, y - margin), max(0, x - margin)
    crop = frame[top : y + h + margin, left : x + w + margin].copy()
    _draw(crop, face, [x - left, y - top, w, h])
    scale = TILE / max(crop.shape[:2])
    crop = cv2.resize(
        crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    )
    tile = np.zeros((TILE + 24, TILE, 3), np.uint8)
    tile[: crop.shape[0], : crop.shape[1]] = crop
    spans = ", ".join(f"{a:.1f}-{b:.1f}s" for a, b in face.get("ranges", []))
    cv2.putText(
        tile,
        spans[:40],
        (4, TILE + 17),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (230, 230, 230),
        1,
        cv2.LINE_AA,
    )
    return tile


def _wrapped(text: str, width: int, scale: float) -> list[str]:
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
    notice = _wrapped(LEGEND, width - 12, scale)
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


def _write(out: Path, image: np.ndarray) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    image = with_legend(image)
    if not cv2.imwrite(str(out), image):
        raise ValueError(f"cannot write {out} (use a .png or .jpg name)")
