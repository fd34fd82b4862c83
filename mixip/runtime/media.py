"""What a piece of media really is, from its magic bytes, and its pixel size from its header.

Used by the gateway (to refuse bad uploads before storing them) and the matcher (before
decoding). Reading dimensions from the header lets us refuse decompression bombs without
decoding a single pixel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

IMAGE, VIDEO = "image", "video"


class MediaError(ValueError):
    """The bytes are not media we accept; the message says why, for the caller."""


@dataclass(frozen=True)
class Sniffed:
    kind: str  # IMAGE or VIDEO
    content_type: str
    width: int | None = None  # images only (videos: from the decoder)
    height: int | None = None


def sniff(data: bytes) -> Sniffed:
    """The media type from magic bytes; for images, their dimensions from the header."""
    if not data:
        raise MediaError("empty media (0 bytes)")
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        size = _jpeg_size(data)
        if data.rfind(b"\xff\xd9") < 4:
            raise MediaError("truncated JPEG (no end-of-image marker)")
        return Sniffed(IMAGE, "image/jpeg", *size)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        size = _png_size(data)
        if data.rfind(b"IEND") < 0:
            raise MediaError("truncated PNG (no IEND chunk)")
        return Sniffed(IMAGE, "image/png", *size)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        size = _webp_size(data)
        if int.from_bytes(data[4:8], "little") + 8 > len(data):
            raise MediaError("truncated WebP (shorter than its RIFF header says)")
        return Sniffed(IMAGE, "image/webp", *size)
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return Sniffed(VIDEO, "video/quicktime" if brand == b"qt  " else "video/mp4")
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return Sniffed(VIDEO, "video/quicktime")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed(VIDEO, "video/webm")
    if head.startswith((b"GIF87a", b"GIF89a")):
        raise MediaError("GIF is not supported; send JPEG, PNG, WebP, MP4, MOV or WebM")
    if head.startswith((b"II*\x00", b"MM\x00*", b"BM")):
        raise MediaError("TIFF/BMP is not supported; send JPEG, PNG, WebP, MP4, MOV or WebM")
    raise MediaError("not a supported image or video (JPEG, PNG, WebP, MP4, MOV, WebM)")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise MediaError("truncated or corrupt PNG header")
    width, height = struct.unpack(">II", data[16:24])
    return _checked(width, height, "PNG")


# Start-of-frame markers carry the size (all SOFn except DHT C4, JPG C8, DAC CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise MediaError("corrupt JPEG: bad marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise MediaError("corrupt JPEG: bad segment length")
        if marker in _SOF:
            if pos + 9 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return _checked(width, height, "JPEG")
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise MediaError("truncated or corrupt JPEG: no frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        if data[23:26] != b"\x9d\x01\x2a":
            raise MediaError("corrupt WebP (VP8) header")
        width, height = struct.unpack("<HH", data[26:30])
        return _checked(width & 0x3FFF, height & 0x3FFF, "WebP")
    if chunk == b"VP8L" and len(data) >= 25:
        if data[20] != 0x2F:
            raise MediaError("corrupt WebP (VP8L) header")
        bits = int.from_bytes(data[21:25], "little")
        return _checked((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, "WebP")
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return _checked(width, height, "WebP")
    raise MediaError("truncated or corrupt WebP header")


def _checked(width: int, height: int, name: str) -> tuple[int, int]:
    if width <= 0 or height <= 0:
        raise MediaError(f"corrupt {name}: zero width or height")
    return width, height
