"""What `match` and `enroll` send and read back: upload streams with their progress, a job
started from a file's bytes, a face's result as JSON (mixip/cli/folder.py uses them too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from google.protobuf.message import Message

from mixip.cli.output import Progress
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Metadata

if TYPE_CHECKING:
    from mixip.gateway.v1 import gateway_pb2_grpc

CHUNK = 1024 * 1024
M = TypeVar("M", bound=Message)
BYTES: dict[str, Any] = {"unit": "B", "unit_scale": True}  # a progress bar over bytes


class EnumType(Protocol):
    """A generated enum (`common_pb2.FaceLabel`, ...): the name of a value."""

    def Name(self, number: Any, /) -> str: ...


def enum_name(enum: EnumType, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def dashed_name(enum: EnumType, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower().replace("_", "-")


def face_json(face: common_pb2.FaceResult, video: bool) -> dict[str, Any]:
    document: dict[str, Any] = {
        "label": enum_name(common_pb2.FaceLabel, face.label, "FACE_LABEL_"),
        "talent_id": face.talent_id or None,
        "similarity": round(face.similarity, 4),
        "reason": enum_name(common_pb2.LabelReason, face.reason, "LABEL_REASON_"),
        "box": [face.box.x, face.box.y, face.box.width, face.box.height],
    }
    if video:
        document["ranges"] = [[r.start_seconds, r.end_seconds] for r in face.ranges]
        document["best_frame_seconds"] = face.best_frame_seconds
    return document


def upload_chunks(header_message: M, data: bytes, progress: Progress) -> Iterator[M]:
    """The upload stream (header, then chunks); the bar counts the bytes as they go."""
    yield header_message
    for start in range(0, len(data), CHUNK):
        yield type(header_message)(chunk=data[start : start + CHUNK])
        progress.set(min(start + CHUNK, len(data)))


def start_job(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    meta: Metadata,
    path: Path,
    data: bytes,
    project: str,
    request_id: str,
    progress: Progress,
) -> gateway_pb2.UploadMediaResponse:
    """Uploads the file's bytes as a job (a retry with the same request id returns the first
    job); the reply names the job and the media it will make."""
    header = gateway_pb2.UploadMediaRequest(
        header=gateway_pb2.UploadHeader(
            project_id=project, filename=path.name[:255], request_id=request_id, as_job=True
        )
    )
    return stub.UploadMedia(upload_chunks(header, data, progress), metadata=meta)
