"""Still images in and out of the matcher: bytes to BGR pixels, and back to JPEG.

Every upload is sniffed from its magic bytes and its pixel size is checked from the header
before a single pixel is decoded, so a decompression bomb costs us a few header bytes, not
gigabytes of memory.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from mixip.runtime.media import IMAGE, MediaError, Sniffed, sniff
from mixip.runtime.pixels import decode_upright


def decode_image(data: bytes, *, max_pixels: int) -> tuple[np.ndarray, Sniffed]:
    """The upright BGR uint8 pixels of an uploaded JPEG, PNG, WebP, HEIC/HEIF, TIFF or BMP, and
    what it was sniffed as, with the width and height the viewer sees (after any EXIF or HEIF
    rotation, so they agree with the boxes found on the pixels).

    Raises `MediaError` (safe to show to the caller) for anything that is not an image we
    accept, is larger than `max_pixels`, or cannot be decoded.
    """
    sniffed = sniff(data)
    if sniffed.kind != IMAGE:
        raise MediaError("expected an image, got a video")
    # sniff() always reads an image's size from its header (or raises).
    check_pixels(sniffed.width or 0, sniffed.height or 0, max_pixels=max_pixels, what="image")
    image = decode_upright(data, sniffed)
    if image is None:
        raise MediaError(f"corrupt image: cannot decode the {sniffed.content_type} data")
    height, width = image.shape[:2]
    if width * height > (sniffed.width or 0) * (sniffed.height or 0):
        raise MediaError(f"corrupt image: the {sniffed.content_type} data is larger than declared")
    return image, dataclasses.replace(sniffed, width=width, height=height)


def check_pixels(width: int, height: int, *, max_pixels: int, what: str) -> None:
    """Refuses media whose frames are larger than `max_pixels` (a memory bound, not taste)."""
    pixels = width * height
    if pixels > max_pixels:
        raise MediaError(
            f"{what} is {width}x{height} ({pixels / 1e6:.1f} MP); "
            f"the limit is {max_pixels / 1e6:.1f} MP"
        )


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a BGR image, e.g. a face crop for an engine that searches by image."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} {image.dtype} array as JPEG")
    return encoded.tobytes()
