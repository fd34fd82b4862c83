"""Gateway use cases: orchestration of the four services around the client's account.

The gateway decides nothing about faces or consent: it authenticates, stores media
encrypted, and calls the services in the order the privacy promises need:
- an upload's results are returned (and kept) only after their audit events are recorded; if
  the audit service cannot record them, the upload fails cleanly (UNAVAILABLE) and nothing is
  kept;
- an erasure is a fence (gateway/erasure.py): journaled first, consent erased before the face
  vectors, the audit salt and our own references; an upload commits its results only if no
  erasure of its talents began meanwhile, checked in the transaction that stores them.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.protobuf import json_format
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.erasure import (
    FENCE_WINDOW,
    Checkpoint,
    ErasureFence,
    ErasurePeers,
    Erasures,
    ErasureStep,
    no_checkpoint,
)
from gateway.media_store import MediaStore
from gateway.store import MediaFaceRow, MediaRow, UploadDigestRow
from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2, consent_pb2_grpc
from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.retention.v1 import retention_pb2_grpc
from mixip.runtime import logs
from mixip.runtime.db import Database
from mixip.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mixip.runtime.idempotency import content_digest, require_same
from mixip.runtime.media import MediaError, sniff
from mixip.runtime.times import Clock, iso, to_timestamp

logger = logging.getLogger("mixip.gateway")

EXPORT_SCHEMA = "mixip.talent-export/1"
# An unreferenced stored object older than this was left by a crash mid-upload (no upload
# takes this long: UploadMedia's deadline is 15 minutes).
ORPHANED_AFTER = timedelta(hours=1)


@dataclass
class Peers:
    """Stubs of the four services, on channels made by the composition root."""

    matcher: matcher_pb2_grpc.MatcherServiceStub
    consent: consent_pb2_grpc.ConsentServiceStub
    audit: audit_pb2_grpc.AuditServiceStub
    retention: retention_pb2_grpc.RetentionServiceStub


@dataclass(frozen=True)
class UploadHeader:
    project_id: str
    filename: str
    request_id: str


@dataclass(frozen=True)
class StoredMedia:
    media: MediaRow
    faces: list[MediaFaceRow]


def media_id_for(account_id: str, request_id: str) -> str:
    """Deterministic for a retried request (so audit idempotency keys repeat), random otherwise."""
    if request_id:
        digest = hashlib.sha256(f"{account_id}\x00{request_id}".encode()).hexdigest()[:24]
        return f"med_{digest}"
    return f"med_{secrets.token_hex(12)}"


class Gateway:
    def __init__(
        self,
        db: Database,
        peers: Peers,
        media_store: MediaStore,
        clock: Clock,
        *,
        max_upload_bytes: int,
        max_chunk_bytes: int,
    ) -> None:
        self.db = db
        self.peers = peers
        self.media_store = media_store
        self.clock = clock
        self.max_upload_bytes = max_upload_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.fence = ErasureFence(db, clock)
        self.erasures = Erasures(
            db, ErasurePeers(peers.matcher, peers.consent, peers.audit), self.fence, clock
        )
        # Tests pause uploads and erasures at their step boundaries through this hook.
        self.checkpoint: Checkpoint = no_checkpoint
        self.erasures.checkpoint = lambda name: self.checkpoint(name)

    # -- upload -------------------------------------------------------------------------------

    def receive(self, chunks: Iterator[bytes]) -> bytes:
        """The whole upload, refused as soon as it passes the limit (nothing is stored yet)."""
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

    def upload(
        self, account_id: str, key_id: str, header: UploadHeader, data: bytes
    ) -> StoredMedia:
        """Store encrypted and match (at once) → record audit events → keep the results.

        The matcher works while the media is encrypted and stored, so the upload's latency
        does not add the two. Nothing refers to the stored object until the last step commits,
        so a failure (or a crash) at any point leaves at most an unreferenced object, deleted
        here or by the start-up sweep; a retry with the same request id redoes the work, and
        the audit service's idempotency keys keep it from recording the events twice."""
        try:
            sniffed = sniff(data)
        except MediaError as exc:
            raise InvalidArgument.one("chunk", str(exc), reason="BAD_MEDIA") from exc
        media_id = media_id_for(account_id, header.request_id)
        digest = content_digest(header.project_id, data)
        earlier = self._replayed(account_id, media_id, digest)
        if earlier is not None:
            return earlier
        started = self.clock()
        self.checkpoint("upload.started")
        matching = self.peers.matcher.MatchMedia.future(
            matcher_pb2.MatchMediaRequest(
                account_id=account_id, project_id=header.project_id, media=data
            )
        )
        try:
            storage_key = self.media_store.put(account_id, data)
        except BaseException:
            matching.cancel()
            raise
        try:
            matched = matching.result()
            self.checkpoint("upload.matched")
            media = MediaRow(
                media_id=media_id,
                account_id=account_id,
                project_id=header.project_id,
                filename=header.filename,
                content_type=matched.content_type or sniffed.content_type,
                kind=matched.kind,
                size_bytes=len(data),
                storage_key=storage_key,
                engine=matched.engine,
                duration_seconds=matched.duration_seconds,
                created_at=self.clock(),
                request_id=header.request_id or None,
            )
            with self.db.read() as session:  # no event about a talent being erased
                results = self._fenced_out(session, account_id, list(matched.faces), started)
            self.checkpoint("upload.rechecked")
            self._record_audit(account_id, key_id, media, results)
            self.checkpoint("upload.audited")
            with self.db.write() as session:
                # The fence: an erasure's intent and its scrub take this lock too, so either
                # the erasure began before this commit (and it is seen here) or its scrub runs
                # after it (and scrubs these rows).
                self.fence.lock(session, account_id)
                if self.clock() - started > FENCE_WINDOW:
                    raise Unavailable("the upload took too long; retry", reason="UPLOAD_EXPIRED")
                results = self._fenced_out(session, account_id, results, started)
                faces = [_face_row(account_id, media_id, f) for f in results]
                session.add(media)
                session.flush()
                session.add_all(faces)
                if header.request_id:
                    session.add(UploadDigestRow(media_id=media_id, digest=digest))
        except IntegrityError:  # a concurrent retry of the same request stored it first
            self.media_store.delete(account_id, storage_key)
            earlier = self._replayed(account_id, media_id, digest)
            if earlier is None:
                raise
            return earlier
        except BaseException:
            self.media_store.delete(account_id, storage_key)
            raise
        logs.log(
            logger,
            "media matched",
            account=account_id,
            media=media_id,
            faces=len(faces),
            kind=sniffed.kind,
        )
        return StoredMedia(media, faces)

    def _replayed(self, account_id: str, media_id: str, digest: str) -> StoredMedia | None:
        """The stored upload of a retried request id; refused (IDEMPOTENCY_KEY_REUSED) when
        the first upload under that id had other content."""
        earlier = self._stored(account_id, media_id)
        if earlier is None:
            return None
        with self.db.read() as session:
            first = session.scalar(
                select(UploadDigestRow.digest).where(UploadDigestRow.media_id == media_id)
            )
        require_same(first or digest, digest, "header.request_id")
        return earlier

    def _stored(self, account_id: str, media_id: str) -> StoredMedia | None:
        with self.db.read() as session:
            media = session.get(MediaRow, media_id)
            if media is None or media.account_id != account_id:
                return None
            return StoredMedia(media, self._faces(session, media_id))

    def _fenced_out(
        self, session: Session, account_id: str, faces: list, started: datetime
    ) -> list[common_pb2.FaceResult]:
        """The results, with talents whose erasure is in progress or completed since the upload
        started made UNKNOWN / TALENT_ERASED (no talent id)."""
        fenced = self.fence.fenced(session, account_id, {f.talent_id for f in faces}, started)
        return [
            _unknown(f, common_pb2.LABEL_REASON_TALENT_ERASED) if f.talent_id in fenced else f
            for f in faces
        ]

    def _record_audit(self, account_id: str, key_id: str, media: MediaRow, faces) -> None:
        if not faces:
            return
        now = to_timestamp(self.clock())
        events = [
            audit_pb2.MatchEventInput(
                idempotency_key=f"{media.media_id}:{f.face_index}",
                project_id=media.project_id,
                media_id=media.media_id,
                face_index=f.face_index,
                label=f.label,
                reason=f.reason,
                similarity=f.similarity,
                talent_id=f.talent_id,
                actor=key_id,
                occurred_at=now,
            )
            for f in faces
        ]
        for start in range(0, len(events), 1000):
            self.peers.audit.RecordMatchEvents(
                audit_pb2.RecordMatchEventsRequest(
                    account_id=account_id, events=events[start : start + 1000]
                )
            )

    def sweep_orphans(self, limit: int | None = None) -> int:
        """Deletes stored objects no media refers to, left by a crash mid-upload or mid-purge
        (run at start-up and by the retention purge; only objects older than any upload can
        take), at most `limit` of them."""
        deleted = 0
        for account_id, key in self.media_store.stale_keys(self.clock() - ORPHANED_AFTER):
            if limit is not None and deleted >= limit:
                break
            with self.db.read() as session:
                referenced = session.scalar(
                    select(MediaRow.media_id).where(MediaRow.storage_key == key)
                )
            if referenced is None:
                self.media_store.delete(account_id, key)
                deleted += 1
        return deleted

    def results(self, account_id: str, media_id: str) -> StoredMedia:
        stored = self._stored(account_id, media_id)
        if stored is None:
            raise NotFound("no such media")
        return stored

    @staticmethod
    def _faces(session, media_id: str) -> list[MediaFaceRow]:
        return list(
            session.scalars(
                select(MediaFaceRow)
                .where(MediaFaceRow.media_id == media_id)
                .order_by(MediaFaceRow.face_index)
            )
        )

    # -- data-subject rights ------------------------------------------------------------------

    def record_consent(
        self, request: consent_pb2.RecordConsentRequest
    ) -> consent_pb2.RecordConsentResponse:
        """Records a consent, refused while an erasure of the talent is in progress (it would
        survive the erasure). A biometric grant starts the talent's new life after an erasure:
        it lifts the audit's shred marker, after the record is stored (a failed lift leaves
        events unlinkable, the safe side; the caller's retry lifts it)."""
        if self.fence.in_progress(request.account_id, request.talent_id):
            raise FailedPrecondition(
                "an erasure of this talent is in progress; retry when it has completed",
                reason="ERASURE_IN_PROGRESS",
            )
        reply = self.peers.consent.RecordConsent(request)
        if (
            request.scope == consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING
            and request.decision == consent_pb2.CONSENT_DECISION_GRANTED
        ):
            self.peers.audit.LiftShredMarker(
                audit_pb2.LiftShredMarkerRequest(
                    account_id=request.account_id, talent_id=request.talent_id
                )
            )
        return reply

    def export(self, account_id: str, talent_id: str) -> dict:
        """Everything the mesh holds about the talent, linked while links exist."""
        consents = _all_pages(
            lambda token: self.peers.consent.ListConsentRecords(
                consent_pb2.ListConsentRecordsRequest(
                    account_id=account_id, talent_id=talent_id, page_size=1000, page_token=token
                )
            ),
            "records",
        )
        face_records = _all_pages(
            lambda token: self.peers.matcher.ListTalentFaces(
                matcher_pb2.ListTalentFacesRequest(
                    account_id=account_id, talent_id=talent_id, page_size=1000, page_token=token
                )
            ),
            "faces",
        )
        events = _all_pages(
            lambda token: self.peers.audit.ListEvents(
                audit_pb2.ListEventsRequest(
                    account_id=account_id, talent_id=talent_id, page_size=1000, page_token=token
                )
            ),
            "events",
        )
        with self.db.read() as session:
            results = session.execute(
                select(MediaFaceRow, MediaRow.project_id, MediaRow.created_at)
                .join(MediaRow, MediaRow.media_id == MediaFaceRow.media_id)
                .where(MediaFaceRow.account_id == account_id, MediaFaceRow.talent_id == talent_id)
                .order_by(MediaRow.created_at, MediaFaceRow.face_index)
            ).all()
        if not (consents or face_records or events or results):
            raise NotFound("no data about this talent in this account")
        return {
            "schema_version": EXPORT_SCHEMA,
            "generated_at": iso(self.clock()),
            "account_id": account_id,
            "talent_id": talent_id,
            "consent_records": [_json(r) for r in consents],
            "face_records": [_json(f) for f in face_records],
            "audit_events": [_json(e) for e in events],
            "media_results": [
                {
                    "media_id": face.media_id,
                    "project_id": project_id,
                    "uploaded_at": iso(created_at),
                    "face_index": face.face_index,
                    "label": common_pb2.FaceLabel.Name(face.label),
                    "reason": common_pb2.LabelReason.Name(face.reason),
                    "similarity": face.similarity,
                }
                for face, project_id, created_at in results
            ],
        }

    def erase(
        self, account_id: str, talent_id: str, request_id: str
    ) -> tuple[str, list[ErasureStep]]:
        """See gateway/erasure.py: journaled, fenced, resumed if abandoned."""
        return self.erasures.erase(account_id, talent_id, request_id)


