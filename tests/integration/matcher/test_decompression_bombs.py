"""Decompression bombs against a real matcher process (finding #3): each is refused as bad input
before a pixel is decoded, writes nothing, and costs the process less than 100 MiB.

The matcher runs as `mixip up` runs it (`python -m services.matcher`), so its start-up path (the
decoders' own pixel limit, set before OpenCV loads) is the one under test. Memory is the
process's peak resident set (VmHWM), reset before each request through /proc/PID/clear_refs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from mixip.cli.launcher import Mesh
from mixip.matcher.v1 import matcher_pb2 as pb
from mixip.matcher.v1 import matcher_pb2_grpc
from mixip.runtime.client import open_channel
from mixip.runtime.config import variable
from mixip.runtime.db import database_url as explicit_driver
from mixip.runtime.media import IMAGE, Sniffed
from mixip.runtime.pixels import decode_upright
from services.matcher.app import SERVICE_NAME
from services.matcher.store import Base
from tests.support import bombs
from tests.support.databases import BACKENDS, fresh_schema_url
from tests.support.status import expect_invalid

MiB = 1024 * 1024
SIDE = 10_000  # 100 MP: 300 MB as BGR, 2.5 times the default limit of 40 MP

LIMIT = "image is 10000x10000 (100.0 MP); the limit is 40.0 MP"
# name -> (builder of a width x height bomb, its content type, what the refusal says)
BOMBS: dict[str, tuple[Callable[[int, int], bytes], str, str]] = {
    "tiff-with-duplicate-size-tags": (
        bombs.tiff_with_duplicate_sizes,
        "image/tiff",
        "corrupt TIFF: its first directory gives the image size twice",
    ),
    "heic-grid": (bombs.heic, "image/heic", LIMIT),
    "heic-grid-larger-than-its-extent": (
        lambda width, height: bombs.heic(width, height, extent=(64, 64)),
        "image/heic",
        LIMIT,
    ),
    "jpeg": (bombs.jpeg, "image/jpeg", LIMIT),
    "png": (bombs.png, "image/png", LIMIT),
    "webp": (bombs.webp, "image/webp", LIMIT),
    "bmp": (bombs.bmp, "image/bmp", LIMIT),
}


@dataclass
class MatcherProcess:
    pid: int
    stub: matcher_pb2_grpc.MatcherServiceStub
    database_url: str

    def peak_rise(self, call: Callable[[], object]) -> int:
        """How far the process's peak resident set rose above its resident set during `call`."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # peak := current
        before = self._status("VmRSS")
        call()
        return self._status("VmHWM") - before

    def rows(self) -> dict[str, int]:
        engine = create_engine(explicit_driver(self.database_url), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return {
                    table.name: connection.scalar(select(func.count()).select_from(table)) or 0
                    for table in Base.metadata.sorted_tables
                }
        finally:
            engine.dispose()

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")


@pytest.fixture(scope="module", params=BACKENDS)
def matcher(request, tmp_path_factory, pg_test_database) -> Iterator[MatcherProcess]:
    """One real matcher process per database backend for the whole module."""
    data_dir = tmp_path_factory.mktemp("bombs") / "data"
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir.parent / 'matcher.db'}"
    else:
        url = fresh_schema_url(pg_test_database, "matcher")
    env = {variable("matcher", "DATABASE_URL"): url, "MIXIP_MATCHER_INFERENCE_THREADS": "1"}
    mesh = Mesh(data_dir, tls=False, services=["matcher"], extra_env=env)
    mesh.start()
    channel = open_channel(mesh.addresses["matcher"], [SERVICE_NAME], timeout_seconds=60)
    try:
        process = MatcherProcess(
            mesh.processes["matcher"].pid, matcher_pb2_grpc.MatcherServiceStub(channel), url
        )
        # Warm the request path (threads, buffers) so that it is not counted against a bomb.
        refused(process, b"not media")
        yield process
    finally:
        channel.close()
        mesh.stop()


def match(matcher: MatcherProcess, media: bytes) -> pb.MatchMediaResponse:
    return matcher.stub.MatchMedia(
        pb.MatchMediaRequest(account_id="acct-a", project_id="film-1", media=media)
    )


def refused(matcher: MatcherProcess, media: bytes) -> str:
    """The violation's description of `media` refused as INVALID_ARGUMENT on field `media`."""
    details = expect_invalid(match, matcher, media, fields={"media"})
    return next(v.description for v in details.violations if v.field == "media")


# libheif decodes the lying grid, then refuses it for not being its declared size.
@pytest.mark.parametrize("name", sorted(set(BOMBS) - {"heic-grid-larger-than-its-extent"}))
def test_every_bomb_builder_makes_a_file_that_decodes_to_the_size_it_was_given(name):
    build, content_type, _ = BOMBS[name]

    image = decode_upright(build(1000, 600), Sniffed(IMAGE, content_type, 1000, 600))

    assert image is not None and image.shape == (600, 1000, 3)


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_decompression_bomb_is_refused_unread_writes_nothing_and_costs_under_100_mib(
    matcher, name
):
    build, _, message = BOMBS[name]
    bomb = build(SIDE, SIDE)
    assert len(bomb) < 200_000  # small on the wire: all of its cost would be in decoding
    before = matcher.rows()
    descriptions: list[str] = []

    rise = matcher.peak_rise(lambda: descriptions.append(refused(matcher, bomb)))

    assert rise < 100 * MiB, f"the matcher's peak memory rose by {rise / MiB:.0f} MiB"
    assert descriptions == [message]
    assert matcher.rows() == before


def test_a_video_whose_frames_grow_mid_stream_is_refused_and_costs_under_100_mib(matcher):
    bomb = bombs.webm_growing_mid_stream(8000, 8000)  # 64 MP from 1.2 s on
    before = matcher.rows()
    descriptions: list[str] = []

    rise = matcher.peak_rise(lambda: descriptions.append(refused(matcher, bomb)))

    assert rise < 100 * MiB, f"the matcher's peak memory rose by {rise / MiB:.0f} MiB"
    assert descriptions == [
        "video frame is over the limit of 40.0 MP or of an invalid size: the decoder refused it"
    ]
    assert matcher.rows() == before
