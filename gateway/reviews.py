"""Review: a project's media as listed for review, and the review decisions on their faces.

A decision is append-only (the latest per face is the current one) and never changes a face's
label, nor does a label change a decision. Each decision is recorded as an audit event in the
owner's chain (kind REVIEW_DECISION), carrying the face's result at decision time, its talent
hashed like a match event's, the way an upload's events go: the row and its event in one
commit, through the audit outbox (gateway/audit_outbox.py), delivered within seconds; while the
audit service is down decisions are still kept and their events wait. The commit takes the
erasure fence lock and reads the face under it: an event never names a talent whose erasure is
in progress or completed since the call started (gateway/erasure.py).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.audit_outbox import AuditOutbox, match_event
from gateway.erasure import ErasureFence
from gateway.projects import Scope, from_micros, micros
from gateway.role_views import view_of
from gateway.seals import ACCOUNT_SUBJECT, Seals, decision_digest
from gateway.store import AccountRow, MediaFaceRow, MediaRow, ReviewDecisionRow, erased_face
from mixip.common.v1 import common_pb2
from mixip.runtime import logs
from mixip.runtime.checkpoints import Checkpoint, no_checkpoint
from mixip.runtime.db import Database
from mixip.runtime.errors import FieldViolation, InvalidArgument, NotFound
from mixip.runtime.idempotency import require_same
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.times import Clock

logger = logging.getLogger("mixip.gateway")


@dataclass(frozen=True)
class NewDecision:
    face_index: int
    decision: int
    note: str
    request_id: str
    confirm_not_cleared: bool = False
    """The person confirms approving a face whose label is not CLEARED."""


@dataclass(frozen=True)
class Decision:
    decision_id: str
    media_id: str
    face_index: int
    decision: int
    note: str
    decided_by_account_id: str
    decided_by_key_id: str
    decided_at: datetime
    decided_by_name: str = ""
    """The deciding account's name, for people to read."""


@dataclass(frozen=True)
class MediaSummary:
    media_id: str
    project_id: str
    filename: str
    kind: int
    content_type: str
    created_at: datetime
    uploaded_by_account_id: str
    face_count: int = 0
    cleared_faces: int = 0
    possible_faces: int = 0
    unknown_faces: int = 0
    undecided_faces: int = 0


def decision_id_for(account_id: str, request_id: str) -> str:
    """Deterministic for a retried request (so its audit idempotency key repeats), random
    otherwise."""
    if request_id:
        digest = hashlib.sha256(f"{account_id}\x00{request_id}".encode()).hexdigest()[:24]
        return f"dec_{digest}"
    return f"dec_{secrets.token_hex(12)}"


