"""Face test data from public-domain photos packaged with our dev dependencies (no network).

- `astronaut()`: scikit-image's `data.astronaut()` (Eileen Collins, NASA, public domain).
- `grace_hopper()`: matplotlib's `grace_hopper.jpg` sample (US Navy, public domain).

Everything returns fresh arrays, so a test may modify what it gets.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

# FFmpeg container per fourcc; VP8/VP9 in WebM are checked to work with the venv's OpenCV build.
VIDEO_SUFFIXES = {"mp4v": ".mp4", "VP80": ".webm", "VP90": ".webm"}


def astronaut() -> np.ndarray:
    """A 512x512 BGR portrait with one face."""
    return _astronaut().copy()


def grace_hopper() -> np.ndarray:
    """A 512x600 BGR portrait with one face."""
    return _grace_hopper().copy()


@functools.cache
def _astronaut() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@functools.cache
def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read matplotlib's sample {path}")
    return image


def heads() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut and Grace Hopper as square 300 px crops with the face in the same place
    and at about the same size, so that two people can trade places exactly."""
    astronaut_head = astronaut()[0:260, 95:355]  # face about 90x113 at (178, 63)
    hopper_head = grace_hopper()[16:436, 58:478]  # face about 170x213 at (183, 120)
    return tuple(  # type: ignore[return-value]
        cv2.resize(head, (300, 300), interpolation=cv2.INTER_AREA)
        for head in (astronaut_head, hopper_head)
    )


def scaled(image: np.ndarray, factor: float) -> np.ndarray:
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotated about its centre (counter-clockwise for positive degrees), same size."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def brightened(image: np.ndarray, beta: int) -> np.ndarray:
    """Every channel shifted by `beta`, saturating at 0 and 255."""
    return np.clip(image.astype(np.int16) + beta, 0, 255).astype(np.uint8)


def jpeg_reencoded(image: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(encode(image, ".jpg", quality), np.uint8), cv2.IMREAD_COLOR)


def composite(*images: np.ndarray, height: int = 600) -> np.ndarray:
    """The images side by side, left to right, each resized to `height`."""
    return cv2.hconcat([_to_height(image, height) for image in images])


def _to_height(image: np.ndarray, height: int) -> np.ndarray:
    width = round(image.shape[1] * height / image.shape[0])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def encode(image: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    """`.jpg`, `.png` or `.webp` bytes (quality applies to the lossy two)."""
    params = {
        ".jpg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        ".png": [],
        ".webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
    }[ext]
    ok, encoded = cv2.imencode(ext, image, params)
    if not ok:
        raise ValueError(f"OpenCV cannot encode {ext}")
    return encoded.tobytes()


def encode_pillow(image: np.ndarray, fmt: str, *, orientation: int = 1, quality: int = 90) -> bytes:
    """BGR `image` as Pillow writes `fmt` ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "HEIF" through
    pillow-heif), so that a viewer honouring the EXIF `orientation` tag sees `image` upright:
    the stored pixels are turned the other way (orientations 1, 3, 6 and 8)."""
    from PIL import Image

    stored = image
    if orientation != 1:
        undo = {3: cv2.ROTATE_180, 6: cv2.ROTATE_90_COUNTERCLOCKWISE, 8: cv2.ROTATE_90_CLOCKWISE}
        stored = cv2.rotate(image, undo[orientation])
    picture = Image.fromarray(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB))
    options: dict = {}
    if fmt != "BMP":
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    if fmt in ("JPEG", "WEBP", "HEIF"):
        options["quality"] = quality
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    out = io.BytesIO()
    picture.save(out, fmt, **options)
    return out.getvalue()


def filmed_upright_on_a_phone(image: np.ndarray, seconds: float) -> bytes:
    """An MP4 as a phone held upright records it: frames stored on their side (`image` turned
    90 degrees counter-clockwise, letterboxed in 640x360) and a track matrix in the `tkhd` box
    that tells players to turn them 90 degrees clockwise, so the viewer sees `image` upright."""
    stored = letterboxed(cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE), (640, 360))
    data = make_video(None, [(stored, seconds)])
    at = data.find(b"tkhd")
    if at < 0 or data[at + 4] != 0:
        raise ValueError("expected a version 0 tkhd box")
    matrix = at + 4 + 4 + 20 + 8 + 8  # after the full-box header, times, id, duration, layer...
    clockwise = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    return data[:matrix] + clockwise + data[matrix + 36 :]


def without_duration(webm: bytes) -> bytes:
    """The WebM/MKV with its Segment Info's Duration element blanked (an EBML Void of the same
    size), as a live recorder (a browser's MediaRecorder, a stream dump) writes it."""
    info = webm.find(b"\x15\x49\xa9\x66")
    at = webm.find(b"\x44\x89", info)
    if info < 0 or at < 0 or not webm[at + 2] & 0x80:
        raise ValueError("no Duration element in the Segment Info")
    total = 3 + (webm[at + 2] & 0x7F)
    void = bytes([0xEC, 0x80 | (total - 2)]) + bytes(total - 2)
    return webm[:at] + void + webm[at + total :]


def letterboxed(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image scaled to fit `size` (width, height), centred on black."""
    width, height = size
    factor = min(width / image.shape[1], height / image.shape[0])
    fitted = cv2.resize(
        image,
        (round(image.shape[1] * factor), round(image.shape[0] * factor)),
        interpolation=cv2.INTER_AREA,
    )
    frame = np.zeros((height, width, 3), np.uint8)
    top = (height - fitted.shape[0]) // 2
    left = (width - fitted.shape[1]) // 2
    frame[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return frame


def make_video(
    path: Path | None,
    segments: Sequence[tuple[np.ndarray, float]],
    *,
    fps: int = 10,
    size: tuple[int, int] = (640, 360),
    codec: str = "mp4v",
    suffix: str | None = None,
) -> bytes:
    """The bytes of a video showing each image (letterboxed) for its seconds, in order.

    `codec` "mp4v" writes MP4, "VP80"/"VP90" write WebM; `suffix` ".mkv" writes Matroska.
    Segments may be whole frames already (`size`), e.g. two people side by side. With `path`
    None the file is temporary.
    """
    if path is not None:
        return _write_video(path, segments, fps=fps, size=size, codec=codec)
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / f"video{suffix or VIDEO_SUFFIXES[codec]}"
        return _write_video(target, segments, fps=fps, size=size, codec=codec)


def _write_video(
    path: Path,
    segments: Sequence[tuple[np.ndarray, float]],
    *,
    fps: int,
    size: tuple[int, int],
    codec: str,
) -> bytes:
    writer = cv2.VideoWriter(
        os.fspath(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*codec), fps, size
    )
    if not writer.isOpened():
        raise RuntimeError(f"this OpenCV/FFmpeg build cannot write {codec} to {path}")
    try:
        for image, seconds in segments:
            frame = letterboxed(image, size)
            for _ in range(round(seconds * fps)):
                writer.write(frame)
    finally:
        writer.release()
    return path.read_bytes()
