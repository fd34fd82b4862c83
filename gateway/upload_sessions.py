"""Resumable uploads: a session per media, its bytes appended at offsets straight into the
encrypted store a part at a time, finished with the SHA-256 of the whole (docs/jobs.md).

- The store is the truth about progress: the durable offset is what its parts hold (fsynced
  STREAM segments in the local store, completed parts of an S3 multipart upload). A stream cut
  anywhere loses at most the part being gathered; the client resumes at the durable offset.
- Memory holds one part and one chunk per stream, never the media. Finishing reads the stored
  bytes back through the decrypting reader to check the SHA-256, then hands them to the same
  commit as UploadMedia (gateway/uploads.py), which deletes the session in that commit.
- A session finished `as_job`, or larger than the synchronous upload limit
  (MIXIP_GATEWAY_MAX_UPLOAD_BYTES), is analysed by a job (gateway/jobs.py): its SHA-256 is
  checked reading the object back a block at a time, and the commit that queues the job over
  the session's object deletes the session. A finish retried after that returns the job.
- A session no byte was appended to for `idle_after` is abandoned: the retention purge deletes
  its row and its parts (aborting the S3 multipart upload).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from gateway.jobs import Job, Jobs, QueuedMedia
from gateway.media_store import MediaStore, PartWriter, StorageBusy, StorageError
from gateway.projects import Action, Projects
from gateway.store import UploadSessionRow
from gateway.uploads import SessionObject, StoredMedia, UploadHeader, Uploads, media_id_for
from mixip.runtime import logs
from mixip.runtime.checkpoints import Checkpoint, no_checkpoint
from mixip.runtime.db import Database
from mixip.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from mixip.runtime.limits import MiB
from mixip.runtime.media import MediaError, sniff
from mixip.runtime.times import Clock

logger = logging.getLogger("mixip.gateway")

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
SESSION_ID = re.compile(r"ups_[0-9a-f]{32}")
SESSION_ID_RULE = "required: an id CreateUploadSession returned (ups_ and 32 hex digits)"
READ_BYTES = 1 * MiB  # what finishing reads back at a time


@dataclass(frozen=True)
class SessionState:
    session_id: str
    project_id: str
    declared_size: int
    durable_offset: int
    created_at: datetime
    last_write_at: datetime


@dataclass(frozen=True)
class Chunk:
    """One message of an append stream."""

    session_id: str
    offset: int
    data: bytes


def wrong_offset(durable: int, message: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{message}; resume at the durable offset {durable}",
        reason="WRONG_OFFSET",
        metadata={"durable_offset": str(durable)},
    )


class UploadSessions:
    def __init__(
        self,
        db: Database,
        media_store: MediaStore,
        uploads: Uploads,
        jobs: Jobs,
        projects: Projects,
        clock: Clock,
        *,
        max_chunk_bytes: int,
        max_session_bytes: int,
        max_analysis_bytes: int,
        idle_after: timedelta,
    ) -> None:
        self.db = db
        self.media_store = media_store
        self.uploads = uploads
        self.jobs = jobs
        self.projects = projects
        self.clock = clock
        self.max_chunk_bytes = max_chunk_bytes
        self.max_session_bytes = max_session_bytes
        self.max_analysis_bytes = max_analysis_bytes
        self.idle_after = idle_after
        # Tests stop an append after a given part through this hook.
        self.checkpoint: Checkpoint = no_checkpoint

    def create(
        self, caller_account_id: str, project_id: str, filename: str, declared_size: int
    ) -> SessionState:
        if not 1 <= declared_size <= self.max_session_bytes:
            raise InvalidArgument.one(
                "declared_size",
                f"must be between 1 and {self.max_session_bytes} bytes",
                reason="UPLOAD_TOO_LARGE" if declared_size > 0 else "EMPTY_UPLOAD",
            )
        scope = self.projects.upload_scope(caller_account_id, project_id)
        key, upload_id = self.media_store.begin(scope.owner_account_id)
        now = self.clock()
        row = UploadSessionRow(
            session_id=f"ups_{secrets.token_hex(16)}",
            account_id=scope.owner_account_id,
            created_by_account_id=caller_account_id,
            project_id=project_id,
            filename=filename,
            declared_size=declared_size,
            storage_key=key,
            upload_id=upload_id,
            created_at=now,
            last_write_at=now,
            completed=False,
        )
        try:
            with self.db.write() as session:
                session.add(row)
        except BaseException:
            self.media_store.abort(scope.owner_account_id, key, upload_id)
            raise
        logs.log(logger, "upload session created", account=row.account_id, size=declared_size)
        return _state(row, 0)

    def state(self, caller_account_id: str, session_id: str) -> SessionState:
        row = self._row(caller_account_id, session_id)
        if row is None:
            raise NotFound("no such upload session")
        return _state(row, self._durable(row))

    def append(self, caller_account_id: str, chunks: Iterator[Chunk]) -> SessionState:
        """Appends a stream's chunks, a part at a time; refuses a chunk at another offset
        than the end of the previous one (the first: the durable offset). A stream refused at
        its first message writes nothing."""
        first = next(chunks, None)
        if first is None or not first.session_id:
            raise InvalidArgument.one("session_id", "required (a stream names its session)")
        row = self._row(caller_account_id, first.session_id)
        if row is None:
            raise NotFound("no such upload session")
        self._check(row, 0, first, self._durable(row))
        try:
            writer = self.media_store.writer(
                row.account_id, row.storage_key, row.upload_id, row.declared_size
            )
        except StorageBusy:
            raise FailedPrecondition(
                "another stream is appending to this session", reason="SESSION_BUSY"
            ) from None
        try:
            self._append(row, writer, first, chunks)
            durable = _offset(writer, row.declared_size)
        finally:
            writer.close()
        return _state(row, durable)

    def _check(self, row: UploadSessionRow, index: int, chunk: Chunk, expected: int) -> None:
        """Refuses message `index` unless it continues the session at `expected`."""
        if chunk.session_id != row.session_id:
            raise InvalidArgument.one(
                f"message[{index}].session_id", "every message names the same session"
            )
        if chunk.offset < 0:
            raise InvalidArgument.one(f"message[{index}].offset", "at least 0")
        if chunk.offset != expected:
            raise wrong_offset(
                self._durable(row), f"message[{index}].offset is {chunk.offset}, not {expected}"
            )
        if not chunk.data or len(chunk.data) > self.max_chunk_bytes:
            raise InvalidArgument.one(
                f"message[{index}].data", f"1 to {self.max_chunk_bytes} bytes"
            )
        if expected + len(chunk.data) > row.declared_size:
            raise InvalidArgument.one(
                f"message[{index}].data",
                f"goes past the declared size of {row.declared_size} bytes",
                reason="PAST_DECLARED_SIZE",
            )

    def _append(
        self, row: UploadSessionRow, writer: PartWriter, first: Chunk, chunks: Iterator[Chunk]
    ) -> None:
        size = row.declared_size
        expected = _offset(writer, size)  # under the writer's lock: another stream may have
        buffer = bytearray()  # moved it since the first message was checked
        index = 0
        chunk: Chunk | None = first
        while chunk is not None:
            self._check(row, index, chunk, expected)
            buffer += chunk.data
            expected += len(chunk.data)
            while len(buffer) >= writer.part_bytes or (buffer and expected == size):
                part = bytes(buffer[: writer.part_bytes])
                del buffer[: writer.part_bytes]
                writer.write(part, last=_offset(writer, size) + len(part) == size)
                self._touch(row.session_id)
                self.checkpoint("session.part_written")
            chunk = next(chunks, None)
            index += 1

    def finish(
        self, caller_account_id: str, key_id: str, session_id: str, sha256: str, as_job: bool
    ) -> StoredMedia | Job:
        """The media and its results; or, `as_job` or over the synchronous limit, the job
        queued to analyse them."""
        row = self._row(caller_account_id, session_id)
        if row is None:  # finished before (a retry), or no such session
            job = self.jobs.session_job(caller_account_id, session_id)
            return job if job is not None else self._finished(caller_account_id, session_id)
        self._complete(row)
        if as_job or row.declared_size > self.max_analysis_bytes:
            return self._queue_job(row, key_id, sha256)
        data = self._read_back(row)
        if hashlib.sha256(data).hexdigest() != sha256:
            self._mismatch(row)

        def end_session(session: Session) -> None:
            session.execute(
                delete(UploadSessionRow).where(UploadSessionRow.session_id == session_id)
            )

        try:
            return self.uploads.upload(
                caller_account_id,
                key_id,
                UploadHeader(row.project_id, row.filename, session_id),
                data,
                in_store=SessionObject(row.storage_key, end_session),
            )
        except InvalidArgument:  # not media the matcher takes: kept no more than UploadMedia's
            self._discard(row)
            raise

    def _queue_job(self, row: UploadSessionRow, key_id: str, sha256: str) -> Job:
        """Checks the stored bytes' SHA-256 and type a block at a time (never whole in
        memory), then queues their job in the commit that deletes the session."""
        digest, head = hashlib.sha256(), b""
        with self.media_store.open(row.account_id, row.storage_key) as handle:
            while block := handle.read(READ_BYTES):
                head = head or block
                digest.update(block)
        if digest.hexdigest() != sha256:
            self._mismatch(row)
        try:
            content_type = sniff(head).content_type
        except MediaError as exc:
            self._discard(row)
            raise InvalidArgument.one("session_id", str(exc), reason="BAD_MEDIA") from exc

        def end_session(session: Session) -> None:
            session.execute(
                delete(UploadSessionRow).where(UploadSessionRow.session_id == row.session_id)
            )

        return self.jobs.start_stored(
            row.created_by_account_id,
            key_id,
            UploadHeader(row.project_id, row.filename, row.session_id),
            QueuedMedia(content_type, row.declared_size, row.storage_key, ""),
            end_session,
        )

    def _mismatch(self, row: UploadSessionRow) -> NoReturn:
        self._discard(row)
        raise FailedPrecondition(
            "the stored bytes do not have this SHA-256; the session and its bytes are "
            "deleted (upload again)",
            reason="SHA256_MISMATCH",
        )

    def _complete(self, row: UploadSessionRow) -> None:
        """Completes the stored object once every byte is in (UPLOAD_INCOMPLETE before)."""
        if not row.completed:
            durable = self._durable(row)
            if durable < row.declared_size:
                raise FailedPrecondition(
                    f"{durable} of {row.declared_size} bytes are in; append the rest first",
                    reason="UPLOAD_INCOMPLETE",
                    metadata={"durable_offset": str(durable)},
                )
            self.media_store.complete(
                row.account_id, row.storage_key, row.upload_id, row.declared_size
            )
            with self.db.write() as session:
                session.execute(
                    update(UploadSessionRow)
                    .where(UploadSessionRow.session_id == row.session_id)
                    .values(completed=True)
                )
            row.completed = True

    def _read_back(self, row: UploadSessionRow) -> bytes:
        """The stored media, decrypted a part at a time (at most the analysis limit)."""
        data = bytearray()
        with self.media_store.open(row.account_id, row.storage_key) as handle:
            while block := handle.read(READ_BYTES):
                data += block
        return bytes(data)

    def _finished(self, caller_account_id: str, session_id: str) -> StoredMedia:
        media_id = media_id_for(caller_account_id, session_id)
        try:
            scope = self.projects.media_scope(caller_account_id, media_id, Action.READ)
        except NotFound:
            raise NotFound("no such upload session") from None
        return self.uploads.results(scope)

    def purge_abandoned(self, as_of: datetime, limit: int) -> int:
        """Deletes up to `limit` sessions idle since before `as_of - idle_after`: their parts
        (or completed object) first, then their rows, so a crash in between leaves a row whose
        next purge finds nothing left to delete. The number of sessions deleted."""
        with self.db.read() as session:
            rows = session.scalars(
                select(UploadSessionRow)
                .where(UploadSessionRow.last_write_at < as_of - self.idle_after)
                .order_by(UploadSessionRow.last_write_at, UploadSessionRow.session_id)
                .limit(limit)
            ).all()
        for row in rows:
            self._discard(row)
        if rows:
            logs.log(logger, "abandoned upload sessions purged", count=len(rows))
        return len(rows)

    def _discard(self, row: UploadSessionRow) -> None:
        if row.completed:
            self.media_store.delete(row.account_id, row.storage_key)
        else:
            self.media_store.abort(row.account_id, row.storage_key, row.upload_id)
        with self.db.write() as session:
            session.execute(
                delete(UploadSessionRow).where(UploadSessionRow.session_id == row.session_id)
            )

    def _row(self, caller_account_id: str, session_id: str) -> UploadSessionRow | None:
        """The caller's session (another account's reads as none)."""
        with self.db.read() as session:
            row = session.get(UploadSessionRow, session_id)
        if row is None or row.created_by_account_id != caller_account_id:
            return None
        return row

    def _durable(self, row: UploadSessionRow) -> int:
        if row.completed:
            return row.declared_size
        try:
            return self.media_store.durable_bytes(
                row.account_id, row.storage_key, row.upload_id, row.declared_size
            )
        except StorageError:  # e.g. a bucket rule aborted the multipart upload
            raise FailedPrecondition(
                "the session's stored bytes are gone; start a new session", reason="SESSION_LOST"
            ) from None

    def _touch(self, session_id: str) -> None:
        with self.db.write() as session:
            session.execute(
                update(UploadSessionRow)
                .where(UploadSessionRow.session_id == session_id)
                .values(last_write_at=self.clock())
            )


def _offset(writer: PartWriter, size: int) -> int:
    return min(writer.parts * writer.part_bytes, size)


def _state(row: UploadSessionRow, durable: int) -> SessionState:
    return SessionState(
        session_id=row.session_id,
        project_id=row.project_id,
        declared_size=row.declared_size,
        durable_offset=durable,
        created_at=row.created_at,
        last_write_at=row.last_write_at,
    )
