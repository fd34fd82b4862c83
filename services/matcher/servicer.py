"""The gRPC edge of the matcher: validate, convert, delegate to `Matcher`, map engine errors."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import grpc

from mixip.common.v1 import common_pb2
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime.errors import Internal, InvalidArgument, Unavailable
from mixip.runtime.paging import decode_page_token, next_page_token
from mixip.runtime.times import to_timestamp
from mixip.runtime.validation import Checks
from services.matcher.engines.base import Box, EngineError, EngineUnavailable, UnusableFace
from services.matcher.ranges import RangeReader
from services.matcher.segments import SegmentOutcome, VideoSegments
from services.matcher.service import Face, FaceOutcome, Matcher, MatchOutcome


@contextmanager
def _engine_status() -> Iterator[None]:
    """Engine failures as status: the caller's input, an outage, or our fault."""
    try:
        yield
    except UnusableFace as exc:
        raise InvalidArgument.one("image", str(exc), reason="UNUSABLE_FACE") from exc
    except EngineUnavailable as exc:
        raise Unavailable(str(exc), reason="ENGINE_UNAVAILABLE") from exc
    except EngineError as exc:
        raise Internal(f"face engine error: {exc}", reason="ENGINE_ERROR") from exc


Method = Callable[[Any, Any, grpc.ServicerContext], Any]


def _engine_errors(method: Method) -> Method:
    """A unary method's engine failures as status (`_engine_status`)."""

    @wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _engine_status():
            return method(self, request, context)

    return wrapper


T = TypeVar("T")


def _over_reads(
    requests: Iterator[Any], size: int, work: Callable[[RangeReader], T]
) -> Iterator[matcher_pb2.MediaRead | T]:
    """Runs `work` on a reader of the caller's video, in a thread of its own: each range it
    needs is yielded (a `MediaRead` for the caller) and answered by the caller's next message;
    then its result is yielded. The reader holds a bounded read-ahead (services/matcher/ranges.py).
    A caller that goes away ends the work (its next read fails)."""
    asks: queue.Queue[tuple[str, Any]] = queue.Queue()
    answers: queue.Queue[bytes | None] = queue.Queue()

    def fetch(offset: int, length: int) -> bytes:
        asks.put(("read", matcher_pb2.MediaRead(offset=offset, length=length)))
        data = answers.get()
        if data is None:
            raise OSError("the caller stopped sending the video")
        return data

    def run() -> None:
        try:
            with _engine_status():
                asks.put(("done", work(RangeReader(fetch, size))))
        except BaseException as exc:  # handed to the RPC's thread, which raises it
            asks.put(("error", exc))

    threading.Thread(target=run, name="matcher-segment", daemon=True).start()
    try:
        while True:
            kind, value = asks.get()
            if kind == "error":
                raise value
            yield value
            if kind == "done":
                return
            request = next(requests, None)
            answers.put(None if request is None else request.data)
    finally:
        answers.put(None)  # a caller gone mid-read: the work's next read fails and it ends


