"""Decompression bombs: small files (tens of KB) that decode to hundreds of megabytes, one per
format the matcher accepts, built here from a few lines of code (never stored).

Each builder takes the size the decoder would allocate, so a test can build a small one, decode
it and see that the bomb is real, then send a big one and see that it is refused unread.
"""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction

import av
import cv2
import numpy as np
import pillow_heif

_CHUNK = 1 << 20


def _deflated(zeros: int) -> bytes:
    """A zlib stream of `zeros` zero bytes, compressed a megabyte at a time."""
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(bytes(min(_CHUNK, zeros - at))) for at in range(0, zeros, _CHUNK)]
    return b"".join(parts) + compressor.flush()


def tiff_with_duplicate_sizes(width: int, height: int, decoy: tuple[int, int] = (64, 64)) -> bytes:
    """A deflate-compressed 8-bit grey TIFF of `width` x `height` black pixels whose first
    directory lists ImageWidth and ImageLength twice: the real size first (what libtiff uses)
    and `decoy` last (what a parser that keeps the last tag sees)."""
    pixels = _deflated(width * height)
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 1),  # PhotometricInterpretation: black is zero
        (273, 4, 1, 0),  # StripOffsets, set below
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip: one strip
        (279, 4, 1, len(pixels)),  # StripByteCounts
        (256, 4, 1, decoy[0]),
        (257, 4, 1, decoy[1]),
    ]
    directory_size = 2 + 12 * len(entries) + 4
    offset = 8 + directory_size
    entries[5] = (273, 4, 1, offset)
    directory = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", *entry) for entry in entries
    )
    return b"II*\x00" + struct.pack("<I", 8) + directory + struct.pack("<I", 0) + pixels


