"""A stored video read by ranges over a real matcher call (docs/jobs.md#segments): the
matcher asks for bounded ranges only (never the whole video), plans at keyframes, and a
video's segments stitched give MatchMedia's tracks; unknown people are joined across cuts by
appearance; sealed frames open only for the account they were sealed for; the stitch streams
one segment per message, so a video's results may add up to more than one message's limit."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import grpc
import numpy as np
import pytest

from mixip.common.v1 import common_pb2 as common
from mixip.matcher.v1 import matcher_pb2 as pb
from mixip.runtime.config import free_port
from mixip.runtime.limits import ENVELOPE_BYTES
from services.matcher.engines.base import Box, DetectedFace
from services.matcher.ranges import BLOCK_BYTES, RangeReader
from services.matcher.segments import _frames_bytes
from services.matcher.settings import Limits, MatcherSettings
from services.matcher.video import open_stream
from tests.integration.matcher.test_matcher_service import ACCOUNT, PROJECT, enroll, grant, match
from tests.support import faces
from tests.support.checkpoints import TIMEOUT, Checkpoints
from tests.support.status import expect_error, expect_invalid

OVERLAP = 2.0
SMALL_MEDIA_BYTES = 64 * 1024  # the `small_messages` matcher's media limit


@pytest.fixture(scope="module")
def clip() -> bytes:
    """8 s: the astronaut, Grace Hopper, the astronaut again."""
    return faces.make_video(
        None,
        [(faces.astronaut(), 3.0), (faces.grace_hopper(), 2.0), (faces.astronaut(), 3.0)],
    )


class Reads:
    """Answers a segment call's reads from `data`, recording each range asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[int] = []

    def call(self, method, first):
        import queue

        requests: queue.Queue = queue.Queue()
        requests.put(first)

        def feed():
            while (item := requests.get()) is not None:
                yield item

        try:
            for response in method(feed()):
                if not response.HasField("read"):
                    return response
                offset, length = response.read.offset, response.read.length
                self.asked.append(length)
                requests.put(type(first)(data=self.data[offset : offset + length]))
        finally:
            requests.put(None)
        raise AssertionError("no answer")


def _source(data: bytes, account: str = ACCOUNT) -> pb.VideoSource:
    return pb.VideoSource(account_id=account, project_id=PROJECT, size_bytes=len(data))


def _plan(mesh, data: bytes, reads: Reads, seconds: float = 2.0) -> pb.PlanVideoSegmentsResponse:
    header = pb.PlanVideoSegmentsHeader(
        source=_source(data), segment_seconds=seconds, overlap_seconds=OVERLAP
    )
    return reads.call(
        mesh.matcher.stub.PlanVideoSegments, pb.PlanVideoSegmentsRequest(header=header)
    )


def _segment(mesh, data, reads, planned, account=ACCOUNT) -> pb.SegmentResult:
    header = pb.MatchVideoSegmentHeader(
        source=_source(data, account), segment=planned, overlap_seconds=OVERLAP
    )
    return reads.call(
        mesh.matcher.stub.MatchVideoSegment, pb.MatchVideoSegmentRequest(header=header)
    ).result


def _stitch(stub, results, account=ACCOUNT, count=None, header=True) -> pb.MatchMediaResponse:
    """One streamed stitch: the header (announcing `count`, or every result), then the results."""
    first = pb.StitchVideoSegmentsHeader(
        account_id=account,
        project_id=PROJECT,
        content_type="video/mp4",
        segment_count=len(results) if count is None else count,
    )
    messages = [pb.StitchVideoSegmentsRequest(header=first)] if header else []
    messages += [pb.StitchVideoSegmentsRequest(segment=r) for r in results]
    return stub.StitchVideoSegments(iter(messages)).match


def _tracks(faces_) -> list[tuple]:
    return [
        (f.label, f.talent_id, [(round(r.start_seconds, 3), round(r.end_seconds, 3)) for r in rs])
        for f in faces_
        for rs in [f.ranges]
    ]


def test_the_reader_holds_a_bounded_read_ahead_of_a_video_many_times_larger(clip):
    reader = RangeReader(lambda o, n: clip[o : o + n], len(clip), block_bytes=4096, max_blocks=4)
    video = open_stream(reader, max_seconds=60, max_pixels=10_000_000)
    sampled = [s.t for s in video.samples(2.0)]

    assert len(sampled) == 16 and video.keyframes()[:3] == pytest.approx([0.0, 1.2, 2.4])
    assert len(clip) > 10 * reader.max_buffered  # never more than 4 blocks held
    assert reader.max_buffered <= 4 * 4096 and reader.max_fetched <= 4096


