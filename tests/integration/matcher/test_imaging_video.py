"""Decoding uploads: images within pixel limits and upright, videos sampled from memory."""

from __future__ import annotations

import dataclasses
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import Future
from pathlib import Path

import cv2
import numpy as np
import pytest

from mixip.runtime import pixels
from mixip.runtime.media import MediaError, cap_image_decoders, sniff
from services.matcher import imaging
from services.matcher.engines.base import Box, DetectedFace
from services.matcher.imaging import decode_image, encode_jpeg
from services.matcher.video import Tracker, Video, open_video, sample_and_track
from tests.support import bombs, faces

MAX_PIXELS = 40_000_000
SIZE = (640, 360)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size but holds no pixels: enough for a decompression-bomb check."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(cv2.absdiff(a, b)))


@pytest.fixture
def no_decoding(monkeypatch) -> list[int]:
    """Fails loudly if anything reaches the image decoder."""
    calls: list[int] = []

    def refuse(buffer, flags):
        calls.append(len(buffer))
        raise AssertionError("decoded despite being refused")

    monkeypatch.setattr(imaging.cv2, "imdecode", refuse)
    monkeypatch.setattr(pixels.cv2, "imdecode", refuse)
    monkeypatch.setattr(pixels, "_decode_heif", lambda data, _pixels: refuse(data, None))
    return calls


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    """Where `tempfile` creates things during the test, so we can see what is left behind."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.setenv("TMPDIR", str(root))
    return root


@pytest.fixture(scope="module")
def two_people_mp4() -> bytes:
    return faces.make_video(None, [(faces.astronaut(), 2.0), (faces.grace_hopper(), 2.0)])


@pytest.mark.parametrize(
    ("ext", "content_type", "max_difference"),
    [(".jpg", "image/jpeg", 3.0), (".png", "image/png", 0.0), (".webp", "image/webp", 3.0)],
)
def test_images_decode_to_their_pixels(ext, content_type, max_difference):
    original = faces.grace_hopper()

    image, sniffed = decode_image(faces.encode(original, ext), max_pixels=MAX_PIXELS)

    assert sniffed.content_type == content_type
    assert (sniffed.width, sniffed.height) == (512, 600)
    assert image.shape == original.shape
    assert image.dtype == np.uint8
    assert mean_difference(image, original) <= max_difference


def test_encode_jpeg_round_trips():
    original = faces.astronaut()

    image, sniffed = decode_image(encode_jpeg(original, quality=90), max_pixels=MAX_PIXELS)

    assert sniffed.content_type == "image/jpeg"
    assert mean_difference(image, original) < 3.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, I am not a picture", "not a supported image"),
        (b"", "empty media"),
        (faces.encode(faces.astronaut(), ".jpg")[:5000], "truncated JPEG"),
    ],
    ids=["text", "zero-bytes", "truncated-jpeg"],
)
def test_non_images_are_refused_before_decoding(no_decoding, data, message):
    with pytest.raises(MediaError, match=message):
        decode_image(data, max_pixels=MAX_PIXELS)

    assert no_decoding == []


def test_a_decompression_bomb_is_refused_before_decoding(no_decoding):
    with pytest.raises(MediaError) as error:
        decode_image(png_header_only(30000, 30000), max_pixels=MAX_PIXELS)

    assert str(error.value) == "image is 30000x30000 (900.0 MP); the limit is 40.0 MP"
    assert no_decoding == []


def test_an_undecodable_image_is_refused():
    png = faces.encode(faces.astronaut(), ".png")
    corrupt = png[:33] + b"\x00" * 100 + png_chunk(b"IEND", b"")  # IHDR, garbage, IEND

    with pytest.raises(MediaError, match="corrupt image: cannot decode the image/png data"):
        decode_image(corrupt, max_pixels=MAX_PIXELS)


def test_a_video_is_not_an_image(two_people_mp4, no_decoding):
    with pytest.raises(MediaError, match="expected an image, got a video"):
        decode_image(two_people_mp4, max_pixels=MAX_PIXELS)


def test_a_video_is_sampled_at_two_frames_a_second(two_people_mp4):
    first, second = (
        faces.letterboxed(image, SIZE) for image in (faces.astronaut(), faces.grace_hopper())
    )

    with open_video(two_people_mp4, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        assert (video.fps, video.frame_count, video.width, video.height) == (10.0, 40, *SIZE)
        assert video.duration_seconds == pytest.approx(4.0)
        sampled = list(video.frames(2.0))

    assert [t for t, _ in sampled] == pytest.approx([0.5 * i for i in range(8)])
    for t, frame in sampled:
        expected, other = (first, second) if t < 2.0 else (second, first)
        assert mean_difference(frame, expected) < mean_difference(frame, other)


def test_sampling_faster_than_the_frame_rate_gives_every_frame(two_people_mp4):
    with open_video(two_people_mp4, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        every = [t for t, _ in video.frames(25.0)]
        again = [t for t, _ in video.frames(3.0)]

    assert every == pytest.approx([i / 10 for i in range(40)])
    assert len(again) == 12  # each call reads from the start: 3 a second for 4 s


def test_webm_is_supported():
    webm = faces.make_video(None, [(faces.astronaut(), 1.0)], codec="VP80")

    with open_video(webm, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        sampled = list(video.frames(2.0))

    assert webm.startswith(b"\x1a\x45\xdf\xa3")  # EBML: really WebM
    assert [t for t, _ in sampled] == pytest.approx([0.0, 0.5])
    assert all(frame.shape == (360, 640, 3) for _, frame in sampled)


def test_no_frame_past_the_time_limit_is_read(two_people_mp4):
    # As if the container had understated its length: the limit still bounds the reading.
    with open_video(two_people_mp4, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        understated = dataclasses.replace(video, max_seconds=1.2)
        times = [t for t, _ in understated.frames(10.0)]

    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])


def test_a_video_over_the_time_limit_is_refused(two_people_mp4):
    with (
        pytest.raises(MediaError, match=r"^video is 4\.0 s long; the limit is 3\.0 s$"),
        open_video(two_people_mp4, max_seconds=3, max_pixels=MAX_PIXELS),
    ):
        pytest.fail("opened a video over the limit")


def test_a_video_over_the_pixel_limit_is_refused(two_people_mp4):
    with (
        pytest.raises(MediaError, match="video frame is 640x360"),
        open_video(two_people_mp4, max_seconds=10, max_pixels=640 * 360 - 1),
    ):
        pytest.fail("opened a video over the limit")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00\x18ftypmp42" + bytes(2000), "unsupported or corrupt video"),
        (faces.encode(faces.astronaut(), ".png"), "expected a video, got an image"),
    ],
    ids=["corrupt-mp4", "an-image"],
)
def test_what_is_not_a_playable_video_is_refused(temp_root, data, message):
    with (
        pytest.raises(MediaError, match=message),
        open_video(data, max_seconds=10, max_pixels=MAX_PIXELS),
    ):
        pytest.fail("opened a non-video")

    assert list(temp_root.iterdir()) == []


def test_a_video_is_decoded_from_memory_and_nothing_reaches_a_disk(temp_root, two_people_mp4):
    with open_video(two_people_mp4, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        target = os.readlink(video.path)
        sampled = [t for t, _ in video.frames(2.0)]
        assert list(temp_root.iterdir()) == []

    assert video.path.startswith("/proc/self/fd/")
    assert target.startswith("/memfd:mixip-video")  # an anonymous file in memory
    assert len(sampled) == 8
    assert list(temp_root.iterdir()) == []
    assert not os.path.exists(video.path) or os.readlink(video.path) != target  # closed


def test_the_in_memory_copy_is_closed_when_the_block_fails(two_people_mp4):
    targets: list[str] = []

    def sample_then_fail(video: Video) -> None:
        targets.append(os.readlink(video.path))
        next(video.frames())
        raise RuntimeError("boom")

    with (
        pytest.raises(RuntimeError, match="boom"),
        open_video(two_people_mp4, max_seconds=10, max_pixels=MAX_PIXELS) as video,
    ):
        sample_then_fail(video)

    assert targets[0].startswith("/memfd:mixip-video")
    assert not os.path.exists(video.path) or os.readlink(video.path) != targets[0]


# -- the media people actually send -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type", "max_difference"),
    [
        ("HEIF", "image/heic", 4.0),
        ("TIFF", "image/tiff", 0.0),
        ("BMP", "image/bmp", 0.0),
    ],
)
def test_phone_and_editing_suite_formats_decode_to_their_pixels(fmt, content_type, max_difference):
    original = faces.grace_hopper()

    image, sniffed = decode_image(faces.encode_pillow(original, fmt), max_pixels=MAX_PIXELS)

    assert sniffed.content_type == content_type
    assert (sniffed.width, sniffed.height) == (512, 600)
    assert image.shape == original.shape
    assert mean_difference(image, original) <= max_difference


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "HEIF"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_images_decode_upright_by_their_orientation(fmt, orientation):
    upright = faces.grace_hopper()  # 512 wide, 600 high as the viewer sees it
    data = faces.encode_pillow(upright, fmt, orientation=orientation)

    image, sniffed = decode_image(data, max_pixels=MAX_PIXELS)

    assert image.shape == upright.shape
    assert (sniffed.width, sniffed.height) == (512, 600)  # the viewer's, not the stored ones
    assert mean_difference(image, upright) < 4.0
    stored = sniff(data)
    if orientation != 3 and fmt != "HEIF":  # stored sideways; HEIF stores its rotation apart
        assert (stored.width, stored.height) == (600, 512)


def tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian TIFF whose first directory claims a size, with no pixels at all."""
    entries = [(256, 4, 1, width), (257, 4, 1, height)]
    directory = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", *entry) for entry in entries
    )
    return b"II*\x00" + struct.pack("<I", 8) + directory + struct.pack("<I", 0)


