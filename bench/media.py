"""Benchmark media made from the two public-domain faces packaged with our dev dependencies
(scikit-image's astronaut, matplotlib's Grace Hopper): a ~0.3 MP one-face photo (the size of
most photos people send), a 1080p one-face photo, a 4K ten-face group photo and a 720p video.
Deterministic, offline, made once per run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

# The same packaged faces the test suite uses (one loader for both).
from tests.support.faces import astronaut, encode, grace_hopper

JPEG_QUALITY = 90


def jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    return encode(image, ".jpg", quality)


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to fit (width, height), centred on a blurred, stretched copy of itself (a
    busy background, so the JPEG is the size a real photo would be)."""
    background = cv2.GaussianBlur(cv2.resize(image, (width, height)), (0, 0), 25)
    factor = min(width / image.shape[1], height / image.shape[0])
    fitted = cv2.resize(
        image,
        (round(image.shape[1] * factor), round(image.shape[0] * factor)),
        interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA,
    )
    top = (height - fitted.shape[0]) // 2
    left = (width - fitted.shape[1]) // 2
    background[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return background


def photo_03mp() -> np.ndarray:
    """640x480 (0.31 MP), Grace Hopper's face about 150 px wide: a small real-world photo."""
    return _fit(grace_hopper(), 640, 480)


def photo_1080p() -> np.ndarray:
    """1920x1080, the astronaut's face about 200 px wide."""
    return _fit(astronaut(), 1920, 1080)


def _variant(image: np.ndarray, index: int) -> np.ndarray:
    """Ten distinct-looking shots of two people: mirrored, brighter or darker, re-framed."""
    out = cv2.flip(image, 1) if index % 2 else image.copy()
    beta = (-30, -10, 0, 15, 30)[index % 5]
    out = np.clip(out.astype(np.int16) + beta, 0, 255).astype(np.uint8)
    crop = (index // 2) % 3 * 16
    return out[crop : out.shape[0] - crop, crop : out.shape[1] - crop]


def group_4k() -> np.ndarray:
    """3840x2160, ten faces (five of each person) in a 5x2 grid, each 200-300 px wide."""
    cell_w, cell_h = 3840 // 5, 2160 // 2
    rows = []
    for row in range(2):
        cells = []
        for col in range(5):
            index = row * 5 + col
            person = astronaut() if index % 2 == 0 else grace_hopper()
            cells.append(_fit(_variant(person, index), cell_w, cell_h))
        rows.append(np.hstack(cells))
    return np.vstack(rows)


def video_720p(seconds: float, fps: int = 25) -> bytes:
    """MP4 (mp4v) 1280x720 at `fps`: a slow pan across both faces, so every frame differs (the
    decoder and the detector do real work) and faces enter and leave the frame."""
    width, height = 1280, 720
    strip = np.hstack([_fit(astronaut(), 960, height), _fit(grace_hopper(), 960, height)])
    frames = round(seconds * fps)
    span = strip.shape[1] - width
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.mp4"
        writer = cv2.VideoWriter(
            os.fspath(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
        )
        if not writer.isOpened():
            raise RuntimeError("this OpenCV/FFmpeg build cannot write mp4v")
        try:
            for i in range(frames):
                # there and back once: x goes 0 -> span -> 0
                phase = i / max(1, frames - 1)
                x = round(span * (1 - abs(2 * phase - 1)))
                writer.write(np.ascontiguousarray(strip[:, x : x + width]))
        finally:
            writer.release()
        return path.read_bytes()
