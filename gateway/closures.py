"""Closing an account: everything it holds goes, as one durable intent with a receipt.

1. **Fence** (one transaction, under the account's erasure-fence lock, which every upload's
   commit takes): the closure is journaled (`gateway_account_closures`), the account marked
   closed, its keys revoked (UNAUTHENTICATED from the next call, on every replica), its
   collaborations ended both ways (its collaborators lose its projects, it loses its roles in
   others'), its webhooks removed. An upload or a job of its projects that commits after this
   sees the closure and keeps nothing (`Uploads.commit`: ACCOUNT_CLOSED).
2. **Talents**: every talent the account has in consent, in the matcher or in the gateway's
   vault is erased exactly as `EraseTalent` does (gateway/erasure.py: its own intent, steps
   and receipt each), until none is left.
3. **Audit events** still queued for the account are delivered (its chain keeps them, talent
   hashes unlinkable once the salts are shredded; they expire with the audit's 12 months).
4. **Gateway data**, in one transaction under the fence lock: media, results, decisions and
   notes, upload digests, jobs, upload sessions, projects, collaborators and invitations,
   webhooks and deliveries, queued audit events, the retention setting, keys, the account's
   row (its name and sealed email), and every data key the gateway vault holds for it
   (the account's own, its media's: a rotation is owed); the stored objects of those rows are
   listed in the closure row in the same transaction.
5. **Stored objects** are deleted (after the commit, as the retention purge does), then the
   closure completes and the touched tables are scrubbed from the database's files.

Each step is idempotent and recorded when done; a closure stopped anywhere is finished by the
next `close` of the account or by the resumer (`resume`, with the erasures'). What outlives
the account, and why, is in docs/retention.md.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from gateway.audit_outbox import AuditOutbox
from gateway.erasure import ErasureFence, Erasures
from gateway.media_store import MediaStore
from gateway.peers import ConsentPort, MatcherPort
from gateway.seals import SEALED_TABLES, Seals
from gateway.store import (
    AccountClosureRow,
    AccountRetentionRow,
    AccountRow,
    ApiKeyRow,
    AuditOutboxRow,
    JobRow,
    JobSegmentRow,
    MediaFaceRow,
    MediaRow,
    ProjectMemberRow,
    ProjectRow,
    ReviewDecisionRow,
    TalentKeyRow,
    UploadDigestRow,
    UploadSessionRow,
    WebhookDeliveryRow,
    WebhookRow,
    account_closed,
    affected,
)
from mixip.runtime import logs
from mixip.runtime.checkpoints import Checkpoint, no_checkpoint
from mixip.runtime.db import Database
from mixip.runtime.errors import FailedPrecondition, NotFound
from mixip.runtime.times import Clock

logger = logging.getLogger("mixip.gateway")

# The steps after the fence, in order (a closure records each once done).
TALENTS, DELIVERED, DATA, OBJECTS = (
    "talents.erase",
    "gateway.deliver_audit_events",
    "gateway.delete_data",
    "media_store.delete_objects",
)
FENCE = "gateway.fence"
# Talents are listed again after each round of erasures (an enrollment in flight at the fence
# may have added one); this many rounds at most, then the closure fails and is resumed.
MAX_ROUNDS = 3

# The tables a closure deletes rows from: scrubbed from the database's files once it completes.
CLOSED_TABLES = tuple(
    sorted(
        {
            *SEALED_TABLES,
            AccountRow.__tablename__,
            ApiKeyRow.__tablename__,
            ProjectRow.__tablename__,
            ProjectMemberRow.__tablename__,
            UploadDigestRow.__tablename__,
            UploadSessionRow.__tablename__,
            JobRow.__tablename__,
            WebhookRow.__tablename__,
            WebhookDeliveryRow.__tablename__,
            AccountRetentionRow.__tablename__,
            TalentKeyRow.__tablename__,
        }
    )
)


@dataclass(frozen=True)
class ClosureStep:
    name: str
    count: int


@dataclass(frozen=True)
class Closure:
    """A closure's receipt: ids, counts and times, nothing personal."""

    receipt_id: str
    account_id: str
    closed_at: datetime
    completed_at: datetime | None
    steps: list[ClosureStep]

    @property
    def talents_erased(self) -> int:
        return sum(s.count for s in self.steps if s.name == TALENTS)


