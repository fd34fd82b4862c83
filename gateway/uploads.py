"""Uploads: store the media encrypted, have it matched, record the audit events, keep the results.

The gateway decides nothing about faces or consent: the matcher labels every face
(services/matcher/labels.py, with the consents it reads once the media is analysed); the
gateway stores and returns those labels. Its only rewrite is the erasure fence's: a face
naming a talent whose erasure began (or completed since the upload started) is kept as
UNKNOWN / TALENT_ERASED with no talent id, because the erasure must not be undone by this
upload's events and results (gateway/erasure.py).

The order the privacy promises need:
- an upload's results are returned (and kept) only with their audit events durably queued in
  the same commit (gateway/audit_outbox.py); the events are delivered to the audit service
  within seconds, by a background deliverer, and an upload succeeds while the audit service
  is down (its events wait in the outbox);
- an upload commits its results and queues its events only if no erasure of its talents began
  meanwhile, checked in the transaction that stores them (under the account's fence lock): no
  event about a fenced talent is ever queued.

One durable commit on the hot path: results, media row and audit events together.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.audit_outbox import AuditOutbox, match_event
from gateway.erasure import FENCE_WINDOW, ErasureFence
from gateway.media_store import MediaStore
from gateway.peers import Matched, MatcherPort
from gateway.projects import Projects, Scope, may_upload, upload_target
from gateway.role_views import view_of
from gateway.seals import ACCOUNT_SUBJECT, Seals, media_subject, seal_filename
from gateway.store import (
    MediaRow,
    UploadDigestRow,
    account_closed,
    erased_face,
    face_result,
    face_row,
    is_referenced,
    media_faces,
    upload_digest,
)
from mixip.audit.v1 import audit_pb2
from mixip.common.v1 import common_pb2
from mixip.runtime import logs
from mixip.runtime.checkpoints import Checkpoint, no_checkpoint
from mixip.runtime.db import Database
from mixip.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from mixip.runtime.idempotency import content_digest, key_reused, require_same
from mixip.runtime.media import MediaError, sniff
from mixip.runtime.telemetry import step
from mixip.runtime.times import Clock
from mixip.runtime.vault import TalentKey

logger = logging.getLogger("mixip.gateway")

# An unreferenced stored object older than this was left by a crash mid-upload (no upload
# takes this long: UploadMedia's deadline is 15 minutes).
ORPHANED_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class UploadHeader:
    project_id: str
    filename: str
    request_id: str


@dataclass(frozen=True)
class Media:
    media_id: str
    project_id: str
    kind: int
    content_type: str
    size_bytes: int
    duration_seconds: float
    engine: str
    created_at: datetime


@dataclass(frozen=True)
class SessionObject:
    """Media already in the store (a finished upload session, gateway/upload_sessions.py): its
    object stays with the session when the upload fails, and `commit_with` runs in the upload's
    commit (it deletes the session)."""

    storage_key: str
    commit_with: Callable[[Session], None]


@dataclass(frozen=True)
class PendingMedia:
    """A stored, not yet matched media: what its results' commit needs besides the match."""

    media_id: str
    account_id: str  # the project's owner
    project_id: str
    filename: str
    content_type: str  # sniffed (the matcher's, when it says, wins)
    size_bytes: int
    storage_key: str
    request_id: str
    digest: str
    uploaded_by_account_id: str
    key_id: str  # the audit events' actor
    create_project: bool


@dataclass(frozen=True)
class Admission:
    """What an upload reads before its bytes are analysed, in one read (`Uploads.admit`): the
    project it goes into (its role not yet checked), and the media an earlier call under the
    same request id stored, with that call's content digest."""

    scope: Scope
    earlier: MediaRow | None
    earlier_digest: str | None


@dataclass(frozen=True)
class StoredMedia:
    """A stored media and its face results, as returned to the client."""

    media: Media
    faces: list[common_pb2.FaceResult]