class MatcherServicer(matcher_pb2_grpc.MatcherServiceServicer):
    def __init__(self, matcher: Matcher, segments: VideoSegments) -> None:
        self.matcher = matcher
        self.segments = segments
        self.limits = matcher.limits

    def _source(self, checks: Checks, field_name: str, source: matcher_pb2.VideoSource) -> None:
        checks.identifier(f"{field_name}.account_id", source.account_id)
        checks.identifier(f"{field_name}.project_id", source.project_id)
        if source.size_bytes <= 0:
            checks.fail(f"{field_name}.size_bytes", "required: the stored video's size, > 0")

    def PlanVideoSegments(
        self, request_iterator: Iterator[matcher_pb2.PlanVideoSegmentsRequest], context: Any
    ) -> Iterator[matcher_pb2.PlanVideoSegmentsResponse]:
        header = next(request_iterator, matcher_pb2.PlanVideoSegmentsRequest()).header
        checks = Checks()
        self._source(checks, "header.source", header.source)
        if not header.segment_seconds > 0:
            checks.fail("header.segment_seconds", "required: seconds per segment, > 0")
        if not header.overlap_seconds >= 0:
            checks.fail("header.overlap_seconds", "must be 0 or more")
        checks.done()
        for item in _over_reads(
            request_iterator,
            header.source.size_bytes,
            lambda reader: self.segments.plan(
                reader, header.segment_seconds, header.overlap_seconds
            ),
        ):
            if isinstance(item, matcher_pb2.MediaRead):
                yield matcher_pb2.PlanVideoSegmentsResponse(read=item)
                continue
            duration, planned = item
            yield matcher_pb2.PlanVideoSegmentsResponse(
                duration_seconds=duration,
                segments=[
                    matcher_pb2.PlannedSegment(
                        start_seconds=p.start, end_seconds=p.end, frames_expected=p.frames_expected
                    )
                    for p in planned
                ],
            )

    def MatchVideoSegment(
        self, request_iterator: Iterator[matcher_pb2.MatchVideoSegmentRequest], context: Any
    ) -> Iterator[matcher_pb2.MatchVideoSegmentResponse]:
        header = next(request_iterator, matcher_pb2.MatchVideoSegmentRequest()).header
        segment = header.segment
        checks = Checks()
        self._source(checks, "header.source", header.source)
        if not (0 <= segment.start_seconds < segment.end_seconds):
            checks.fail("header.segment", "required: 0 <= start_seconds < end_seconds")
        if not header.overlap_seconds >= 0:
            checks.fail("header.overlap_seconds", "must be 0 or more")
        checks.done()
        first = True
        for item in _over_reads(
            request_iterator,
            header.source.size_bytes,
            lambda reader: self.segments.match(
                header.source.account_id,
                reader,
                segment.start_seconds,
                segment.end_seconds,
                header.overlap_seconds,
            ),
        ):
            replica, first = (self.segments.instance if first else ""), False
            if isinstance(item, matcher_pb2.MediaRead):
                yield matcher_pb2.MatchVideoSegmentResponse(read=item, replica=replica)
                continue
            yield matcher_pb2.MatchVideoSegmentResponse(
                replica=replica,
                result=matcher_pb2.SegmentResult(
                    sealed_frames=item.sealed_frames,
                    frames_sampled=item.frames_sampled,
                    width=item.width,
                    height=item.height,
                    duration_seconds=item.duration_seconds,
                    replica=item.replica,
                ),
            )

    @_engine_errors
    def StitchVideoSegments(
        self, request_iterator: Iterator[matcher_pb2.StitchVideoSegmentsRequest], context: Any
    ) -> matcher_pb2.StitchVideoSegmentsResponse:
        first = next(request_iterator, matcher_pb2.StitchVideoSegmentsRequest())
        header = first.header
        checks = Checks()
        if first.WhichOneof("part") != "header":
            checks.fail("header", "required: the first message is the header")
        checks.identifier("header.account_id", header.account_id)
        checks.identifier("header.project_id", header.project_id)
        if header.segment_count <= 0:
            checks.fail("header.segment_count", "required: how many segment results follow, > 0")
        checks.done()
        outcome = self.segments.stitch(
            header.account_id,
            header.project_id,
            header.content_type,
            header.segment_count,
            _segment_results(request_iterator),
        )
        return matcher_pb2.StitchVideoSegmentsResponse(match=self._match_response(outcome))

    def _media(self, checks: Checks, field_name: str, data: bytes) -> None:
        if not data:
            checks.fail(field_name, "required: the media bytes (0 bytes received)")
        elif len(data) > self.limits.max_media_bytes:
            checks.fail(
                field_name,
                f"{len(data)} bytes; the limit is {self.limits.max_media_bytes} bytes",
            )

    @_engine_errors
    def EnrollTalentFace(
        self, request: matcher_pb2.EnrollTalentFaceRequest, context: grpc.ServicerContext
    ) -> matcher_pb2.EnrollTalentFaceResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.identifier("talent_id", request.talent_id)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        self._media(checks, "image", request.image)
        checks.done()
        face = self.matcher.enroll(
            request.account_id, request.talent_id, request.image, request.request_id
        )
        return matcher_pb2.EnrollTalentFaceResponse(face=_face(face))

    @_engine_errors
    def MatchMedia(
        self, request: matcher_pb2.MatchMediaRequest, context: grpc.ServicerContext
    ) -> matcher_pb2.MatchMediaResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.identifier("project_id", request.project_id)
        self._media(checks, "media", request.media)
        checks.done()
        outcome = self.matcher.match(request.account_id, request.project_id, request.media)
        return self._match_response(outcome)

    def _match_response(self, outcome: MatchOutcome) -> matcher_pb2.MatchMediaResponse:
        return matcher_pb2.MatchMediaResponse(
            kind=common_pb2.MediaKind.ValueType(outcome.kind),
            faces=[_result(i, face) for i, face in enumerate(outcome.faces)],
            engine=self.matcher.engine.name,
            width=outcome.width,
            height=outcome.height,
            duration_seconds=outcome.duration_seconds,
            frames_sampled=outcome.frames_sampled,
            content_type=outcome.content_type,
        )

    @_engine_errors
    def DetectFaces(
        self, request: matcher_pb2.DetectFacesRequest, context: grpc.ServicerContext
    ) -> matcher_pb2.DetectFacesResponse:
        checks = Checks()
        self._media(checks, "media", request.media)
        checks.done()
        outcome = self.matcher.detect(request.media)
        return matcher_pb2.DetectFacesResponse(
            kind=common_pb2.MediaKind.ValueType(outcome.kind),
            faces=[
                matcher_pb2.DetectedFace(
                    box=_box(d.box), detection_score=d.score, frame_seconds=d.frame_seconds
                )
                for d in outcome.faces
            ],
            width=outcome.width,
            height=outcome.height,
            content_type=outcome.content_type,
        )

    @_engine_errors
    def DeleteTalentFaces(
        self, request: matcher_pb2.DeleteTalentFacesRequest, context: grpc.ServicerContext
    ) -> matcher_pb2.DeleteTalentFacesResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.identifier("talent_id", request.talent_id)
        checks.text("request_id", request.request_id, max_length=128, required=False)
        before = checks.timestamp(
            "enrolled_before",
            request.enrolled_before,
            request.HasField("enrolled_before"),
            required=False,
        )
        checks.done()
        deleted = self.matcher.delete_talent(
            request.account_id, request.talent_id, enrolled_before=before
        )
        return matcher_pb2.DeleteTalentFacesResponse(deleted_count=deleted)

    @_engine_errors
    def DeleteTalentFace(
        self, request: matcher_pb2.DeleteTalentFaceRequest, context: grpc.ServicerContext
    ) -> matcher_pb2.DeleteTalentFaceResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.identifier("talent_id", request.talent_id)
        checks.identifier("face_id", request.face_id)
        checks.done()
        face, version = self.matcher.delete_face(
            request.account_id, request.talent_id, request.face_id
        )
        return matcher_pb2.DeleteTalentFaceResponse(face=_face(face), collection_version=version)

    def ListTalentFaces(
        self, request: matcher_pb2.ListTalentFacesRequest, context: grpc.ServicerContext
    ) -> matcher_pb2.ListTalentFacesResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.identifier("talent_id", request.talent_id)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"a": request.account_id, "t": request.talent_id}
        after = decode_page_token(request.page_token, filters, kind=str) or ""
        faces, next_after = self.matcher.list_faces(
            request.account_id, request.talent_id, page_size, after
        )
        return matcher_pb2.ListTalentFacesResponse(
            faces=[_face(f) for f in faces],
            next_page_token=next_page_token(next_after, filters),
        )

    def GetCollectionStats(
        self, request: matcher_pb2.GetCollectionStatsRequest, context: grpc.ServicerContext
    ) -> matcher_pb2.GetCollectionStatsResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id)
        checks.done()
        faces, talents, index = self.matcher.stats(request.account_id)
        return matcher_pb2.GetCollectionStatsResponse(
            face_count=faces,
            talent_count=talents,
            engine=self.matcher.engine.name,
            search_index=index,
        )

    def ListEnrolledTalents(
        self, request: matcher_pb2.ListEnrolledTalentsRequest, context: grpc.ServicerContext
    ) -> matcher_pb2.ListEnrolledTalentsResponse:
        checks = Checks()
        checks.identifier("account_id", request.account_id, required=False)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"a": request.account_id}
        position = decode_page_token(request.page_token, filters, kind=list)
        after = None
        if position is not None:  # [account id, talent_ref in hex]
            try:
                account, ref = position
                after = (account, bytes.fromhex(ref))
            except (ValueError, TypeError) as exc:
                raise InvalidArgument.one("page_token", "not a token this service issued") from exc
            if not isinstance(account, str):
                raise InvalidArgument.one("page_token", "not a token this service issued")
        rows, next_after = self.matcher.enrolled_talents(request.account_id, page_size, after)
        return matcher_pb2.ListEnrolledTalentsResponse(
            talents=[
                matcher_pb2.EnrolledTalent(account_id=a, talent_id=t, face_count=n)
                for a, t, n in rows
            ],
            next_page_token=next_page_token(
                [next_after[0], next_after[1].hex()] if next_after else None, filters
            ),
        )