class Closures:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        fence: ErasureFence,
        seals: Seals,
        erasures: Erasures,
        matcher: MatcherPort,
        consent: ConsentPort,
        outbox: AuditOutbox,
        media_store: MediaStore,
    ) -> None:
        self.db = db
        self.clock = clock
        self.fence = fence
        self.seals = seals
        self.erasures = erasures
        self.matcher = matcher
        self.consent = consent
        self.outbox = outbox
        self.media_store = media_store
        # Tests stop a closure at each step boundary through this hook.
        self.checkpoint: Checkpoint = no_checkpoint

    def close(self, account_id: str, requested_by_key_id: str) -> Closure:
        """Closes the account (NOT_FOUND if it never existed); on a closure begun before,
        finishes what is left. Either way the one receipt of the account's closure."""
        self._fence(account_id, requested_by_key_id)
        self.checkpoint("close.fenced")
        return self._finish(account_id)

    # -- steps --------------------------------------------------------------------------------

    def _fence(self, account_id: str, key_id: str) -> None:
        with self.db.write() as session:
            self.fence.lock(session, account_id)
            if account_closed(session, account_id):
                return  # a second call: resume
            account = session.get(AccountRow, account_id)
            if account is None:
                raise NotFound("no such account")
            now = self.clock()
            account.closed_at = now
            revoked = affected(
                session,
                update(ApiKeyRow)
                .where(ApiKeyRow.account_id == account_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=now),
            )
            ended = affected(session, delete(ProjectMemberRow).where(_memberships(account_id)))
            removed = _delete_webhooks(session, account_id)
            session.add(
                AccountClosureRow(
                    account_id=account_id,
                    receipt_id=f"close_{secrets.token_hex(12)}",
                    requested_by_key_id=key_id,
                    created_at=now,
                    talents_erased=0,
                    steps=_steps_json([ClosureStep(FENCE, revoked + ended + removed)]),
                )
            )
        logs.log(
            logger,
            "account closing",
            account=account_id,
            key=key_id,
            keys_revoked=revoked,
            collaborations_ended=ended,
        )

    def _finish(self, account_id: str) -> Closure:
        row = self._row(account_id)
        done = {s.name for s in _steps(row)}
        if TALENTS not in done:
            self._record(account_id, ClosureStep(TALENTS, self._erase_talents(account_id)))
        self.checkpoint("close.talents")
        if DELIVERED not in done:
            self._record(account_id, ClosureStep(DELIVERED, self.outbox.drain(account_id)))
        self.checkpoint("close.delivered")
        if DATA not in done:
            self._delete_data(account_id)
        self.checkpoint("close.data")
        if OBJECTS not in done:
            self._delete_objects(account_id)
        closure = _closure(self._row(account_id))
        logs.log(
            logger,
            "account closed",
            account=account_id,
            receipt=closure.receipt_id,
            **{s.name.replace(".", "_"): s.count for s in closure.steps},
        )
        return closure

    def _erase_talents(self, account_id: str) -> int:
        """Erases every talent of the account as EraseTalent does (each its own intent and
        receipt), counting each in the closure as its erasure completes; how many in all (those
        of an interrupted run included)."""
        for _ in range(MAX_ROUNDS):
            talents = self._talents(account_id)
            if not talents:
                return self._row(account_id).talents_erased
            for talent_id in sorted(talents):
                self.erasures.erase(account_id, talent_id, "")
                with self.db.write() as session:
                    session.execute(
                        update(AccountClosureRow)
                        .where(AccountClosureRow.account_id == account_id)
                        .values(talents_erased=AccountClosureRow.talents_erased + 1)
                    )
        raise FailedPrecondition(
            "talents keep appearing while the account closes; retry", reason="CLOSURE_BUSY"
        )

    def _talents(self, account_id: str) -> set[str]:
        """Every talent the account has anywhere: consent records, enrolled faces, sealed data
        in the gateway (results, an open erasure)."""
        talents = {r.talent_id for r in self.consent.all_consent_records(account_id, "")}
        talents |= set(self.matcher.enrolled_talents(account_id))
        with self.db.read() as session:
            subjects = self.seals.vault.account_subjects(session, account_id)
        # The gateway's own subjects (the account's key, its media's) start with NUL.
        talents |= {s for s in subjects if s and not s.startswith("\x00")}
        return talents

    def _delete_data(self, account_id: str) -> None:
        with self.db.write() as session:
            self.fence.lock(session, account_id)
            row = session.get(AccountClosureRow, account_id)
            assert row is not None  # journaled by the fence
            if DATA in {s.name for s in _steps(row)}:
                return  # a concurrent call did it: its list of objects stands
            objects = _objects(session, account_id)
            own_media = select(MediaRow.media_id).where(MediaRow.account_id == account_id)
            count = sum(
                affected(session, statement)
                for statement in (
                    delete(MediaFaceRow).where(MediaFaceRow.account_id == account_id),
                    delete(ReviewDecisionRow).where(ReviewDecisionRow.account_id == account_id),
                    delete(UploadDigestRow).where(UploadDigestRow.media_id.in_(own_media)),
                    delete(MediaRow).where(MediaRow.account_id == account_id),
                    delete(JobSegmentRow).where(
                        JobSegmentRow.job_id.in_(
                            select(JobRow.job_id).where(JobRow.account_id == account_id)
                        )
                    ),
                    delete(JobRow).where(JobRow.account_id == account_id),
                    delete(UploadSessionRow).where(
                        or_(
                            UploadSessionRow.account_id == account_id,
                            UploadSessionRow.created_by_account_id == account_id,
                        )
                    ),
                    delete(ProjectMemberRow).where(_memberships(account_id)),
                    delete(ProjectRow).where(ProjectRow.account_id == account_id),
                    delete(AuditOutboxRow).where(AuditOutboxRow.account_id == account_id),
                    delete(AccountRetentionRow).where(AccountRetentionRow.account_id == account_id),
                    delete(ApiKeyRow).where(ApiKeyRow.account_id == account_id),
                    delete(AccountRow).where(AccountRow.account_id == account_id),
                )
            )
            count += _delete_webhooks(session, account_id)
            # its own key (email, notes, events), its media's (file names), any talent's left
            count += self.seals.vault.destroy_account(session, account_id)
            row.pending_objects = json.dumps(objects)
            row.steps = _steps_json([*_steps(row), ClosureStep(DATA, count)])

    def _delete_objects(self, account_id: str) -> None:
        """The stored objects of the rows step 4 deleted (idempotent: a missing one is gone),
        then the closure completes; then the database's files are scrubbed."""
        objects = json.loads(self._row(account_id).pending_objects or "[]")
        for owner, storage_key, upload_id in objects:
            if upload_id is None:
                self.media_store.delete(owner, storage_key)
            else:  # an upload session's parts
                self.media_store.abort(owner, storage_key, upload_id)
        with self.db.write() as session:
            row = session.get(AccountClosureRow, account_id)
            assert row is not None
            if row.completed_at is None:
                row.pending_objects = None
                row.steps = _steps_json([*_steps(row), ClosureStep(OBJECTS, len(objects))])
                row.completed_at = self.clock()
        self.db.scrub(CLOSED_TABLES)
        # the display name and an open upload session's file name were stored in clear: their
        # tables (small: a row per account; sessions live 24 h) are rewritten, so no dead tuple
        # keeps them in the live files (a plain VACUUM frees the space without overwriting it)
        self.db.rewrite([AccountRow.__tablename__, UploadSessionRow.__tablename__])

    def _record(self, account_id: str, step: ClosureStep) -> None:
        with self.db.write() as session:
            row = session.get(AccountClosureRow, account_id)
            assert row is not None
            if step.name not in {s.name for s in _steps(row)}:
                row.steps = _steps_json([*_steps(row), step])

    def _row(self, account_id: str) -> AccountClosureRow:
        with self.db.read() as session:
            row = session.get(AccountClosureRow, account_id)
        if row is None:
            raise NotFound("no such account")
        return row

    # -- resumer ------------------------------------------------------------------------------

    def resume(self) -> int:
        """Finishes every closure left incomplete (its caller stopped, or a gateway stopped
        mid-way); how many. A peer still down raises (the next run retries)."""
        with self.db.read() as session:
            pending = session.scalars(
                select(AccountClosureRow.account_id)
                .where(AccountClosureRow.completed_at.is_(None))
                .order_by(AccountClosureRow.created_at)
            ).all()
        for account_id in pending:
            self._finish(account_id)
        if pending:
            logs.log(logger, "account closures resumed", finished=len(pending))
        return len(pending)

    def pending(self) -> int:
        """Closures begun and not completed (for metrics)."""
        with self.db.read() as session:
            count = session.scalar(
                select(func.count()).where(AccountClosureRow.completed_at.is_(None))
            )
        return int(count or 0)