def media_id_for(account_id: str, request_id: str) -> str:
    """Deterministic for a retried request (so audit idempotency keys repeat), random otherwise."""
    if request_id:
        digest = hashlib.sha256(f"{account_id}\x00{request_id}".encode()).hexdigest()[:24]
        return f"med_{digest}"
    return f"med_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class StreamLimits:
    """What a client may stream to the gateway (an upload or an enrollment)."""

    max_chunk_bytes: int
    max_upload_bytes: int

    def receive(self, chunks: Iterable[bytes]) -> bytes:
        """The whole stream, refused as soon as it passes a limit (nothing is stored yet)."""
        buffer = bytearray()
        for index, chunk in enumerate(chunks):
            if len(chunk) > self.max_chunk_bytes:
                raise InvalidArgument.one(
                    f"chunk[{index}]", f"at most {self.max_chunk_bytes} bytes per chunk"
                )
            buffer += chunk
            if len(buffer) > self.max_upload_bytes:
                raise InvalidArgument.one(
                    "chunk",
                    f"the upload exceeds the limit of {self.max_upload_bytes} bytes",
                    reason="UPLOAD_TOO_LARGE",
                )
        if not buffer:
            raise InvalidArgument.one("chunk", "no media bytes were sent", reason="EMPTY_UPLOAD")
        return bytes(buffer)