def jpeg(width: int, height: int) -> bytes:
    """A baseline JPEG of 16x16 black pixels whose frame header claims `width` x `height`:
    libjpeg allocates the claimed size and fills in what the data does not cover (decoded: 3
    bytes a pixel), from a file of under 1 KB."""
    data = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    frame = data.index(b"\xff\xc0")  # SOF0: length, precision, then height and width
    return data[: frame + 5] + struct.pack(">HH", height, width) + data[frame + 9 :]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int) -> bytes:
    """A 1-bit grey PNG of `width` x `height` black pixels (OpenCV decodes it to 3 bytes a
    pixel)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = _deflated((1 + (width + 7) // 8) * height)  # filter byte 0, then the packed row
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


class _Bits:
    """Bits written least significant first, as WebP lossless (VP8L) reads them."""

    def __init__(self) -> None:
        self.value = self.count = 0

    def put(self, value: int, bits: int) -> None:
        self.value |= value << self.count
        self.count += bits

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def webp(width: int, height: int) -> bytes:
    """A lossless WebP of `width` x `height` black pixels in a dozen bytes: every prefix code
    has a single symbol, so each pixel costs zero bits (decoded: 4 bytes a pixel)."""
    bits = _Bits()
    bits.put(0x2F, 8)  # VP8L signature
    bits.put(width - 1, 14)
    bits.put(height - 1, 14)
    bits.put(0, 1)  # no alpha
    bits.put(0, 3)  # version 0
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    for _ in range(5):  # green, red, blue, alpha, distance: a simple code of one symbol, 0
        bits.put(1, 1)  # simple code
        bits.put(0, 1)  # one symbol
        bits.put(0, 1)  # of 1 bit
        bits.put(0, 1)  # symbol 0
    body = bits.bytes().ljust(32, b"\x00")  # OpenCV reads at least 32 bytes of a WebP
    chunk = b"VP8L" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def bmp(width: int, height: int) -> bytes:
    """An 8-bit RLE-compressed BMP of `width` x `height` pixels whose data is only the
    end-of-bitmap code (decoded: 3 bytes a pixel)."""
    palette = bytes(4 * 256)
    data = b"\x00\x01"  # end of bitmap: every pixel is colour 0
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
    return header + info + palette + data


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, body: bytes) -> bytes:
    return _box(kind, struct.pack(">I", version << 24 | flags) + body)


_TILE = 512


def heic(width: int, height: int, extent: tuple[int, int] | None = None) -> bytes:
    """A HEIC whose primary image is a `width` x `height` grid of one 512x512 HEVC tile
    repeated (decoded: 3 bytes a pixel), in a few KB: the tile is coded once and the grid
    refers to it once per cell (libheif takes up to 1000 cells: 10240x10240 at most).
    `extent` makes the grid's declared size (ispe) lie; libheif notices after decoding."""
    tile_file = io.BytesIO()
    tile = np.zeros((_TILE, _TILE, 3), np.uint8)
    pillow_heif.from_bytes(mode="RGB", size=(_TILE, _TILE), data=tile.tobytes()).save(tile_file)
    coded = tile_file.getvalue()
    properties = _child_box(coded, b"ipco")  # hvcC, colr, ispe, pixi of the tile, as encoded
    stream = _child_box(coded, b"mdat")
    columns, rows = -(-width // _TILE), -(-height // _TILE)
    ftyp = _box(b"ftyp", b"heic" + bytes(4) + b"mif1heic")
    hdlr = _full_box(b"hdlr", 0, 0, bytes(4) + b"pict" + bytes(13))
    pitm = _full_box(b"pitm", 0, 0, struct.pack(">H", 2))
    infe = [
        _full_box(b"infe", 2, 1, struct.pack(">HH", 1, 0) + b"hvc1\x00"),  # hidden tile
        _full_box(b"infe", 2, 0, struct.pack(">HH", 2, 0) + b"grid\x00"),
    ]
    iinf = _full_box(b"iinf", 0, 0, struct.pack(">H", 2) + b"".join(infe))
    refs = struct.pack(">HH", 2, columns * rows) + struct.pack(">H", 1) * (columns * rows)
    iref = _full_box(b"iref", 0, 0, _box(b"dimg", refs))
    grid_ispe = _full_box(b"ispe", 0, 0, struct.pack(">II", *(extent or (width, height))))
    ipco = _box(b"ipco", properties + grid_ispe)
    count = len(_boxes_in(properties))
    tile_props = bytes([0x81, *range(2, count + 1)])  # hvcC (essential), then the rest
    ipma = _full_box(
        b"ipma",
        0,
        0,
        struct.pack(">IH", 2, 1)
        + bytes([len(tile_props)])
        + tile_props
        + struct.pack(">H", 2)
        + bytes([1, count + 1]),
    )
    iprp = _box(b"iprp", ipco + ipma)
    grid = struct.pack(">BBBBHH", 0, 0, rows - 1, columns - 1, width, height)
    idat = _box(b"idat", grid)

    def meta(stream_at: int) -> bytes:
        iloc = _full_box(
            b"iloc",
            1,
            0,
            bytes([0x44, 0x40])
            + struct.pack(">H", 2)
            + struct.pack(">HHHIHII", 1, 0, 0, stream_at, 1, 0, len(stream))
            + struct.pack(">HHHIHII", 2, 1, 0, 0, 1, 0, len(grid)),
        )
        return _full_box(b"meta", 0, 0, hdlr + pitm + iloc + iinf + iref + iprp + idat)

    stream_at = len(ftyp) + len(meta(0)) + 8
    return ftyp + meta(stream_at) + _box(b"mdat", stream)


def _boxes_in(data: bytes) -> list[tuple[bytes, bytes]]:
    found, at = [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        found.append((kind, data[at + 8 : at + size]))
        at += size
    return found


def _child_box(heif: bytes, kind: bytes) -> bytes:
    """The body of the first `kind` box, looking inside meta (a full box) and iprp."""
    for found, body in _boxes_in(heif):
        if found == kind:
            return body
        if found in (b"meta", b"iprp"):
            inner = body[4:] if found == b"meta" else body
            try:
                return _child_box(inner, kind)
            except KeyError:
                continue
    raise KeyError(kind)


def webm_growing_mid_stream(width: int, height: int) -> bytes:
    """A 3 s VP8 WebM of 64x64 black frames whose second keyframe (1.2 s in) declares `width`
    x `height`: the container and the first frames say 64x64, and FFmpeg allocates the new
    size when it reaches that keyframe (VP8 may change size at any keyframe)."""
    from tests.support.faces import make_video

    video = make_video(None, [(np.zeros((64, 64, 3), np.uint8), 3.0)], size=(64, 64), codec="VP80")
    keyframes = [at for at in range(len(video)) if video.startswith(b"\x9d\x01\x2a", at)]
    if len(keyframes) < 2:
        raise ValueError("expected VP8 keyframes every 12 frames")
    size = keyframes[1] + 3
    return video[:size] + struct.pack("<HH", width, height) + video[size + 4 :]


def mp4_growing_mid_stream(width: int, height: int) -> bytes:
    """A 1.4 s H.264 MP4 (PyAV's libx264) of 64x64 black frames, then from 1.2 s of `width` x
    `height` ones: its header and first frames say 64x64, and the larger sequence header comes
    in-band with the keyframe at 1.2 s (H.264 may change size at any IDR frame)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        for packet in _h264(64, 64, frames=12, start=0) + _h264(width, height, frames=2, start=12):
            packet.stream, packet.time_base = stream, Fraction(1, 10)
            output.mux(packet)
    return buffer.getvalue()


def _h264(width: int, height: int, *, frames: int, start: int) -> list[av.Packet]:
    """The packets of `frames` black frames at 10 fps from frame `start`, headers in-band."""
    encoder = av.CodecContext.create("libx264", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, 10)
    encoder.options = {"preset": "ultrafast", "x264-params": "repeat-headers=1"}
    black = av.VideoFrame(width, height, "yuv420p")
    for plane, value in zip(black.planes, (16, 128, 128), strict=True):
        plane.update(bytes([value]) * plane.buffer_size)
    packets: list[av.Packet] = []
    for pts in range(frames):
        black.pts = pts
        packets += encoder.encode(black)
    packets += encoder.encode(None)
    for packet in packets:
        packet.pts = (packet.pts or 0) + start
        packet.dts = (packet.dts or 0) + start
    return packets