def _segment_results(
    requests: Iterator[matcher_pb2.StitchVideoSegmentsRequest],
) -> Iterator[SegmentOutcome]:
    """The stitch's segment results as they arrive, each message let go before the next is
    read; any message but a segment is bad input naming the i-th result."""
    index = 0
    for request in requests:
        if request.WhichOneof("part") != "segment":
            raise InvalidArgument.one(
                f"segments[{index}]", "required: a segment's result (the header comes once, first)"
            )
        s = request.segment
        outcome = SegmentOutcome(
            s.sealed_frames, s.frames_sampled, s.width, s.height, s.duration_seconds, s.replica
        )
        del request, s
        yield outcome
        del outcome
        index += 1  # noqa: SIM113 (enumerate would hold the last message during the next read)


def _box(box: Box) -> common_pb2.BoundingBox:
    return common_pb2.BoundingBox(x=box.x, y=box.y, width=box.width, height=box.height)


def _result(index: int, face: FaceOutcome) -> common_pb2.FaceResult:
    return common_pb2.FaceResult(
        face_index=index,
        box=_box(face.box),
        label=common_pb2.FaceLabel.ValueType(face.label.label),
        reason=common_pb2.LabelReason.ValueType(face.label.reason),
        similarity=face.label.similarity,
        talent_id=face.label.talent_id,
        ranges=[common_pb2.TimeRange(start_seconds=a, end_seconds=b) for a, b in face.ranges],
        best_frame_seconds=face.best_frame_seconds,
        detection_score=face.detection_score,
    )


def _face(face: Face) -> matcher_pb2.FaceRecord:
    box = face.box
    return matcher_pb2.FaceRecord(
        face_id=face.face_id,
        account_id=face.account_id,
        talent_id=face.talent_id,
        box=common_pb2.BoundingBox(x=box.x, y=box.y, width=box.width, height=box.height),
        detection_score=face.detection_score,
        engine=face.engine,
        model=face.model,
        created_at=to_timestamp(face.created_at),
    )
