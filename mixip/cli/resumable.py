"""Resumable uploads from the command line (docs/cli.md, docs/jobs.md).

`mixip match` sends a file larger than `--resumable-above` through an upload session. The
session's id is kept in a small state file (mode 0600) under the CLI's state directory, keyed
by the gateway, the project and the file (absolute path, size, modification time), so that
rerunning the same command after a dropped connection or a killed client asks the gateway for
the durable offset and sends only the rest; a session finished by a run killed before it could
forget it gives back its media (nothing is sent again). The file is deleted once the session
is finished (or the gateway no longer knows it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from mixip.cli.output import CliError
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Metadata
from mixip.runtime.errors import error_details
from mixip.runtime.files import private_dir, write_private

if TYPE_CHECKING:  # the stub comes from the caller's connection
    from mixip.gateway.v1 import gateway_pb2_grpc

CHUNK = 256 * 1024  # the gateway takes at most MIXIP_GATEWAY_MAX_CHUNK_BYTES (4 MiB) a message
READ_BYTES = 1024 * 1024
# What a saved session that cannot be resumed (or was finished) answers.
NOT_RESUMABLE = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def state_dir() -> Path:
    """$XDG_STATE_HOME/mixip, by default ~/.local/state/mixip."""
    base = os.environ.get("XDG_STATE_HOME", "").strip() or str(Path.home() / ".local" / "state")
    return Path(base) / "mixip"


@dataclass(frozen=True)
class Sent:
    """What one run of an upload sent: the reply (naming the job that analyses the media), the
    bytes sent, the offset it resumed at."""

    media: gateway_pb2.UploadMediaResponse
    bytes: int
    resumed_from: int


class SessionState:
    """The state file of one file's upload session."""

    def __init__(self, address: str, project: str, path: Path) -> None:
        stat = path.stat()
        identity = json.dumps(
            [address, project, str(path.resolve()), stat.st_size, stat.st_mtime_ns]
        )
        self.path = (
            state_dir() / "uploads" / f"{hashlib.sha256(identity.encode()).hexdigest()}.json"
        )

    def load(self) -> str:
        try:
            return str(json.loads(self.path.read_text())["session_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def save(self, session_id: str) -> None:
        private_dir(self.path.parent)
        write_private(self.path, json.dumps({"session_id": session_id}))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def upload(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    meta: Metadata,
    address: str,
    path: Path,
    project: str,
    progress: Callable[[int], None],
) -> Sent:
    size = path.stat().st_size
    state = SessionState(address, project, path)
    saved = state.load()
    session_id, durable = _resume(stub, meta, saved)
    if not session_id and saved:
        made = _finished(stub, meta, saved, path)
        if made is not None:  # a run killed after the finish, before forgetting it
            state.clear()
            return Sent(made, 0, size)
    if not session_id:
        created = stub.CreateUploadSession(
            gateway_pb2.CreateUploadSessionRequest(
                project_id=project, filename=path.name[:255], declared_size=size
            ),
            metadata=meta,
        )
        session_id = created.session.session_id
        state.save(session_id)
    resumed_from, sent = durable, 0
    while durable < size:
        counter = [0]
        try:
            reply = stub.AppendUploadChunks(
                _chunks(path, session_id, durable, size, counter, progress), metadata=meta
            )
            now = reply.session.durable_offset
        except grpc.RpcError as exc:
            details = error_details(exc)
            if details.reason != "WRONG_OFFSET":
                raise
            now = int(details.metadata.get("durable_offset", durable))  # resume where it is
        sent += counter[0]
        if now == durable:
            raise CliError("the gateway kept none of the bytes sent; run the command again")
        durable = now
    finished = stub.FinishUploadSession(
        gateway_pb2.FinishUploadSessionRequest(
            session_id=session_id, sha256=_sha256(path), as_job=True
        ),
        metadata=meta,
    )
    state.clear()
    return Sent(finished.media, sent, resumed_from)


def _resume(
    stub: gateway_pb2_grpc.GatewayServiceStub, meta: Metadata, session_id: str
) -> tuple[str, int]:
    """(the saved session and its durable offset), or ("", 0) when there is none to resume."""
    if not session_id:
        return "", 0
    try:
        reply = stub.GetUploadSession(
            gateway_pb2.GetUploadSessionRequest(session_id=session_id), metadata=meta
        )
    except grpc.RpcError as exc:
        lost = error_details(exc).reason == "SESSION_LOST"
        if lost or exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return "", 0  # purged, finished, its bytes gone, or another gateway: start again
        raise
    return session_id, reply.session.durable_offset


def _finished(
    stub: gateway_pb2_grpc.GatewayServiceStub, meta: Metadata, session_id: str, path: Path
) -> gateway_pb2.UploadMediaResponse | None:
    """The media a saved session made, if it was finished (a finish retried after success
    returns the stored media); None when it never was (purged, lost, or another gateway's)."""
    try:
        return stub.FinishUploadSession(
            gateway_pb2.FinishUploadSessionRequest(
                session_id=session_id, sha256=_sha256(path), as_job=True
            ),
            metadata=meta,
        ).media
    except grpc.RpcError as exc:
        if exc.code() in NOT_RESUMABLE:
            return None
        raise


def _chunks(
    path: Path,
    session_id: str,
    offset: int,
    size: int,
    counter: list[int],
    progress: Callable[[int], None],
) -> Iterator[gateway_pb2.AppendUploadChunksRequest]:
    with path.open("rb") as handle:
        handle.seek(offset)
        while offset < size:
            data = handle.read(min(CHUNK, size - offset))
            if not data:
                raise CliError(f"{path} shrank while it was uploaded")
            yield gateway_pb2.AppendUploadChunksRequest(
                session_id=session_id, offset=offset, data=data
            )
            offset += len(data)
            counter[0] += len(data)
            progress(offset)  # the bytes durable or on their way


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()