@pytest.mark.parametrize("enrolled_talent", [True, False], ids=["labelled", "unknown"])
def test_segments_read_by_bounded_ranges_stitch_into_match_medias_tracks(
    mesh, clock, clip, enrolled_talent
):
    if enrolled_talent:
        grant(mesh, clock, "astronaut")
        enroll(mesh, "astronaut", faces.astronaut())
    reads = Reads(clip)

    plan = _plan(mesh, clip, reads)
    planned = list(plan.segments)
    results = [_segment(mesh, clip, reads, p) for p in planned]
    stitched = _stitch(mesh.matcher.stub, results)

    assert plan.duration_seconds == pytest.approx(8.0)
    # Cut at the first keyframe (every 1.2 s) at or after each 2 s.
    bounds = [(round(p.start_seconds, 3), round(p.end_seconds, 3)) for p in planned]
    assert bounds == [(0.0, 2.4), (2.4, 4.8), (4.8, 7.2), (7.2, 8.0)]
    assert max(reads.asked) <= BLOCK_BYTES  # the matcher never asks for the whole video
    assert {r.replica for r in results} == {mesh.matcher.app.instance}
    whole = match(mesh, clip)
    assert stitched.kind == common.MEDIA_KIND_VIDEO
    assert _tracks(stitched.faces) == _tracks(whole.faces)
    # The astronaut is one track with two ranges, known or not (by appearance across cuts).
    assert len(stitched.faces) == 2 and len(stitched.faces[0].ranges) == 2
    for result in results:  # no face in clear: the sealed frames are opaque
        assert b'"f4", "' not in result.sealed_frames


def test_a_video_larger_than_a_block_is_read_in_whole_blocks(mesh):
    noise = np.random.default_rng(7).integers(0, 256, (6, 720, 1280, 3), dtype=np.uint8)
    big = faces.make_video(None, [(frame, 0.1) for frame in noise], size=(1280, 720))
    assert len(big) > 2 * BLOCK_BYTES
    reads = Reads(big)

    plan = _plan(mesh, big, reads, seconds=60.0)

    assert [(p.start_seconds, round(p.end_seconds, 3)) for p in plan.segments] == [(0.0, 0.6)]
    assert max(reads.asked) == BLOCK_BYTES  # a whole block per message, within the limit


def test_sealed_frames_open_only_for_their_account_and_bad_headers_are_refused(mesh, clip):
    reads = Reads(clip)
    first, second = (
        _segment(mesh, clip, reads, pb.PlannedSegment(start_seconds=a, end_seconds=b))
        for a, b in [(0.0, 2.4), (2.4, 4.8)]
    )
    stitch = mesh.matcher.stub

    expect_invalid(_stitch, stitch, [first], account="acct-b", fields={"segments[0].sealed_frames"})
    expect_invalid(_stitch, stitch, [second, first], fields={"segments[1]"})  # out of order
    expect_invalid(_stitch, stitch, [first, second], count=3, fields={"segments"})  # ended early
    expect_invalid(_stitch, stitch, [first, second], count=1, fields={"segments[1]"})
    expect_invalid(_stitch, stitch, [first], header=False, fields={"header"})
    expect_invalid(
        _stitch,
        stitch,
        [first],
        account="",
        count=0,
        fields={"header.account_id", "header.segment_count"},
    )
    bad = pb.MatchVideoSegmentHeader(
        source=pb.VideoSource(account_id="", project_id=PROJECT, size_bytes=0),
        segment=pb.PlannedSegment(start_seconds=3.0, end_seconds=1.0),
        overlap_seconds=-1.0,
    )
    expect_invalid(
        lambda: Reads(clip).call(
            mesh.matcher.stub.MatchVideoSegment, pb.MatchVideoSegmentRequest(header=bad)
        ),
        fields={
            "header.source.account_id",
            "header.source.size_bytes",
            "header.segment",
            "header.overlap_seconds",
        },
    )


def test_a_stored_object_that_is_no_video_is_bad_media(mesh):
    garbage = bytes(range(256)) * 64

    expect_invalid(lambda: _plan(mesh, garbage, Reads(garbage)), fields={"media"})


@pytest.fixture
def small_messages(matcher_factory, consent_factory):
    """A matcher whose calls carrying media take at most 64 KiB (plus the envelope) a message."""
    consent_port = free_port()
    limits = replace(Limits(), max_media_bytes=SMALL_MEDIA_BYTES)
    matcher = matcher_factory(
        f"127.0.0.1:{consent_port}", replace(MatcherSettings(), limits=limits)
    )
    consent_factory(matcher.address, port=consent_port)
    return matcher


