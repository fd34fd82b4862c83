"""The gRPC edge of the matcher: validate, convert, delegate to `Matcher`, map engine errors."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

import grpc

from mixip.common.v1 import common_pb2
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime.errors import Internal, InvalidArgument, Unavailable
from mixip.runtime.paging import decode_page_token, next_page_token
from mixip.runtime.times import to_timestamp
from mixip.runtime.validation import Checks
from services.matcher.engines.base import Box, EngineError, EngineUnavailable, UnusableFace
from services.matcher.service import Face, FaceOutcome, Matcher


def _engine_errors(method: Callable) -> Callable:
    """Engine failures as status: the caller's input, an outage, or our fault."""

    @wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except UnusableFace as exc:
            raise InvalidArgument.one("image", str(exc), reason="UNUSABLE_FACE") from exc
        except EngineUnavailable as exc:
            raise Unavailable(str(exc), reason="ENGINE_UNAVAILABLE") from exc
        except EngineError as exc:
            raise Internal(f"face engine error: {exc}", reason="ENGINE_ERROR") from exc

    return wrapper


class MatcherServicer(matcher_pb2_grpc.MatcherServiceServicer):
    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher
        self.limits = matcher.limits

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