class Uploads:
    def __init__(
        self,
        db: Database,
        matcher: MatcherPort,
        outbox: AuditOutbox,
        media_store: MediaStore,
        fence: ErasureFence,
        clock: Clock,
        projects: Projects,
        seals: Seals,
    ) -> None:
        self.db = db
        self.seals = seals
        self.matcher = matcher
        self.outbox = outbox
        self.media_store = media_store
        self.fence = fence
        self.clock = clock
        self.projects = projects
        # Tests pause uploads at their step boundaries through this hook.
        self.checkpoint: Checkpoint = no_checkpoint

    def upload(
        self,
        caller_account_id: str,
        key_id: str,
        header: UploadHeader,
        data: bytes,
        *,
        in_store: SessionObject | None = None,
        admission: Admission | None = None,
    ) -> StoredMedia:
        """Store encrypted and match (at once) → keep the results and queue their audit
        events in one commit.

        The media belongs to the project's owner: an uploader's media is matched against the
        owner's talents and consents, its events join the owner's chain (the actor is the
        uploader's key), and the owner's erasures fence it. The matcher works while the media
        is encrypted and stored, so the upload's latency is the slower of the two, not their
        sum. A retry with the same request id (the caller's) returns the first upload's
        results. Results are returned as the caller's role sees them (gateway/role_views.py).
        Media already `in_store` (a session's) are not stored again, and their object is never
        deleted here (it belongs to the session until this commit).

        The `admission` is read here unless the caller read it with its own (the API key's,
        gateway/auth.py) before the bytes came; a retry's is read again now, so it is answered
        from the caller's scope as it is after the stream. The caller's access is checked again
        in the commit: a member removed (or made a viewer) while the bytes came or the matcher
        worked keeps nothing."""
        try:
            sniffed = sniff(data)
        except MediaError as exc:
            raise InvalidArgument.one("chunk", str(exc), reason="BAD_MEDIA") from exc
        if admission is None or admission.earlier is not None:
            with step("gateway.upload.admit"), self.db.read() as session:
                admission = self.admit(session, caller_account_id, header)
        scope = may_upload(admission.scope)
        account_id = scope.owner_account_id
        media_id = media_id_for(caller_account_id, header.request_id)
        digest = content_digest(header.project_id, data)
        earlier = self._replay_of(caller_account_id, admission, digest)
        if earlier is not None:
            return earlier
        started = self.clock()
        self.checkpoint("upload.started")
        matching = self.matcher.start_match(account_id, header.project_id, data)
        if in_store is None:
            try:
                with step("gateway.upload.store"):
                    storage_key = self.media_store.put(account_id, data)
            except BaseException:
                matching.cancel()
                raise
        else:
            storage_key = in_store.storage_key
        try:
            with step("gateway.upload.match_wait"):
                matched = matching.result()
            self.checkpoint("upload.matched")
            pending = PendingMedia(
                media_id=media_id,
                account_id=account_id,
                project_id=header.project_id,
                filename=header.filename,
                content_type=sniffed.content_type,
                size_bytes=len(data),
                storage_key=storage_key,
                request_id=header.request_id,
                digest=digest,
                uploaded_by_account_id=caller_account_id,
                key_id=key_id,
                create_project=not scope.exists,
            )

            def still_allowed(session: Session) -> None:
                now = upload_target(session, caller_account_id, header.project_id)
                if now.owner_account_id != account_id:  # removed from the owner's project
                    raise PermissionDenied(
                        "the caller's access to this project changed during the upload",
                        reason="PROJECT_ACCESS_CHANGED",
                    )
                may_upload(now)
                if in_store is not None:
                    in_store.commit_with(session)

            stored = self.commit(pending, matched, started, still_allowed)
        except IntegrityError:  # a concurrent retry of the same request stored it first
            if in_store is None:
                self.media_store.delete(account_id, storage_key)
            with self.db.read() as session:
                admission = self.admit(session, caller_account_id, header)
            earlier = self._replay_of(caller_account_id, admission, digest)
            if earlier is None:
                raise
            return earlier
        except BaseException:
            if in_store is None:
                self.media_store.delete(account_id, storage_key)
            raise
        logs.log(
            logger,
            "media matched",
            account=account_id,
            media=media_id,
            faces=len(stored.faces),
            kind=sniffed.kind,
        )
        return view_of(scope.role).media(stored)

    def commit(
        self,
        pending: PendingMedia,
        matched: Matched,
        started: datetime,
        within: Callable[[Session], None] | None = None,
    ) -> StoredMedia:
        """Keeps a matched media's results and queues their audit events in one commit, under
        the erasure fence, for an upload (at once) or a job (gateway/jobs.py) whose match
        started at `started`; `within` runs in that transaction after the fence check (a job
        ends itself there, or raises to keep nothing). The results as stored (every role's
        view is the caller's to apply)."""
        account_id, media_id = pending.account_id, pending.media_id
        media = MediaRow(
            media_id=media_id,
            account_id=account_id,
            project_id=pending.project_id,
            content_type=matched.content_type or pending.content_type,
            kind=matched.kind,
            size_bytes=pending.size_bytes,
            storage_key=pending.storage_key,
            engine=matched.engine,
            duration_seconds=matched.duration_seconds,
            created_at=self.clock(),
            request_id=pending.request_id or None,
            uploaded_by_account_id=pending.uploaded_by_account_id,
        )
        with step("gateway.upload.commit"), self.db.write() as session:
            # The fence: an erasure's intent and its scrub take this lock too, so either
            # the erasure began before this commit (and it is seen here: no event about
            # the talent is queued) or its drain and scrub run after it (its queued events
            # are delivered before the salt is shredded, its rows are scrubbed).
            with step("gateway.upload.fence"):
                self.fence.lock(session, account_id)
                if account_closed(session, account_id):  # closing: it keeps nothing more
                    raise FailedPrecondition(
                        "the project's account is closed", reason="ACCOUNT_CLOSED"
                    )
                if self.clock() - started > FENCE_WINDOW:
                    raise Unavailable("the upload took too long; retry", reason="UPLOAD_EXPIRED")
                results = self._fenced_out(session, account_id, matched.faces, started)
            if within is not None:
                within(session)
            # The talents' data keys (made if new), the account's for the events, and the
            # media's own for its file name: one insert and one read in this transaction.
            subjects = {f.talent_id for f in results if f.talent_id}
            if results:
                subjects.add(ACCOUNT_SUBJECT)
            # no name kept next to a fenced talent, as the erasure's scrub leaves none: a file
            # name may name them
            fenced = any(f.reason == common_pb2.LABEL_REASON_TALENT_ERASED for f in results)
            if pending.filename and not fenced:
                subjects.add(media_subject(media_id))
            with step("gateway.upload.keys"):
                keys = self.seals.keys(session, account_id, subjects, create=True)
            with step("gateway.upload.rows"):
                stored = self._rows(session, pending, media, results, keys, fenced)
        self.outbox.wake()
        return stored

    def _rows(
        self,
        session: Session,
        pending: PendingMedia,
        media: MediaRow,
        results: list[common_pb2.FaceResult],
        keys: dict[str, TalentKey],
        fenced: bool,
    ) -> StoredMedia:
        """Adds the media, its faces, its digest and its audit events to the commit's session;
        the results as stored."""
        account_id, media_id = pending.account_id, pending.media_id
        seal_filename(media, pending.filename, keys.get(media_subject(media_id)))
        if fenced:  # a job sealed the name under the media's key: every copy goes with it
            media_key = [(account_id, media_id)]
            self.seals.destroy_media_keys(session, media_key, owe_rotation=True)
        faces = [face_row(account_id, media_id, f, keys.get(f.talent_id)) for f in results]
        if pending.create_project:  # an owner's first upload to a new id creates it
            self.projects.create_in(session, account_id, pending.project_id)
        session.add(media)
        session.flush()
        session.add_all(faces)
        if pending.request_id:
            session.add(UploadDigestRow(media_id=media_id, digest=pending.digest))
        self.outbox.queue(
            session,
            account_id,
            self._audit_events(pending.key_id, media, results),
            keys.get(ACCOUNT_SUBJECT),
        )
        return StoredMedia(
            _media(media),
            [
                face_result(row, keys.get(f.talent_id))
                for row, f in zip(faces, results, strict=True)
            ],
        )

    def results(self, scope: Scope) -> StoredMedia:
        """The stored results of a media in the caller's scope (Projects.media_scope), as its
        role sees them."""
        owner = scope.owner_account_id
        stored = self._stored(scope.media_id, lambda media: media.account_id == owner)
        if stored is None:
            raise NotFound("no such media")
        return view_of(scope.role).media(stored)

    def filename(self, scope: Scope) -> str:
        """The file name of the media in the caller's scope, opened ("" when none was given,
        or an erasure blanked it)."""
        with self.db.read() as session:
            row = session.get(MediaRow, scope.media_id)
            return self.seals.filenames(session, [row])[row.media_id] if row is not None else ""

    def admit(self, session: Session, caller_account_id: str, header: UploadHeader) -> Admission:
        """An upload's reads before its bytes are analysed, in the caller's read transaction:
        the project's scope and, for a request id, what an earlier call under it stored."""
        scope = upload_target(session, caller_account_id, header.project_id)
        if not header.request_id:  # a fresh random media id: nothing stored under it
            return Admission(scope, None, None)
        media_id = media_id_for(caller_account_id, header.request_id)
        earlier = session.get(MediaRow, media_id)
        first = upload_digest(session, media_id) if earlier is not None else None
        return Admission(scope, earlier, first)

    def _replay_of(
        self, caller_account_id: str, admission: Admission, digest: str
    ) -> StoredMedia | None:
        """The stored upload of a retried request id; refused (IDEMPOTENCY_KEY_REUSED) when
        the first upload under that id had other content, or went to a project that the id
        does not name for the caller now (it was removed from it, say): a retry never reads
        what is out of the caller's scope."""
        media, scope = admission.earlier, admission.scope
        if media is None or _uploader(media) != caller_account_id:
            return None
        if (media.account_id, media.project_id) != (scope.owner_account_id, scope.project_id):
            raise key_reused("header.request_id")
        require_same(admission.earlier_digest or digest, digest, "header.request_id")
        earlier = self._stored(media.media_id, lambda _media: True)
        return view_of(scope.role).media(earlier) if earlier is not None else None

    def _stored(self, media_id: str, visible: Callable[[MediaRow], bool]) -> StoredMedia | None:
        with self.db.read() as session:
            media = session.get(MediaRow, media_id)
            if media is None or not visible(media):
                return None
            faces = self.seals.faces(session, media_faces(session, media_id))
            return StoredMedia(_media(media), faces)

    def _fenced_out(
        self,
        session: Session,
        account_id: str,
        faces: list[common_pb2.FaceResult],
        started: datetime,
    ) -> list[common_pb2.FaceResult]:
        """The results, with talents whose erasure is in progress or completed since the upload
        started made UNKNOWN / TALENT_ERASED (no talent id)."""
        fenced = self.fence.fenced(session, account_id, {f.talent_id for f in faces}, started)
        return [erased_face(f) if f.talent_id in fenced else f for f in faces]

    def _audit_events(
        self, key_id: str, media: MediaRow, faces: list[common_pb2.FaceResult]
    ) -> list[audit_pb2.MatchEventInput]:
        now = self.clock()
        return [
            match_event(
                f"{media.media_id}:{f.face_index}", media.project_id, media.media_id, f, key_id, now
            )
            for f in faces
        ]


class OrphanSweep:
    """Deletes stored objects no media refers to, left by a crash mid-upload or mid-purge (run
    at start-up and by the retention purge; only objects older than any upload can take)."""

    def __init__(self, db: Database, media_store: MediaStore, clock: Clock) -> None:
        self.db = db
        self.media_store = media_store
        self.clock = clock

    def sweep(self, limit: int | None = None) -> int:
        """At most `limit` objects deleted; their number."""
        deleted = 0
        for account_id, key in self.media_store.stale_keys(self.clock() - ORPHANED_AFTER):
            if limit is not None and deleted >= limit:
                break
            with self.db.read() as session:
                referenced = is_referenced(session, key)
            if not referenced:
                self.media_store.delete(account_id, key)
                deleted += 1
        return deleted


def _uploader(row: MediaRow) -> str:
    """The account that uploaded a media (NULL, for media uploaded before collaborators, reads
    as the owner)."""
    return row.uploaded_by_account_id or row.account_id


def _media(row: MediaRow) -> Media:
    return Media(
        media_id=row.media_id,
        project_id=row.project_id,
        kind=row.kind,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        duration_seconds=row.duration_seconds,
        engine=row.engine,
        created_at=row.created_at,
    )
