"""Consent use cases, each one unit of work: record, check, list, erase.

A talent id is stored only sealed under the talent's data key (the consent vault); rows are
found by the ref derived from that key (`talent_ref`). A talent whose key is gone has no
consent: rows that still name it anywhere (a copy, a backup) do not open and are treated as
absent. Erasure
deletes the rows and the key in one transaction, then scrubs them out of the database's files.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, false, func, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mixip.runtime import logs
from mixip.runtime.db import Database, rowcount, serialize
from mixip.runtime.idempotency import require_same
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.times import Clock
from mixip.runtime.vault import TalentKey, Vault
from services.consent.domain import (
    ConsentKey,
    Evidence,
    NewRecord,
    Record,
    needs_face_deletion,
    state_of,
)
from services.consent.store import (
    OutboxRow,
    RecordRow,
    TalentKeyRow,
    TombstoneRow,
    account_version,
    bump_account_version,
    outbox_context,
    record_context,
)

logger = logging.getLogger("mixip.consent")

# What an erasure (or the sealing of old rows) rewrites: scrubbed out of the files after it.
SCRUBBED_TABLES = [RecordRow.__tablename__, OutboxRow.__tablename__, TalentKeyRow.__tablename__]
_LEGACY_BATCH = 500


@dataclass(frozen=True)
class Erasure:
    records_deleted: int
    outbox_rows_deleted: int
    tombstone_id: str
    erased_at: datetime


def _record(row: RecordRow, talent_id: str) -> Record:
    return Record(
        record_id=row.record_id,
        account_id=row.account_id,
        key=ConsentKey(talent_id, row.scope, row.project_id),
        decision=row.decision,
        evidence=Evidence(row.method, row.policy_version, row.actor, row.captured_at),
        recorded_at=row.recorded_at,
        sequence=row.sequence,
    )


def _replayed(earlier: RecordRow, talent_ref: bytes | None, new: NewRecord) -> Record:
    """The earlier record of a retried request; a different record under the same request id
    is refused rather than silently dropped. Same `talent_ref` (the ref of the new request's
    talent's live key), same talent: the new request's talent id is the earlier record's."""
    require_same(
        (earlier.talent_ref, earlier.scope, earlier.project_id, earlier.decision),
        (talent_ref, new.key.scope, new.key.project_id, new.decision),
    )
    return _record(earlier, new.key.talent_id)


def _hold(session: Session, vault: Vault, account_id: str, talent_id: str) -> None:
    """Serializes this transaction with every other recording or erasing the same talent, so
    a record never commits beside an erasure that destroys the key it was sealed under."""
    lookup = vault.talent_lookup(session, account_id, talent_id)
    serialize(session, "consent-talent/" + lookup.hex())


class ConsentLedger:
    def __init__(
        self,
        db: Database,
        vault: Vault,
        clock: Clock,
        on_outbox_write: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.vault = vault
        self.clock = clock
        self.on_outbox_write = on_outbox_write  # wakes the dispatcher
        # Tests pause a check at its step boundaries through this hook (a no-op here).
        self.checkpoint: Callable[[str], None] = lambda name: None

    def record(self, account_id: str, new: NewRecord) -> tuple[Record, bool]:
        """Appends a record (and, for a biometric revocation, its outbox row, atomically),
        sealed under the talent's data key (made for its first record, or its first after an
        erasure). Returns (record, replayed): a repeated request id returns the first record."""
        talent = new.key.talent_id
        if new.request_id:
            replay = self._replay(account_id, new)
            if replay is not None:
                return replay, True
        now = self.clock()
        record_id = uuid.uuid4().hex
        try:
            with self.db.write() as session:
                _hold(session, self.vault, account_id, talent)
                key = self.vault.talent_keys(session, account_id, [talent], create=True)[talent]
                row = RecordRow(
                    record_id=record_id,
                    account_id=account_id,
                    talent_ref=key.ref,
                    sealed_talent_id=key.seal_text(talent, record_context(record_id)),
                    scope=new.key.scope,
                    project_id=new.key.project_id,
                    decision=new.decision,
                    method=new.evidence.method,
                    policy_version=new.evidence.policy_version,
                    actor=new.evidence.actor,
                    captured_at=new.evidence.captured_at,
                    recorded_at=now,
                    request_id=new.request_id or None,
                )
                session.add(row)
                bump_account_version(session, account_id)  # the last lock it takes
                if needs_face_deletion(new):
                    outbox_id = uuid.uuid4().hex
                    session.add(
                        OutboxRow(
                            outbox_id=outbox_id,
                            account_id=account_id,
                            talent_ref=key.ref,
                            sealed_talent_id=key.seal_text(talent, outbox_context(outbox_id)),
                            created_at=now,
                            attempts=0,
                            next_attempt_at=now,
                        )
                    )
        except IntegrityError:
            # A concurrent retry with the same request id won the race: return its record.
            replay = self._replay(account_id, new) if new.request_id else None
            if replay is None:
                raise
            return replay, True
        logs.log(
            logger,
            "consent recorded",
            account=account_id,
            scope=new.key.scope,
            decision=new.decision,
            record=row.record_id,
        )
        if needs_face_deletion(new):
            self.on_outbox_write()
        return _record(row, talent), False

    def _replay(self, account_id: str, new: NewRecord) -> Record | None:
        """The record an earlier try of this request made (see `_replayed`), if any."""
        with self.db.read() as session:
            earlier = session.scalars(
                select(RecordRow).where(
                    RecordRow.account_id == account_id, RecordRow.request_id == new.request_id
                )
            ).one_or_none()
            if earlier is None:
                return None
            return _replayed(earlier, self.vault.ref(session, account_id, new.key.talent_id), new)

    def check(self, account_id: str, keys: Sequence[ConsentKey]) -> list[tuple[int, Record | None]]:
        """For each key, its state and the latest record it comes from (None when absent). A
        talent without a data key has no record."""
        return self.versioned_check(account_id, keys)[1]

    def versioned_check(
        self, account_id: str, keys: Sequence[ConsentKey]
    ) -> tuple[str, list[tuple[int, Record | None]]]:
        """`check`, with the account's consent version read first in the same transaction (the
        answers reflect every change up to it). No keys: the version alone, one row read."""
        with self.db.read() as session:
            version = account_version(session, account_id)
            if not keys:
                return version, []
            self.checkpoint("check.versioned")
            held = self.vault.talent_keys(
                session, account_id, {k.talent_id for k in keys}, create=False
            )
            wanted = {
                (held[k.talent_id].ref, k.scope, k.project_id) for k in keys if k.talent_id in held
            }
            rows: Sequence[RecordRow] = []
            if wanted:
                timeline = (RecordRow.talent_ref, RecordRow.scope, RecordRow.project_id)
                latest_sequences = (
                    select(func.max(RecordRow.sequence))
                    .where(RecordRow.account_id == account_id, tuple_(*timeline).in_(list(wanted)))
                    .group_by(*timeline)
                )
                rows = session.scalars(
                    select(RecordRow).where(RecordRow.sequence.in_(latest_sequences))
                ).all()
        latest = {(r.talent_ref, r.scope, r.project_id): r for r in rows}
        answers = []
        for key in keys:
            talent_key = held.get(key.talent_id)
            row = latest.get((talent_key.ref, key.scope, key.project_id)) if talent_key else None
            answers.append(
                (
                    state_of(row.decision if row else None),
                    _record(row, key.talent_id) if row else None,
                )
            )
        return version, answers

    def list_records(
        self, account_id: str, talent_id: str, page_size: int, after_sequence: int
    ) -> tuple[list[Record], int | None]:
        """A page of the account's records (of one talent when `talent_id` is given), each
        with its talent id opened; rows whose talent's key is gone are left out (a page may be
        short; the next page starts after its last row all the same)."""
        with self.db.read() as session:
            query = select(RecordRow).where(
                RecordRow.account_id == account_id, RecordRow.sequence > after_sequence
            )
            if talent_id:
                held = self.vault.talent_keys(session, account_id, [talent_id], create=False)
                if not held:
                    return [], None
                query = query.where(RecordRow.talent_ref == held[talent_id].ref)
            order = query.order_by(RecordRow.sequence).limit(fetch_limit(page_size))
            rows, position = page_of(list(session.scalars(order)), page_size, _sequence)
            keys = self.vault.keys_by_ref(session, {row.talent_ref for row in rows})
        return [
            _opened(row, keys[row.talent_ref]) for row in rows if row.talent_ref in keys
        ], position

    def erase(self, account_id: str, talent_id: str, request_id: str) -> Erasure:
        """Deletes the talent's records and outbox rows and destroys its data key (which owes
        the vault a rotation, after which no older copy of them opens), then scrubs them out of
        the database's files; leaves a PII-free tombstone when something was deleted.
        Idempotent; a repeated request id returns the first result."""
        with self.db.write() as session:
            if request_id:
                earlier = session.scalars(
                    select(TombstoneRow).where(
                        TombstoneRow.account_id == account_id,
                        TombstoneRow.request_id == request_id,
                    )
                ).one_or_none()
                if earlier is not None:
                    return Erasure(
                        earlier.records_deleted,
                        earlier.outbox_rows_deleted,
                        earlier.tombstone_id,
                        earlier.erased_at,
                    )
            _hold(session, self.vault, account_id, talent_id)
            talent_ref = self.vault.ref(session, account_id, talent_id)
            # Rows an older replica wrote in clear during an upgrade go too (sealed at start).
            records = rowcount(
                session.execute(
                    delete(RecordRow).where(
                        RecordRow.account_id == account_id,
                        or_(
                            RecordRow.talent_ref == talent_ref if talent_ref else false(),
                            RecordRow.legacy_talent_id == talent_id,
                        ),
                    )
                )
            )
            outbox = rowcount(
                session.execute(
                    delete(OutboxRow).where(
                        OutboxRow.account_id == account_id,
                        or_(
                            OutboxRow.talent_ref == talent_ref if talent_ref else false(),
                            OutboxRow.legacy_talent_id == talent_id,
                        ),
                    )
                )
            )
            held = talent_ref is not None and self.vault.destroy(session, account_id, talent_id)
            now = self.clock()
            tombstone_id = ""
            if records or outbox:
                tombstone_id = uuid.uuid4().hex
                session.add(
                    TombstoneRow(
                        tombstone_id=tombstone_id,
                        account_id=account_id,
                        erased_at=now,
                        records_deleted=records,
                        outbox_rows_deleted=outbox,
                        request_id=request_id or None,
                    )
                )
            if records or outbox or held:  # the last lock taken, as in `record`
                bump_account_version(session, account_id)
        if records or outbox or held:
            self.db.scrub(SCRUBBED_TABLES)
        logs.log(
            logger,
            "talent consent erased",
            account=account_id,
            records=records,
            outbox=outbox,
            key_destroyed=bool(held),
            tombstone=tombstone_id or "-",
        )
        return Erasure(records, outbox, tombstone_id, now)

    def seal_legacy(self) -> int:
        """Seals the talent id of every row written before talent ids were sealed (and of any
        an older replica wrote during an upgrade) and clears its clear column, in batches in
        primary key order; returns how many rows. Idempotent. Run at start-up, before the
        service answers: until then, checks and listings do not see those rows."""
        sealed = 0
        for model, position, row_id, context in (
            (RecordRow, RecordRow.sequence, RecordRow.record_id, record_context),
            (OutboxRow, OutboxRow.id, OutboxRow.outbox_id, outbox_context),
        ):
            after = 0
            while batch := self._seal_legacy_batch(model, position, row_id, context, after):
                sealed += len(batch)
                after = batch[-1]
        if sealed:
            self.db.scrub(SCRUBBED_TABLES)
            logs.log(logger, "clear talent ids sealed", rows=sealed)
        return sealed

    def _seal_legacy_batch(
        self,
        model: Any,
        position: Any,
        row_id: Any,
        context: Callable[[str], bytes],
        after: int,
    ) -> list[int]:
        """Seals the next clear rows after primary key `after`; returns their primary keys."""
        with self.db.write() as session:
            rows = session.execute(
                select(position, row_id, model.account_id, model.legacy_talent_id)
                .where(position > after, model.legacy_talent_id.is_not(None))
                .order_by(position)
                .limit(_LEGACY_BATCH)
            ).all()
            if not rows:
                return []
            talents: dict[str, set[str]] = defaultdict(set)
            for _, _, account_id, talent_id in rows:
                talents[account_id].add(talent_id)
            keys = {
                (account_id, talent_id): key
                for account_id, wanted in talents.items()
                for talent_id, key in self.vault.talent_keys(
                    session, account_id, wanted, create=True
                ).items()
            }
            for account_id in talents:  # checks see these rows from now on
                bump_account_version(session, account_id)
            sealed = [
                {
                    "at": at,
                    "ref": keys[account_id, talent_id].ref,
                    "sealed": keys[account_id, talent_id].seal_text(talent_id, context(name)),
                }
                for at, name, account_id, talent_id in rows
            ]
            session.execute(
                update(model.__table__)
                .where(position == bindparam("at"))
                .values(
                    {
                        model.talent_ref: bindparam("ref"),
                        model.sealed_talent_id: bindparam("sealed"),
                        model.legacy_talent_id: None,
                    }
                ),
                sealed,
            )
        return [row[0] for row in rows]


def _sequence(row: RecordRow) -> int:
    return row.sequence


def _opened(row: RecordRow, key: TalentKey) -> Record:
    return _record(row, key.open_text(row.sealed_talent_id, record_context(row.record_id)))