class Reviews:
    def __init__(
        self, db: Database, outbox: AuditOutbox, fence: ErasureFence, clock: Clock, seals: Seals
    ) -> None:
        self.db = db
        self.seals = seals
        self.outbox = outbox
        self.fence = fence
        self.clock = clock
        # Tests pause a decision at its step boundaries through this hook.
        self.checkpoint: Checkpoint = no_checkpoint

    # -- decisions ----------------------------------------------------------------------------

    def decide(
        self, scope: Scope, caller_account_id: str, key_id: str, new: NewDecision
    ) -> Decision:
        """Records a decision on a face of the media in `scope` (Projects.media_scope with
        REVIEW) and queues its audit event in the same commit (gateway/audit_outbox.py). A
        retry with the same request id (the caller's) returns the first call's decision."""
        owner, media_id = scope.owner_account_id, scope.media_id
        decision_id = decision_id_for(caller_account_id, new.request_id)
        earlier = self._replayed(caller_account_id, media_id, new)
        if earlier is not None:
            return earlier
        started = self.clock()
        with self.db.read() as session:
            name = _names(session, {caller_account_id}).get(caller_account_id, "")
        self.checkpoint("review.started")
        row = ReviewDecisionRow(
            decision_id=decision_id,
            account_id=owner,
            media_id=media_id,
            face_index=new.face_index,
            decision=new.decision,
            decided_by_account_id=caller_account_id,
            decided_by_key_id=key_id,
            decided_at=started,
            request_id=new.request_id or None,
        )
        try:
            with self.db.write() as session:
                # As an upload's commit: the face is read under the fence lock, which an
                # erasure's intent and its scrub take too, so the event either was queued
                # before the intent (the erasure's drain delivers it before the salt dies) or
                # sees the intent or the scrub and carries no talent.
                self.fence.lock(session, owner)
                face = session.get(MediaFaceRow, (media_id, new.face_index))
                if face is None:
                    raise NotFound("no such face")
                (stored,) = self.seals.faces(session, [face])
                result = self._fenced_out(session, owner, stored, started)
                _require_confirmation(new, result.label)
                # the note (and the retry digest) sealed under the face's talent's key as the
                # face is now, else the account's
                self.seals.seal_decision(session, row, new.note, face.talent_ref)
                session.add(row)
                session.flush()
                event = match_event(
                    f"review:{decision_id}",
                    scope.project_id,
                    media_id,
                    result,
                    key_id,
                    started,
                    decision=new.decision,
                )
                keys = self.seals.keys(session, owner, [ACCOUNT_SUBJECT], create=True)
                self.outbox.queue(session, owner, [event], keys.get(ACCOUNT_SUBJECT))
                self.checkpoint("review.queued")  # in the commit: a failure keeps neither
                decided = _decision(row, new.note, name)
        except IntegrityError:  # a concurrent retry stored it first, or the media was purged
            earlier = self._replayed(caller_account_id, media_id, new)
            if earlier is None:
                raise NotFound("no such media") from None
            return earlier
        self.outbox.wake()
        logs.log(
            logger,
            "review decision recorded",
            account=owner,
            key=key_id,
            media=media_id,
            face=new.face_index,
            decision=new.decision,
        )
        return decided

    def decisions(self, scope: Scope) -> list[Decision]:
        """Every decision on the faces of the media in `scope` (Projects.media_scope with
        READ), oldest first, as the caller's role sees them."""
        with self.db.read() as session:
            rows = session.scalars(
                select(ReviewDecisionRow)
                .where(ReviewDecisionRow.media_id == scope.media_id)
                .order_by(ReviewDecisionRow.sequence)
            ).all()
            notes = self.seals.notes(session, list(rows))
            names = _names(session, {r.decided_by_account_id for r in rows})
            decisions = [
                _decision(r, notes[r.decision_id], names.get(r.decided_by_account_id, ""))
                for r in rows
            ]
        return view_of(scope.role).decisions(decisions)

    def _replayed(self, caller_account_id: str, media_id: str, new: NewDecision) -> Decision | None:
        """The decision recorded earlier under the request id; refused if it had other content.
        Its digest is keyed with the row's key: a digest whose note an erasure blanked (or
        whose key is gone) is none, and the retry is answered as it stands."""
        if not new.request_id:
            return None
        with self.db.read() as session:
            row = session.scalars(
                select(ReviewDecisionRow).where(
                    ReviewDecisionRow.decided_by_account_id == caller_account_id,
                    ReviewDecisionRow.request_id == new.request_id,
                )
            ).first()
            if row is None:
                return None
            note = self.seals.notes(session, [row])[row.decision_id]
            key = self.seals.decision_key(session, row) if row.digest else None
            name = _names(session, {caller_account_id}).get(caller_account_id, "")
        if key is not None:
            again = decision_digest(key, media_id, new.face_index, new.decision, new.note)
            require_same(row.digest, again)
        return _decision(row, note, name)

    def _fenced_out(
        self, session: Session, owner: str, face: common_pb2.FaceResult, started: datetime
    ) -> common_pb2.FaceResult:
        """The face's result as the event carries it: erased (gateway/store.py) when an
        erasure of the talent is in progress or completed since the call started."""
        talent = face.talent_id
        if talent and talent in self.fence.fenced(session, owner, {talent}, started):
            return erased_face(face)
        return face

    # -- listing ------------------------------------------------------------------------------

    def media(
        self,
        scope: Scope,
        caller_account_id: str,
        *,
        label: int,
        undecided: bool,
        page_size: int,
        after: list[str] | None,
    ) -> tuple[list[MediaSummary], list[str] | None]:
        """A project's media (Projects.project_scope with READ), newest first; an uploader's
        own uploads only; as the caller's role sees them, and filtered only by what it sees.
        Positions: [created (micros), media id]."""
        view = view_of(scope.role)
        view.require_filters(label, undecided)
        query = select(MediaRow).where(
            MediaRow.account_id == scope.owner_account_id,
            MediaRow.project_id == scope.project_id,
        )
        if scope.sees_own_uploads_only:
            query = query.where(MediaRow.uploaded_by_account_id == caller_account_id)
        of_media = MediaFaceRow.media_id == MediaRow.media_id
        if label:
            query = query.where(exists().where(of_media, MediaFaceRow.label == label))
        if undecided:
            query = query.where(exists().where(of_media, _undecided()))
        if after is not None:
            moment = from_micros(after[0])
            query = query.where(
                or_(
                    MediaRow.created_at < moment,
                    and_(MediaRow.created_at == moment, MediaRow.media_id < after[1]),
                )
            )
        query = query.order_by(MediaRow.created_at.desc(), MediaRow.media_id.desc()).limit(
            fetch_limit(page_size)
        )
        with self.db.read() as session:
            rows = list(session.scalars(query))
            page, last = page_of(rows, page_size, lambda r: r)
            counts = _face_counts(session, [r.media_id for r in page])
            names = self.seals.filenames(session, page)
        summaries = [
            view.summary(_summary(r, names[r.media_id], counts.get(r.media_id, {}))) for r in page
        ]
        return summaries, [micros(last.created_at), last.media_id] if last else None


