"""Audit use cases, each one unit of work: record, list, verify, shred, purge."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, select
from sqlalchemy.orm import Session

from mixip.runtime import logs
from mixip.runtime.db import Database, bulk_insert, insert_ignoring_conflicts, rowcount, serialize
from mixip.runtime.idempotency import require_same
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.times import Clock, as_utc
from services.audit.domain import (
    GENESIS_HASH,
    ChainedEvent,
    ChainVerdict,
    EventContent,
    StoredLink,
    chain_hash,
    talent_hash,
    verify_chain,
)
from services.audit.store import ChainHead, Checkpoint, EventRow, ShredMarkerRow
from services.audit.vault import Rotation, SaltVault, VaultStatus

logger = logging.getLogger("mixip.audit")
PURGE_LOCK = "mixip.audit.purge"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class NewEvent:
    idempotency_key: str
    project_id: str
    media_id: str
    face_index: int
    label: int
    reason: int
    similarity: float
    talent_id: str  # "" when the face matched no talent
    actor: str
    occurred_at: datetime


@dataclass(frozen=True)
class _Recorded:
    """What a repeated idempotency key must match (similarities compared as stored)."""

    project_id: str
    media_id: str
    face_index: int
    label: int
    reason: int
    similarity: float
    talent_hash: bytes | None


def _recorded(event: NewEvent, salts: dict[str, bytes], shredded: set[str]) -> _Recorded:
    hashed = None
    if event.talent_id and event.talent_id not in shredded:
        salt = salts.get(event.talent_id)
        # no salt: the talent was erased since; nothing stored can match this event
        hashed = talent_hash(salt, event.talent_id) if salt else b"erased"
    return _Recorded(
        event.project_id,
        event.media_id,
        event.face_index,
        event.label,
        event.reason,
        event.similarity,
        hashed,
    )


@dataclass(frozen=True)
class EventFilter:
    account_id: str
    talent_id: str = ""
    project_id: str = ""
    since: datetime | None = None


@dataclass(frozen=True)
class LogVerdict:
    ok: bool
    events_checked: int
    chains_checked: int
    first_broken_sequence: int = 0
    broken_account_id: str = ""
    detail: str = ""


class AuditLog:
    def __init__(self, db: Database, vault: SaltVault, clock: Clock) -> None:
        self.db = db
        self.vault = vault
        self.clock = clock

    # -- record -------------------------------------------------------------------------------

    def record(self, account_id: str, events: list[NewEvent]) -> tuple[int, int]:
        """Appends events to the account's chain; returns (recorded, duplicates)."""
        with self.db.write() as session:
            head = self._locked_head(session, account_id)
            keys = [e.idempotency_key for e in events]
            stored: dict[str, _Recorded | None] = {
                row.idempotency_key: _Recorded(*row[1:])
                for row in session.execute(
                    select(
                        EventRow.idempotency_key,
                        EventRow.project_id,
                        EventRow.media_id,
                        EventRow.face_index,
                        EventRow.label,
                        EventRow.reason,
                        EventRow.similarity,
                        EventRow.talent_hash,
                    ).where(EventRow.account_id == account_id, EventRow.idempotency_key.in_(keys))
                )
            }
            fresh: list[NewEvent] = []
            repeated: list[NewEvent] = []
            for event in events:
                if event.idempotency_key in stored:
                    repeated.append(event)
                else:
                    stored[event.idempotency_key] = None  # recorded below
                    fresh.append(event)
            talents = {e.talent_id for e in events if e.talent_id}
            # An erased talent (shred marker) gets no salt and no hash: its events are recorded
            # unlinkable. The chain head locked above serializes this with ShredTalentSalt.
            shredded = self._shredded(session, account_id, talents)
            # Most talents were seen before: read their salts, create only the missing ones
            # (and only for events about to be recorded).
            salts = self.vault.salts(session, account_id, talents - shredded, create=False)
            missing = {e.talent_id for e in fresh if e.talent_id} - set(salts) - shredded
            if missing:
                salts |= self.vault.salts(session, account_id, missing, create=True)
            first_of = {e.idempotency_key: e for e in fresh}
            for event in repeated:
                self._check_repeat(event, stored[event.idempotency_key], first_of, salts, shredded)
            recorded_at = max(self.clock(), as_utc(head.last_recorded_at))
            sequence, prev = head.last_sequence, head.last_hash
            rows = []
            for event in fresh:
                sequence += 1
                content = EventContent(
                    account_id=account_id,
                    sequence=sequence,
                    idempotency_key=event.idempotency_key,
                    project_id=event.project_id,
                    media_id=event.media_id,
                    face_index=event.face_index,
                    label=event.label,
                    reason=event.reason,
                    similarity=event.similarity,
                    talent_hash=(
                        talent_hash(salts[event.talent_id], event.talent_id)
                        if event.talent_id and event.talent_id not in shredded
                        else None
                    ),
                    actor=event.actor,
                    occurred_at=event.occurred_at,
                    recorded_at=recorded_at,
                )
                digest = chain_hash(prev, content)
                rows.append(_row(content, prev, digest))
                prev = digest
            bulk_insert(session, EventRow.__table__, rows)  # COPY on PostgreSQL
            if fresh:
                self.vault.touch(
                    session, account_id, {e.talent_id for e in fresh if e.talent_id}, recorded_at
                )
            head.last_sequence, head.last_hash = sequence, prev
            head.last_recorded_at = recorded_at
        duplicates = len(events) - len(fresh)
        logs.log(
            logger,
            "events recorded",
            account=account_id,
            recorded=len(fresh),
            duplicates=duplicates,
        )
        return len(fresh), duplicates

    def _check_repeat(
        self,
        event: NewEvent,
        recorded: _Recorded | None,
        first_of: dict[str, NewEvent],
        salts: dict[str, bytes],
        shredded: set[str],
    ) -> None:
        """A retry must say what the first call said: a reused key with other content (labels
        that changed between attempts, a talent erased meanwhile) is refused, so no caller can
        act on results whose events differ from the ones recorded."""
        if recorded is None:  # the same key twice in this batch
            recorded = _recorded(first_of[event.idempotency_key], salts, shredded)
        require_same(
            recorded, _recorded(event, salts, shredded), "idempotency_key", event.idempotency_key
        )

    def _shredded(self, session: Session, account_id: str, talents: set[str]) -> set[str]:
        """The talents among `talents` that carry a shred marker."""
        lookups = {self.vault.lookup(account_id, t): t for t in talents}
        if not lookups:
            return set()
        marked = session.scalars(
            select(ShredMarkerRow.lookup).where(ShredMarkerRow.lookup.in_(list(lookups)))
        )
        return {lookups[lookup] for lookup in marked}

    def _locked_head(self, session: Session, account_id: str) -> ChainHead:
        """The account's chain head, locked for this transaction (made on the first append)."""
        locked = select(ChainHead).where(ChainHead.account_id == account_id).with_for_update()
        head = session.scalars(locked).one_or_none()
        if head is not None:
            return head
        insert_ignoring_conflicts(
            session,
            ChainHead.__table__,
            [
                {
                    "account_id": account_id,
                    "last_sequence": 0,
                    "last_hash": GENESIS_HASH,
                    "last_recorded_at": _EPOCH,
                }
            ],
            ["account_id"],
        )
        return session.scalars(locked).one()

    # -- list ---------------------------------------------------------------------------------

    def list_events(
        self, where: EventFilter, page_size: int, after_sequence: int
    ) -> tuple[list[ChainedEvent], int | None]:
        """A page of events oldest first, and the sequence to continue after (None at the end).
        A talent filter matches nothing once the talent's salt is gone."""
        with self.db.read() as session:
            conditions = [
                EventRow.account_id == where.account_id,
                EventRow.sequence > after_sequence,
            ]
            if where.talent_id:
                salts = self.vault.salts(session, where.account_id, [where.talent_id], create=False)
                if not salts:
                    return [], None
                conditions.append(
                    EventRow.talent_hash == talent_hash(salts[where.talent_id], where.talent_id)
                )
            if where.project_id:
                conditions.append(EventRow.project_id == where.project_id)
            if where.since is not None:
                conditions.append(EventRow.occurred_at >= where.since)
            rows = list(
                session.scalars(
                    select(EventRow)
                    .where(and_(*conditions))
                    .order_by(EventRow.sequence)
                    .limit(fetch_limit(page_size))
                )
            )
        page, position = page_of(rows, page_size, lambda event: event.sequence)
        return [
            ChainedEvent(_content(row), row.prev_hash, row.event_hash) for row in page
        ], position

    # -- verify -------------------------------------------------------------------------------

    def verify(self, account_id: str = "") -> LogVerdict:
        """Recomputes every link of one account's chain (or of all) in one consistent snapshot."""
        checked = chains = 0
        with self.db.read(snapshot=True) as session:
            query = select(ChainHead).order_by(ChainHead.account_id)
            if account_id:
                query = query.where(ChainHead.account_id == account_id)
            heads = session.scalars(query).all()
            for head in heads:
                verdict = self._verify_one(session, head)
                checked += verdict.checked
                chains += 1
                if not verdict.ok:
                    return LogVerdict(
                        False,
                        checked,
                        chains,
                        verdict.first_broken_sequence,
                        head.account_id,
                        verdict.detail,
                    )
        return LogVerdict(True, checked, chains, detail=f"{chains} chain(s) intact")

    def _verify_one(self, session: Session, head: ChainHead) -> ChainVerdict:
        checkpoint = session.get(Checkpoint, head.account_id)
        rows = session.execute(
            select(EventRow)
            .where(EventRow.account_id == head.account_id)
            .order_by(EventRow.sequence)
            .execution_options(yield_per=2000)
        ).scalars()
        links = (StoredLink(_content(row), row.prev_hash, row.event_hash) for row in rows)
        return verify_chain(
            links,
            start_sequence=checkpoint.through_sequence if checkpoint else 0,
            start_hash=checkpoint.through_hash if checkpoint else GENESIS_HASH,
            head_sequence=head.last_sequence,
            head_hash=head.last_hash,
        )

    # -- shred --------------------------------------------------------------------------------

    def shred(self, account_id: str, talent_id: str) -> tuple[bool, datetime]:
        """Destroys the salt and leaves a shred marker, in one transaction that holds the
        account's chain head: a concurrent append either ran before (its events lose their
        link with the salt) or runs after and sees the marker (no salt is made again)."""
        now = self.clock()
        with self.db.write() as session:
            self._locked_head(session, account_id)
            destroyed = self.vault.shred(session, account_id, talent_id)
            insert_ignoring_conflicts(
                session,
                ShredMarkerRow.__table__,
                [
                    {
                        "lookup": self.vault.lookup(account_id, talent_id),
                        "account_id": account_id,
                        "shredded_at": now,
                    }
                ],
                ["lookup"],
            )
        logs.log(logger, "salt shredded", account=account_id, destroyed=destroyed)
        return destroyed, now

    def lift_marker(self, account_id: str, talent_id: str) -> bool:
        """Lifts the talent's shred marker (a biometric consent was recorded after the
        erasure): its next events get a new salt, unlinked to anything before. True when
        there was a marker. An append racing the lift is recorded unlinkable or with the new
        salt, either being right for an event recorded as the new life begins."""
        with self.db.write() as session:
            lifted = rowcount(
                session.execute(
                    delete(ShredMarkerRow).where(
                        ShredMarkerRow.lookup == self.vault.lookup(account_id, talent_id)
                    )
                )
            )
        logs.log(logger, "shred marker lifted", account=account_id, lifted=bool(lifted))
        return lifted > 0

    # -- vault --------------------------------------------------------------------------------

    def rotate_vault(self) -> Rotation:
        return self.vault.rotate()

    def vault_status(self) -> VaultStatus:
        return self.vault.status()

    # -- purge --------------------------------------------------------------------------------

    def purge(self, cutoff: datetime, batch_size: int) -> tuple[int, bool, int, int]:
        """Deletes up to `batch_size` of the oldest events recorded before `cutoff`, moving each
        touched chain's checkpoint to the last deleted event; once none is left, deletes up to
        `batch_size` salts whose talent's last event was among them. Returns (purged, done,
        checkpoints, salts deleted).

        `recorded_at` never decreases along a chain, so expired events are a prefix of it, and
        the oldest `batch_size` expired events (in the order of the expiry index: recorded_at,
        account, sequence) are a prefix of each chain they touch. Finding them reads
        `batch_size` index entries, whatever the size of the log: a purge batch costs the same
        at the start and at the end of a long purge, and concurrent appends (which touch other
        rows: the chain head and new events) never wait for it on PostgreSQL. Purges wait for
        each other (a manual run may overlap a scheduled one), so checkpoints only ever move
        forward."""
        purged = checkpoints = 0
        salts_done = True
        with self.db.write() as session:
            serialize(session, PURGE_LOCK)
            oldest = session.execute(
                select(EventRow.account_id, EventRow.sequence)
                .where(EventRow.recorded_at < cutoff)
                .order_by(EventRow.recorded_at, EventRow.account_id, EventRow.sequence)
                .limit(batch_size)
            ).all()
            through_of: dict[str, int] = {}
            for account_id, sequence in oldest:
                through_of[account_id] = max(sequence, through_of.get(account_id, 0))
            for account_id, through in sorted(through_of.items()):
                through_hash = session.get_one(EventRow, (account_id, through)).event_hash
                deleted = rowcount(
                    session.execute(
                        delete(EventRow).where(
                            EventRow.account_id == account_id, EventRow.sequence <= through
                        )
                    )
                )
                self._move_checkpoint(session, account_id, through, through_hash, deleted)
                purged += deleted
                checkpoints += 1
            left = session.scalar(
                select(EventRow.sequence).where(EventRow.recorded_at < cutoff).limit(1)
            )
        salts = 0
        if left is None:  # every expired event is gone: so are the salts only they used
            with self.db.write() as session:
                salts, salts_done = self.vault.purge_idle(session, cutoff, batch_size)
        done = left is None and salts_done
        logs.log(
            logger,
            "events purged",
            purged=purged,
            checkpoints=checkpoints,
            salts_deleted=salts,
            done=done,
        )
        return purged, done, checkpoints, salts

    def _move_checkpoint(
        self, session: Session, account_id: str, sequence: int, digest: str, deleted: int
    ) -> None:
        checkpoint = session.get(Checkpoint, account_id)
        if checkpoint is None:
            session.add(
                Checkpoint(
                    account_id=account_id,
                    through_sequence=sequence,
                    through_hash=digest,
                    purged_total=deleted,
                    updated_at=self.clock(),
                )
            )
        else:
            checkpoint.through_sequence, checkpoint.through_hash = sequence, digest
            checkpoint.purged_total += deleted
            checkpoint.updated_at = self.clock()


def _content(row: EventRow) -> EventContent:
    return EventContent(
        account_id=row.account_id,
        sequence=row.sequence,
        idempotency_key=row.idempotency_key,
        project_id=row.project_id,
        media_id=row.media_id,
        face_index=row.face_index,
        label=row.label,
        reason=row.reason,
        similarity=row.similarity,
        talent_hash=row.talent_hash,
        actor=row.actor,
        occurred_at=row.occurred_at,
        recorded_at=row.recorded_at,
    )


def _row(content: EventContent, prev_hash: str, event_hash: str) -> dict[str, Any]:
    return {
        "account_id": content.account_id,
        "sequence": content.sequence,
        "idempotency_key": content.idempotency_key,
        "project_id": content.project_id,
        "media_id": content.media_id,
        "face_index": content.face_index,
        "label": content.label,
        "reason": content.reason,
        "similarity": content.similarity,
        "talent_hash": content.talent_hash,
        "actor": content.actor,
        "occurred_at": content.occurred_at,
        "recorded_at": content.recorded_at,
        "prev_hash": prev_hash,
        "event_hash": event_hash,
    }