def _memberships(account_id: str) -> Any:
    """Collaborations of the account both ways: on its projects, and its own on others'."""
    return or_(
        ProjectMemberRow.owner_account_id == account_id,
        ProjectMemberRow.member_account_id == account_id,
    )


def _delete_webhooks(session: Session, account_id: str) -> int:
    deliveries = delete(WebhookDeliveryRow).where(WebhookDeliveryRow.account_id == account_id)
    endpoints = delete(WebhookRow).where(WebhookRow.account_id == account_id)
    return affected(session, deliveries) + affected(session, endpoints)


def _objects(session: Session, account_id: str) -> list[tuple[str, str, str | None]]:
    """(owner account, storage key, upload id of a session's parts, else None) of every stored
    object the account's rows refer to: its media, its unfinished jobs' bytes, the upload
    sessions of its projects or that it opened elsewhere (nobody can finish them now)."""
    found: dict[str, tuple[str, str, str | None]] = {}
    media = select(MediaRow.storage_key).where(MediaRow.account_id == account_id)
    for key in session.scalars(media):
        found[key] = (account_id, key, None)
    jobs = select(JobRow.storage_key).where(
        JobRow.account_id == account_id, JobRow.finished_at.is_(None)
    )
    for key in session.scalars(jobs):
        found.setdefault(key, (account_id, key, None))
    sessions = select(UploadSessionRow).where(
        or_(
            UploadSessionRow.account_id == account_id,
            UploadSessionRow.created_by_account_id == account_id,
        )
    )
    for row in session.scalars(sessions):
        upload_id = None if row.completed else row.upload_id
        found.setdefault(row.storage_key, (row.account_id, row.storage_key, upload_id))
    return list(found.values())


def _steps(row: AccountClosureRow) -> list[ClosureStep]:
    return [ClosureStep(s["name"], s["count"]) for s in json.loads(row.steps or "[]")]


def _steps_json(steps: list[ClosureStep]) -> str:
    return json.dumps([{"name": s.name, "count": s.count} for s in steps])


def _closure(row: AccountClosureRow) -> Closure:
    return Closure(row.receipt_id, row.account_id, row.created_at, row.completed_at, _steps(row))