def _undecided() -> ColumnElement[bool]:
    """A face without any decision."""
    return ~exists().where(
        ReviewDecisionRow.media_id == MediaFaceRow.media_id,
        ReviewDecisionRow.face_index == MediaFaceRow.face_index,
    )


def _face_counts(session: Session, media_ids: list[str]) -> dict[str, dict[str, int]]:
    """Per media: faces per label ("label:<n>") and undecided faces ("undecided")."""
    counts: dict[str, dict[str, int]] = {}
    if not media_ids:
        return counts
    by_label = session.execute(
        select(MediaFaceRow.media_id, MediaFaceRow.label, func.count())
        .where(MediaFaceRow.media_id.in_(media_ids))
        .group_by(MediaFaceRow.media_id, MediaFaceRow.label)
    )
    for media_id, label, count in by_label:
        counts.setdefault(media_id, {})[f"label:{label}"] = int(count)
    pending = session.execute(
        select(MediaFaceRow.media_id, func.count())
        .where(MediaFaceRow.media_id.in_(media_ids), _undecided())
        .group_by(MediaFaceRow.media_id)
    )
    for media_id, count in pending:
        counts.setdefault(media_id, {})["undecided"] = int(count)
    return counts


def _summary(row: MediaRow, filename: str, counts: dict[str, int]) -> MediaSummary:
    def label(value: int) -> int:
        return counts.get(f"label:{value}", 0)

    return MediaSummary(
        media_id=row.media_id,
        project_id=row.project_id,
        filename=filename,
        kind=row.kind,
        content_type=row.content_type,
        created_at=row.created_at,
        uploaded_by_account_id=row.uploaded_by_account_id or row.account_id,
        face_count=sum(v for k, v in counts.items() if k.startswith("label:")),
        cleared_faces=label(common_pb2.FACE_LABEL_CLEARED),
        possible_faces=label(common_pb2.FACE_LABEL_POSSIBLE),
        unknown_faces=label(common_pb2.FACE_LABEL_UNKNOWN),
        undecided_faces=counts.get("undecided", 0),
    )


def _require_confirmation(new: NewDecision, label: int) -> None:
    """Approving for release a face the matcher did not label CLEARED (POSSIBLE, UNKNOWN) needs
    the person's explicit confirmation: the safe choice is never the default one."""
    approving = new.decision == common_pb2.REVIEW_DECISION_APPROVED_FOR_RELEASE
    if approving and label != common_pb2.FACE_LABEL_CLEARED and not new.confirm_not_cleared:
        shown = common_pb2.FaceLabel.Name(common_pb2.FaceLabel.ValueType(label))
        text = (
            f"face {new.face_index} is {shown.removeprefix('FACE_LABEL_')}, not CLEARED: "
            "confirm to approve it for release anyway"
        )
        error = InvalidArgument(
            [FieldViolation("confirm_not_cleared", text)], text, reason="NOT_CLEARED_UNCONFIRMED"
        )
        error.metadata = {"label": shown.removeprefix("FACE_LABEL_")}
        raise error


def _names(session: Session, account_ids: set[str]) -> dict[str, str]:
    """The accounts' names by id: one query."""
    if not account_ids:
        return {}
    rows = session.execute(
        select(AccountRow.account_id, AccountRow.name).where(AccountRow.account_id.in_(account_ids))
    )
    return {account_id: name for account_id, name in rows}


def _decision(row: ReviewDecisionRow, note: str, name: str) -> Decision:
    return Decision(
        decided_by_name=name,
        decision_id=row.decision_id,
        media_id=row.media_id,
        face_index=row.face_index,
        decision=row.decision,
        note=note,
        decided_by_account_id=row.decided_by_account_id,
        decided_by_key_id=row.decided_by_key_id,
        decided_at=row.decided_at,
    )
