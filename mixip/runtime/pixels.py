"""Image bytes to BGR pixels as a viewer shows them: one decoder for the matcher and the CLI.

OpenCV decodes JPEG, PNG, WebP, TIFF and BMP and turns them upright by their EXIF orientation
tag; pillow-heif (libheif) decodes HEIC/HEIF and applies its rotation and mirroring. So every
box found on these pixels, reported or drawn, is in the orientation the viewer sees.

Call it only after `media.sniff` and a pixel-limit check: it decodes whatever it is given.
"""

from __future__ import annotations

import io

import cv2
import numpy as np

from mixip.runtime.media import Sniffed

HEIF_TYPES = frozenset({"image/heic", "image/heif"})


def decode_upright(data: bytes, sniffed: Sniffed) -> np.ndarray | None:
    """BGR uint8 pixels, upright; None if the data cannot be decoded."""
    if sniffed.content_type in HEIF_TYPES:
        return _decode_heif(data, (sniffed.width or 0) * (sniffed.height or 0))
    try:
        # IMREAD_COLOR applies the EXIF orientation (IMREAD_IGNORE_ORIENTATION would not).
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # e.g. over the decoders' own pixel limit (media.cap_image_decoders)
        return None


def _decode_heif(data: bytes, sniffed_pixels: int) -> np.ndarray | None:
    """libheif's pixels, if the size libheif itself reads is no larger than the one sniffed
    (and checked against the limit): a file it reads otherwise is refused before decoding."""
    import pillow_heif  # imported on first use: most uploads are not HEIF

    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
        width, height = heif.size
        if width * height > sniffed_pixels:
            return None
        pixels = np.asarray(heif)
    except (ValueError, RuntimeError, OSError, SyntaxError):
        return None
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        return None
    code = cv2.COLOR_RGBA2BGR if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR
    return cv2.cvtColor(pixels, code)