def test_a_stitch_its_caller_cancels_is_logged_as_cancelled_not_as_an_internal_error(mesh, caplog):
    """The gateway cancels a job's stitch (the job was cancelled) after a first segment: the
    matcher's read of the next one fails, and it says so at INFO (nobody hears an answer), not
    INTERNAL at ERROR. gRPC hands the handler the reset either as an error, once it marked the
    call cancelled (CANCELLED), or, before it did, as the stream's end (the stitch's "the
    stream ended early", INVALID_ARGUMENT): which one is the transport's race."""
    caplog.set_level(logging.INFO)
    ended = threading.Event()
    said: list[logging.LogRecord] = []

    class Lines(logging.Handler):  # every line, and a signal once the stitch's own is said
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record)
            method = getattr(record, "fields", {}).get("method", "")
            if record.getMessage() == "rpc" and method.endswith("/StitchVideoSegments"):
                ended.set()

    seal = mesh.matcher.app.segments._seal
    first = pb.SegmentResult(sealed_frames=seal(ACCOUNT, _frames_bytes([])), width=640, height=360)
    header = pb.StitchVideoSegmentsHeader(
        account_id=ACCOUNT, project_id=PROJECT, content_type="video/mp4", segment_count=2
    )
    hooks = Checkpoints()
    linked = hooks.pause_at("stitch.linked")
    mesh.matcher.app.segments.checkpoint = hooks
    lines = Lines()
    logging.getLogger().addHandler(lines)
    never = threading.Event()

    def requests():
        yield pb.StitchVideoSegmentsRequest(header=header)
        yield pb.StitchVideoSegmentsRequest(segment=first)
        never.wait(TIMEOUT)  # the second result never comes

    try:
        call = mesh.matcher.stub.StitchVideoSegments.future(requests())
        linked.reached()  # the matcher is inside the stitch, one segment linked
        call.cancel()
        linked.release()
        assert ended.wait(TIMEOUT)
    finally:
        never.set()
        logging.getLogger().removeHandler(lines)
        mesh.matcher.app.segments.checkpoint = lambda name: None
    [line] = [r for r in said if r.getMessage() == "rpc" and "Stitch" in r.fields["method"]]
    assert line.fields["code"] in ("CANCELLED", "INVALID_ARGUMENT"), line.fields
    assert line.levelno == logging.INFO
    assert [r.getMessage() for r in said if r.levelno >= logging.ERROR] == []


def test_a_stitch_larger_than_one_messages_limit_streams_through_one_segment_a_message(
    small_messages,
):
    """Two minutes of three people on screen at 2 Hz, as six sealed segment results (made by
    the matcher's own sealing, about 90 KiB each): each fits one message, together they do
    not."""
    limit = SMALL_MEDIA_BYTES + ENVELOPE_BYTES  # a stitch message's, as for media
    rng = np.random.default_rng(3)

    def unit(v: np.ndarray) -> np.ndarray:  # as the local engine's SFace vectors
        return (v / np.linalg.norm(v)).astype(np.float32)

    people = [unit(v) for v in rng.normal(size=(3, 128))]
    frames = [
        (
            k * 0.5,
            [
                (
                    DetectedFace(Box(20 + 200 * p, 40, 120, 140), 0.9),
                    unit(person + rng.normal(scale=0.05, size=128)),
                )
                for p, person in enumerate(people)
            ],
        )
        for k in range(240)
    ]
    seal = small_messages.app.segments._seal

    def result(part) -> pb.SegmentResult:
        return pb.SegmentResult(
            sealed_frames=seal(ACCOUNT, _frames_bytes(part)),
            frames_sampled=len(part),
            width=640,
            height=360,
            duration_seconds=120.0,
        )

    results = [result(frames[i : i + 40]) for i in range(0, 240, 40)]
    sizes = [pb.StitchVideoSegmentsRequest(segment=r).ByteSize() for r in results]

    stitched = _stitch(small_messages.stub, results)

    assert max(sizes) < limit < sum(sizes)
    assert stitched.frames_sampled == 240 and stitched.duration_seconds == 120.0
    assert [[(r.start_seconds, r.end_seconds) for r in f.ranges] for f in stitched.faces] == [
        [(0.0, 119.5)]
    ] * 3  # one track per person, across the six segments
    # The same frames as one segment are refused before the matcher reads them.
    expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, _stitch, small_messages.stub, [result(frames)])