def _unknown(face: common_pb2.FaceResult, reason: int) -> common_pb2.FaceResult:
    """The face as an UNKNOWN result, without its talent."""
    return common_pb2.FaceResult(
        face_index=face.face_index,
        box=face.box,
        label=common_pb2.FACE_LABEL_UNKNOWN,
        reason=reason,
        ranges=face.ranges,
        best_frame_seconds=face.best_frame_seconds,
        detection_score=face.detection_score,
    )


def _face_row(account_id: str, media_id: str, face: common_pb2.FaceResult) -> MediaFaceRow:
    b = face.box
    return MediaFaceRow(
        media_id=media_id,
        face_index=face.face_index,
        account_id=account_id,
        label=face.label,
        reason=face.reason,
        similarity=face.similarity,
        talent_id=face.talent_id or None,
        box=f"{b.x},{b.y},{b.width},{b.height}",
        detection_score=face.detection_score,
        best_frame_seconds=face.best_frame_seconds,
        ranges=";".join(f"{r.start_seconds}-{r.end_seconds}" for r in face.ranges),
    )


def face_result(row: MediaFaceRow) -> common_pb2.FaceResult:
    x, y, w, h = (int(v) for v in row.box.split(","))
    ranges = []
    for part in filter(None, row.ranges.split(";")):
        start, end = part.split("-")
        ranges.append(common_pb2.TimeRange(start_seconds=float(start), end_seconds=float(end)))
    return common_pb2.FaceResult(
        face_index=row.face_index,
        box=common_pb2.BoundingBox(x=x, y=y, width=w, height=h),
        label=row.label,
        reason=row.reason,
        similarity=row.similarity,
        talent_id=row.talent_id or "",
        ranges=ranges,
        best_frame_seconds=row.best_frame_seconds,
        detection_score=row.detection_score,
    )


def _all_pages(call: Callable[[str], object], field: str) -> list:
    items, token = [], ""
    while True:
        page = call(token)
        items.extend(getattr(page, field))
        token = page.next_page_token
        if not token:
            return items


def _json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