def bmp_header_only(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def heif_claiming(width: int, height: int) -> bytes:
    """A real HEIC whose image extent (ispe) is rewritten to claim another size."""
    data = faces.encode_pillow(faces.grace_hopper(), "HEIF")
    at = data.index(b"ispe")
    return data[: at + 8] + struct.pack(">II", width, height) + data[at + 16 :]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (tiff_header_only(30000, 30000), "image is 30000x30000"),
        (bmp_header_only(30000, 30000), "image is 30000x30000"),
        (heif_claiming(30000, 30000), "image is 30000x30000"),
    ],
    ids=["tiff", "bmp", "heif"],
)
def test_pixel_bombs_in_the_new_formats_are_refused_from_the_header(no_decoding, data, message):
    with pytest.raises(MediaError, match=message):
        decode_image(data, max_pixels=MAX_PIXELS)

    assert no_decoding == []


@pytest.mark.parametrize("decoy", [(64, 64), (30000, 30000)], ids=["smaller", "larger"])
def test_a_tiff_that_gives_its_size_twice_is_refused_before_decoding(no_decoding, decoy):
    # libtiff decodes with the first size; a reader keeping the last saw the 64x64 decoy.
    tiff = bombs.tiff_with_duplicate_sizes(96, 64, decoy=decoy)

    with pytest.raises(MediaError, match="gives the image size twice"):
        decode_image(tiff, max_pixels=MAX_PIXELS)

    assert no_decoding == []


