"""What a piece of media really is, from its magic bytes, and its pixel size from its header.

Used by the gateway (to refuse bad uploads before storing them) and the matcher (before
decoding). Reading dimensions from the header lets us refuse decompression bombs without
decoding a single pixel, so each reader here reads the size the decoder will use, and refuses a
header that two decoders could read two ways. Behind it, `cap_image_decoders` has OpenCV's
decoders enforce the same limit themselves.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

from mixip.runtime.limits import MAX_PIXELS

IMAGE, VIDEO = "image", "video"


class MediaError(ValueError):
    """The bytes are not media we accept; the message says why, for the caller."""


@dataclass(frozen=True)
class Sniffed:
    kind: str  # IMAGE or VIDEO
    content_type: str
    width: int | None = None  # images only (videos: from the decoder)
    height: int | None = None


# ISO-BMFF brands of still HEIF images (HEVC-coded, what phones write); AVIF is not decoded.
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}
SUPPORTED = "JPEG, PNG, WebP, HEIC/HEIF, TIFF, BMP, MP4, MOV, WebM or MKV"


def sniff(data: bytes) -> Sniffed:
    """The media type from magic bytes; for images, their dimensions from the header.

    Image dimensions are the stored ones: an EXIF orientation or HEIF rotation may swap them
    for the viewer, which changes nothing for a pixel-count limit.
    """
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
        brands = _ftyp_brands(data)
        if brands[0] in _HEIF_BRANDS and not (brands[0] == b"mif1" and _AVIF_BRANDS & set(brands)):
            kind = "image/heic" if brands[0].startswith(b"hei") else "image/heif"
            return Sniffed(IMAGE, kind, *_heif_size(data))
        if _AVIF_BRANDS & set(brands):
            raise MediaError(f"AVIF is not supported; send {SUPPORTED}")
        return Sniffed(VIDEO, "video/quicktime" if brands[0] == b"qt  " else "video/mp4")
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return Sniffed(VIDEO, "video/quicktime")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        # Matroska's EBML header names its DocType; WebM is the Matroska subset browsers write.
        matroska = _ebml_doctype(data) == b"matroska"
        return Sniffed(VIDEO, "video/x-matroska" if matroska else "video/webm")
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return Sniffed(IMAGE, "image/tiff", *_tiff_size(data))
    if head.startswith((b"II+\x00", b"MM\x00+")):
        raise MediaError(f"BigTIFF is not supported; send {SUPPORTED}")
    if head.startswith(b"BM"):
        size = _bmp_size(data)
        if int.from_bytes(data[2:6], "little") > len(data):
            raise MediaError("truncated BMP (shorter than its header says)")
        return Sniffed(IMAGE, "image/bmp", *size)
    if head.startswith((b"GIF87a", b"GIF89a")):
        raise MediaError(f"GIF is not supported; send {SUPPORTED}")
    raise MediaError(f"not a supported image or video ({SUPPORTED})")


def cap_image_decoders(environ: MutableMapping[str, str] = os.environ) -> None:
    """Has OpenCV's image decoders refuse, by themselves, an image over the pixel limit
    (MIXIP_MATCHER_MAX_PIXELS, else `MAX_PIXELS`), before allocating it: the lock behind
    `sniff`. OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS once, when cv2 is loaded, so every service
    that decodes calls this in its `__main__`, before importing anything that imports cv2."""
    if "cv2" in sys.modules:
        raise RuntimeError("cap_image_decoders() must run before cv2 is imported")
    try:
        limit = int(environ.get("MIXIP_MATCHER_MAX_PIXELS", "").strip() or MAX_PIXELS)
    except ValueError:  # the service's settings refuse it at start, naming the variable
        limit = MAX_PIXELS
    environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(max(limit, 1))


def _ftyp_brands(data: bytes) -> list[bytes]:
    """The major brand, then the compatible brands, of an ISO-BMFF `ftyp` box."""
    size = int.from_bytes(data[0:4], "big")
    if size < 16 or size > len(data):
        raise MediaError("truncated or corrupt ISO media header (ftyp)")
    compatible = [data[i : i + 4] for i in range(16, size - 3, 4)]
    return [data[8:12], *compatible]


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """`(type, body start, body end)` of the ISO-BMFF boxes in `data[start:end]`."""
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = pos + 8
        if size == 1:  # a 64-bit size follows the type
            if pos + 16 > end:
                raise MediaError("truncated or corrupt HEIF header")
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
            body = pos + 16
        elif size == 0:  # to the end of the enclosing box
            size = end - pos
        if size < body - pos or pos + size > end:
            raise MediaError("truncated or corrupt HEIF header")
        yield kind, body, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int]:
    for found, body, body_end in _boxes(data, start, end):
        if found == kind:
            return body, body_end
    raise MediaError(f"corrupt HEIF: no {kind.decode()} box")


def _heif_size(data: bytes) -> tuple[int, int]:
    """The largest image a HEIF has libheif allocate: every image extent (`ispe`), every HEVC
    sequence header's picture (`hvcC`) and every grid or overlay canvas (its item's data).
    libheif compares a decoded image with its `ispe` only after decoding it, so a stream or a
    grid larger than its `ispe` would be decoded first: the largest of them all is the size."""
    meta_start, meta_end = _child(data, 0, len(data), b"meta")
    meta = (meta_start + 4, meta_end)  # meta is a full box: skip 4
    ipco = _child(data, *_child(data, *meta, b"iprp"), b"ipco")
    sizes = []
    for kind, body, body_end in _boxes(data, *ipco):
        if kind == b"ispe" and body_end - body >= 12:
            sizes.append(struct.unpack(">II", data[body + 4 : body + 12]))
        elif kind == b"hvcC":
            sizes.extend(_hevc_sizes(data[body:body_end]))
    sizes.extend(_canvas_sizes(data, *meta))
    if not sizes:
        raise MediaError("corrupt HEIF: no image size (ispe)")
    width, height = max(sizes, key=lambda size: size[0] * size[1])
    return _checked(width, height, "HEIF")


class _Bits:
    """A big-endian bit reader (HEVC's exp-Golomb codes) that refuses to run off the end."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            if self.at >> 3 >= len(self.data):
                raise MediaError("corrupt HEIF: truncated HEVC sequence header")
            value = value << 1 | self.data[self.at >> 3] >> (7 - (self.at & 7)) & 1
            self.at += 1
        return value

    def unsigned_exp_golomb(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros > 31:
                raise MediaError("corrupt HEIF: bad HEVC sequence header")
        return (1 << zeros) - 1 + self.read(zeros)


def _hevc_sizes(hvcc: bytes) -> list[tuple[int, int]]:
    """The picture size of every sequence parameter set (NAL type 33) in an `hvcC` box."""
    sizes = []
    at = 23
    for _ in range(hvcc[22] if len(hvcc) > 22 else 0):
        if at + 3 > len(hvcc):
            raise MediaError("corrupt HEIF: truncated HEVC configuration (hvcC)")
        nal_type, count = hvcc[at] & 0x3F, int.from_bytes(hvcc[at + 1 : at + 3], "big")
        at += 3
        for _ in range(count):
            length = int.from_bytes(hvcc[at : at + 2], "big")
            if at + 2 + length > len(hvcc):
                raise MediaError("corrupt HEIF: truncated HEVC configuration (hvcC)")
            if nal_type == 33:
                sizes.append(_sps_size(hvcc[at + 4 : at + 2 + length]))  # after the NAL header
            at += 2 + length
    return sizes


def _sps_size(payload: bytes) -> tuple[int, int]:
    """pic_width/height_in_luma_samples of an HEVC sequence parameter set (H.265 7.3.2.2)."""
    bits = _Bits(payload.replace(b"\x00\x00\x03", b"\x00\x00"))  # emulation prevention
    bits.read(4)  # sps_video_parameter_set_id
    sub_layers = bits.read(3)  # sps_max_sub_layers_minus1
    bits.read(1 + 96)  # temporal_id_nesting; general profile, tier and level
    present = [(bits.read(1), bits.read(1)) for _ in range(sub_layers)]
    bits.read(2 * (8 - sub_layers) if sub_layers else 0)
    for profile, level in present:
        bits.read(88 * profile + 8 * level)
    bits.unsigned_exp_golomb()  # sps_seq_parameter_set_id
    if bits.unsigned_exp_golomb() == 3:  # chroma_format_idc 4:4:4
        bits.read(1)  # separate_colour_plane_flag
    return bits.unsigned_exp_golomb(), bits.unsigned_exp_golomb()


_CANVASES = (b"grid", b"iovl")  # derived images whose size is in their item's data


def _canvas_sizes(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """The output size of every grid and overlay item (ISO/IEC 23008-12 6.6.2)."""
    boxes = {kind: (body, body_end) for kind, body, body_end in _boxes(data, start, end)}
    canvases = _item_types(data, *boxes[b"iinf"]) if b"iinf" in boxes else {}
    canvases = {item: kind for item, kind in canvases.items() if kind in _CANVASES}
    if not canvases:
        return []
    if b"iloc" not in boxes:
        raise MediaError("corrupt HEIF: no item locations (iloc)")
    idat = boxes.get(b"idat", (0, 0))[0]
    where = _item_offsets(data, *boxes[b"iloc"], idat)
    sizes = []
    for item, kind in canvases.items():
        if item not in where:
            raise MediaError("corrupt HEIF: a grid or overlay without data")
        at = where[item]
        flags = data[at + 1] if at + 1 < len(data) else 0
        at += 4 if kind == b"grid" else 10  # version, flags, rows and columns; or fill values
        size = 4 if flags & 1 else 2
        if at + 2 * size > len(data):
            raise MediaError("corrupt HEIF: truncated grid or overlay")
        width = int.from_bytes(data[at : at + size], "big")
        sizes.append((width, int.from_bytes(data[at + size : at + 2 * size], "big")))
    return sizes


def _item_types(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """item id -> item type, from an `iinf` box's `infe` entries (versions 2 and 3)."""
    if start >= end:
        raise MediaError("corrupt HEIF: empty item information (iinf)")
    first = start + (6 if data[start] == 0 else 8)  # full box header, then the entry count
    types = {}
    for kind, body, body_end in _boxes(data, first, end):
        version = data[body] if body < body_end else 0
        if kind != b"infe" or version < 2:
            continue
        id_size = 2 if version == 2 else 4
        item = int.from_bytes(data[body + 4 : body + 4 + id_size], "big")
        types[item] = data[body + 6 + id_size : body + 10 + id_size]
    return types


def _item_offsets(data: bytes, start: int, end: int, idat: int) -> dict[int, int]:
    """item id -> where its first extent starts in `data`, from an `iloc` box (versions 0-2);
    items in another file or built from other items (construction methods 2+) are left out."""
    at = start

    def field(size: int) -> int:
        nonlocal at
        if at + size > end:
            raise MediaError("corrupt HEIF: truncated item locations (iloc)")
        value = int.from_bytes(data[at : at + size], "big")
        at += size
        return value

    version = field(4) >> 24  # a full box: version, then flags
    offset_size, length_size = divmod(field(1), 16)
    base_size, index_size = divmod(field(1), 16)
    index_size = index_size if version in (1, 2) else 0
    offsets = {}
    for _ in range(field(2 if version < 2 else 4)):
        item = field(2 if version < 2 else 4)
        method = field(2) & 0xF if version in (1, 2) else 0
        field(2)  # data_reference_index
        base = field(base_size)
        extents = [
            (field(index_size), field(offset_size), field(length_size))[1] for _ in range(field(2))
        ]
        if extents and method in (0, 1):
            offsets[item] = base + extents[0] + (idat if method == 1 else 0)
    return offsets


def _ebml_doctype(data: bytes) -> bytes | None:
    """The DocType string of an EBML header (b"webm", b"matroska"), if it is in the first bytes."""
    at = data.find(b"\x42\x82", 4, 64)
    if at < 0 or at + 3 > len(data):
        return None
    length = data[at + 2]
    if not length & 0x80:  # only the one-byte size form is used for a short string
        return None
    return data[at + 3 : at + 3 + (length & 0x7F)].rstrip(b"\x00")


_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
_TIFF_SHORT, _TIFF_LONG = 3, 4


def _tiff_size(data: bytes) -> tuple[int, int]:
    """ImageWidth and ImageLength of the first image, from IFD0: the only directory OpenCV's
    decoder reads. A directory that gives either twice is refused: libtiff keeps the first, a
    reader that kept the last would let a 100 MP image pass as 64x64 (finding #3)."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise MediaError("truncated TIFF header")
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd < 8 or ifd + 2 > len(data):
        raise MediaError("truncated or corrupt TIFF (no first directory)")
    (entries,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    if ifd + 2 + 12 * entries > len(data):
        raise MediaError("truncated TIFF (its first directory runs past the end)")
    found: dict[int, int] = {}
    seen: set[int] = set()
    for i in range(entries):
        entry = ifd + 2 + 12 * i
        tag, kind, count = struct.unpack(order + "HHI", data[entry : entry + 8])
        if tag not in (_TIFF_WIDTH, _TIFF_LENGTH):
            continue
        if tag in seen:
            raise MediaError("corrupt TIFF: its first directory gives the image size twice")
        seen.add(tag)
        if count == 1:
            if kind == _TIFF_SHORT:
                (found[tag],) = struct.unpack(order + "H", data[entry + 8 : entry + 10])
            elif kind == _TIFF_LONG:
                (found[tag],) = struct.unpack(order + "I", data[entry + 8 : entry + 12])
    if _TIFF_WIDTH not in found or _TIFF_LENGTH not in found:
        raise MediaError("corrupt TIFF: no image width or length")
    return _checked(found[_TIFF_WIDTH], found[_TIFF_LENGTH], "TIFF")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise MediaError("truncated BMP header")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    elif header_size >= 40:
        width, height = struct.unpack("<ii", data[18:26])
    else:
        raise MediaError("corrupt BMP header")
    return _checked(width, abs(height), "BMP")  # a negative height means top-down rows


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