def test_opencv_decodes_a_tiff_that_gives_its_size_twice_at_the_first_size():
    tiff = bombs.tiff_with_duplicate_sizes(96, 64, decoy=(8, 8))

    image = cv2.imdecode(np.frombuffer(tiff, np.uint8), cv2.IMREAD_COLOR)

    assert image.shape == (64, 96, 3)


_DECODE_IN_A_FRESH_PROCESS = """
import sys
from mixip.runtime.media import cap_image_decoders
cap_image_decoders()
import cv2, numpy as np
from tests.support import bombs
for side in (64, 96):  # 4096 and 9216 pixels
    image = cv2.imdecode(np.frombuffer(bombs.png(side, side), np.uint8), cv2.IMREAD_COLOR)
    print(side, image.shape[0])
"""


def test_opencv_itself_refuses_an_image_over_the_configured_pixel_limit():
    env = {**os.environ, "MIXIP_MATCHER_MAX_PIXELS": "5000", "OPENCV_IO_MAX_IMAGE_PIXELS": ""}
    run = subprocess.run(
        [sys.executable, "-c", _DECODE_IN_A_FRESH_PROCESS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.stdout.splitlines() == ["64 64"]
    assert "pixels <= CV_IO_MAX_IMAGE_PIXELS" in run.stderr


def test_capping_the_decoders_after_opencv_has_loaded_is_a_programming_error():
    environ: dict[str, str] = {}

    with pytest.raises(RuntimeError, match="before cv2 is imported"):
        cap_image_decoders(environ)  # this test process has loaded cv2 long ago

    assert environ == {}


def _with_extent(heif: bytes, old: tuple[int, int], new: tuple[int, int]) -> bytes:
    """`heif` with its image extent (ispe) `old` rewritten to claim `new`."""
    extent = b"ispe" + bytes(4) + struct.pack(">II", *old)
    assert heif.count(extent) == 1
    return heif.replace(extent, b"ispe" + bytes(4) + struct.pack(">II", *new))


def test_a_heic_grid_larger_than_its_extent_is_sized_by_its_grid(no_decoding):
    # libheif would decode the 10000x10000 grid, then notice that it is not 64x64.
    liar = _with_extent(bombs.heic(10000, 10000), (10000, 10000), (64, 64))

    with pytest.raises(MediaError, match="image is 10000x10000"):
        decode_image(liar, max_pixels=MAX_PIXELS)

    assert no_decoding == []


def test_a_heic_stream_larger_than_its_extent_is_sized_by_its_sequence_header():
    liar = _with_extent(faces.encode_pillow(faces.grace_hopper(), "HEIF"), (512, 600), (64, 64))

    assert (sniff(liar).width, sniff(liar).height) == (512, 600)


def test_a_heif_that_libheif_reads_as_larger_than_sniffed_is_refused_before_decoding(monkeypatch):
    heic = faces.encode_pillow(faces.grace_hopper(), "HEIF")  # 512x600
    decoded: list[object] = []
    asarray = np.asarray  # how pixels turns a HeifFile into pixels: the decoding itself
    monkeypatch.setattr(np, "asarray", lambda *a, **k: decoded.append(a) or asarray(*a, **k))
    as_sniffed = dataclasses.replace(sniff(heic), width=64, height=64)

    assert pixels.decode_upright(heic, as_sniffed) is None
    assert decoded == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (faces.encode_pillow(faces.astronaut(), "TIFF")[:100], "truncated TIFF"),
        (faces.encode_pillow(faces.astronaut(), "BMP")[:5000], "truncated BMP"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "corrupt HEIF"),
        (b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00mif1avif", "AVIF is not supported"),
    ],
    ids=["truncated-tiff", "truncated-bmp", "heif-without-meta", "avif"],
)
def test_broken_files_in_the_new_formats_are_refused_before_decoding(no_decoding, data, message):
    with pytest.raises(MediaError, match=message):
        decode_image(data, max_pixels=MAX_PIXELS)

    assert no_decoding == []


@pytest.mark.parametrize(
    ("codec", "suffix", "content_type"),
    [("VP90", ".webm", "video/webm"), ("VP80", ".mkv", "video/x-matroska")],
)
def test_vp9_webm_and_matroska_are_supported(codec, suffix, content_type):
    data = faces.make_video(None, [(faces.astronaut(), 1.0)], codec=codec, suffix=suffix)

    with open_video(data, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        sampled = [t for t, _ in video.frames(2.0)]

    assert sniff(data).content_type == content_type
    assert sampled == pytest.approx([0.0, 0.5])


@pytest.mark.parametrize(("codec", "suffix"), [("VP80", ".webm"), ("mp4v", ".mkv")])
def test_a_video_without_a_declared_duration_is_counted_while_sampled(codec, suffix):
    recorded = faces.make_video(None, [(faces.astronaut(), 2.0)], codec=codec, suffix=suffix)
    live = faces.without_duration(recorded)

    with open_video(live, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        assert video.declared_frames is None
        sampled = [t for t, _ in video.frames(2.0)]
        counted = video.frame_count

    with open_video(recorded, max_seconds=10, max_pixels=MAX_PIXELS) as declared:
        assert declared.declared_frames == 20  # the original did declare its length
    assert sampled == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert counted == 20 and video.duration_seconds == pytest.approx(2.0)


def test_a_video_without_a_declared_duration_is_refused_at_the_limit():
    live = faces.without_duration(faces.make_video(None, [(faces.astronaut(), 3.0)], codec="VP80"))
    read: list[float] = []

    with (
        pytest.raises(MediaError, match=r"^video is over 1\.0 s long; the limit is 1\.0 s$"),
        open_video(live, max_seconds=1, max_pixels=MAX_PIXELS) as video,
    ):
        read.extend(t for t, _ in video.frames(10.0))

    assert read == pytest.approx([i / 10 for i in range(10)])  # nothing past the limit


def test_a_phone_video_is_decoded_upright_and_sized_as_the_viewer_sees_it():
    data = faces.filmed_upright_on_a_phone(faces.astronaut(), 1.0)
    upright = faces.letterboxed(faces.astronaut(), (360, 640))

    with open_video(data, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        size = (video.width, video.height)
        [(_, first), *_] = list(video.frames(2.0))

    assert size == (360, 640)  # the container's header says 640x360
    assert first.shape == (640, 360, 3)
    assert mean_difference(first, upright) < 12


@pytest.mark.parametrize(
    "clip",
    [
        lambda: faces.make_video(None, [(faces.astronaut(), 1.0)]),
        lambda: faces.make_video(None, [(faces.astronaut(), 1.0)], codec="VP80"),
        lambda: faces.make_video(None, [(faces.grace_hopper(), 1.0)], codec="VP90"),
        lambda: faces.filmed_upright_on_a_phone(faces.astronaut(), 1.0),
    ],
    ids=["mp4", "vp8-webm", "vp9-webm", "phone-mp4"],
)
def test_every_frame_decodes_to_the_pixels_opencv_s_capture_gave(clip, tmp_path):
    # Tracking results depend on the pixels: PyAV must convert (and turn) as OpenCV did.
    data = clip()
    (tmp_path / "clip").write_bytes(data)
    capture = cv2.VideoCapture(str(tmp_path / "clip"), cv2.CAP_FFMPEG)
    expected = []
    while (read := capture.read())[0]:
        expected.append(read[1])
    capture.release()

    with open_video(data, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        decoded = [frame for _, frame in video.frames(100.0)]

    assert len(decoded) == len(expected) == 10
    assert all(np.array_equal(a, b) for a, b in zip(decoded, expected, strict=True))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (bombs.webm_growing_mid_stream, r"^video frame is over the limit of .* refused it$"),
        (bombs.mp4_growing_mid_stream, r"^video frame is 200x200 \(0\.0 MP\); the limit is"),
    ],
    ids=["vp8-webm", "h264-mp4"],
)
def test_a_video_whose_frames_grow_mid_stream_is_refused_by_its_decoder(build, message):
    bomb = build(200, 200)  # 64x64, then 200x200 from 1.2 s on
    read: list[float] = []

    with (
        pytest.raises(MediaError, match=message),
        open_video(bomb, max_seconds=10, max_pixels=100 * 100) as video,
    ):
        read.extend(t for t, _ in video.frames(10.0))

    assert (video.width, video.height) == (64, 64)  # all the header and first frame say
    assert read and max(read) < 1.2  # no frame of the new size came out


# -- denser sampling around new faces ------------------------------------------------------------


def scripted_analysis(image: np.ndarray) -> Future:
    """A face wherever the frame is not black (the same person each time), at once."""
    done: Future = Future()
    if float(image.mean()) > 10:
        vector = np.ones(128, np.float32) / np.sqrt(128)
        done.set_result(([DetectedFace(Box(250, 100, 120, 120), 0.9)], [vector]))
    else:
        done.set_result(([], []))
    return done


@pytest.mark.parametrize("max_buffered_bytes", [256 << 20, 1], ids=["roomy", "one-frame"])
def test_frames_after_a_new_face_are_sampled_densely(max_buffered_bytes):
    # On screen from 1.2 s to 2.2 s: the 2 Hz grid alone sees her at 1.5 and 2.0.
    blank = np.zeros((360, 640, 3), np.uint8)
    data = faces.make_video(None, [(blank, 1.2), (faces.astronaut(), 1.0), (blank, 1.8)])
    tracker = Tracker(interval_seconds=0.5)

    with open_video(data, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        analysed = sample_and_track(
            video,
            scripted_analysis,
            tracker,
            rate_hz=2.0,
            burst_rate_hz=6.0,
            burst_seconds=0.5,
            max_buffered_bytes=max_buffered_bytes,
        )

    [track] = tracker.tracks()
    # 1.5 is new, so the 6 Hz frames up to 2.0 are analysed too (1.7 and 1.9 at 10 fps)
    assert [o.t for o in track.observations] == pytest.approx([1.5, 1.7, 1.9, 2.0])
    assert analysed == 8 + 2


def test_without_new_faces_only_the_base_grid_is_analysed():
    data = faces.make_video(None, [(np.zeros((360, 640, 3), np.uint8), 2.0)])
    tracker = Tracker(interval_seconds=0.5)

    with open_video(data, max_seconds=10, max_pixels=MAX_PIXELS) as video:
        analysed = sample_and_track(video, scripted_analysis, tracker, rate_hz=2.0)

    assert analysed == 4 and tracker.tracks() == []
