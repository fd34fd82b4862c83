"""Consent use cases, each one unit of work: record, check, list, erase."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.exc import IntegrityError

from mixip.runtime import logs
from mixip.runtime.db import Database, rowcount
from mixip.runtime.idempotency import require_same
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.times import Clock
from services.consent.domain import (
    ConsentKey,
    Evidence,
    NewRecord,
    Record,
    needs_face_deletion,
    state_of,
)
from services.consent.store import OutboxRow, RecordRow, TombstoneRow

logger = logging.getLogger("mixip.consent")


@dataclass(frozen=True)
class Erasure:
    records_deleted: int
    outbox_rows_deleted: int
    tombstone_id: str
    erased_at: datetime


def _record(row: RecordRow) -> Record:
    return Record(
        record_id=row.record_id,
        account_id=row.account_id,
        key=ConsentKey(row.talent_id, row.scope, row.project_id),
        decision=row.decision,
        evidence=Evidence(row.method, row.policy_version, row.actor, row.captured_at),
        recorded_at=row.recorded_at,
        sequence=row.sequence,
    )


def _replayed(earlier: RecordRow, new: NewRecord) -> Record:
    """The earlier record of a retried request; a different record under the same request id
    is refused rather than silently dropped."""
    require_same(
        (earlier.talent_id, earlier.scope, earlier.project_id, earlier.decision),
        (new.key.talent_id, new.key.scope, new.key.project_id, new.decision),
    )
    return _record(earlier)


class ConsentLedger:
    def __init__(
        self, db: Database, clock: Clock, on_outbox_write: Callable[[], None] = lambda: None
    ) -> None:
        self.db = db
        self.clock = clock
        self.on_outbox_write = on_outbox_write  # wakes the dispatcher

    def record(self, account_id: str, new: NewRecord) -> tuple[Record, bool]:
        """Appends a record (and, for a biometric revocation, its outbox row, atomically).
        Returns (record, replayed): a repeated request id returns the first record."""
        if new.request_id:
            earlier = self._by_request(account_id, new.request_id)
            if earlier is not None:
                return _replayed(earlier, new), True
        now = self.clock()
        row = RecordRow(
            record_id=uuid.uuid4().hex,
            account_id=account_id,
            talent_id=new.key.talent_id,
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
        try:
            with self.db.write() as session:
                session.add(row)
                if needs_face_deletion(new):
                    session.add(
                        OutboxRow(
                            outbox_id=uuid.uuid4().hex,
                            account_id=account_id,
                            talent_id=new.key.talent_id,
                            created_at=now,
                            attempts=0,
                            next_attempt_at=now,
                        )
                    )
        except IntegrityError:
            # A concurrent retry with the same request id won the race: return its record.
            earlier = self._by_request(account_id, new.request_id) if new.request_id else None
            if earlier is None:
                raise
            return _replayed(earlier, new), True
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
        return _record(row), False

    def _by_request(self, account_id: str, request_id: str) -> RecordRow | None:
        with self.db.read() as session:
            return session.scalars(
                select(RecordRow).where(
                    RecordRow.account_id == account_id, RecordRow.request_id == request_id
                )
            ).one_or_none()

    def check(self, account_id: str, keys: Sequence[ConsentKey]) -> list[tuple[int, Record | None]]:
        """For each key, its state and the latest record it comes from (None when absent)."""
        wanted = {(k.talent_id, k.scope, k.project_id) for k in keys}
        with self.db.read() as session:
            latest_sequences = (
                select(func.max(RecordRow.sequence))
                .where(
                    RecordRow.account_id == account_id,
                    tuple_(RecordRow.talent_id, RecordRow.scope, RecordRow.project_id).in_(
                        list(wanted)
                    ),
                )
                .group_by(RecordRow.talent_id, RecordRow.scope, RecordRow.project_id)
            )
            rows = session.scalars(
                select(RecordRow).where(RecordRow.sequence.in_(latest_sequences))
            ).all()
        latest = {(r.talent_id, r.scope, r.project_id): r for r in rows}
        answers = []
        for key in keys:
            row = latest.get((key.talent_id, key.scope, key.project_id))
            answers.append((state_of(row.decision if row else None), _record(row) if row else None))
        return answers

    def list_records(
        self, account_id: str, talent_id: str, page_size: int, after_sequence: int
    ) -> tuple[list[Record], int | None]:
        with self.db.read() as session:
            query = select(RecordRow).where(
                RecordRow.account_id == account_id, RecordRow.sequence > after_sequence
            )
            if talent_id:
                query = query.where(RecordRow.talent_id == talent_id)
            order = query.order_by(RecordRow.sequence).limit(fetch_limit(page_size))
            rows = list(session.scalars(order))
        page, position = page_of(rows, page_size, lambda record: record.sequence)
        return [_record(row) for row in page], position

    def erase(self, account_id: str, talent_id: str, request_id: str) -> Erasure:
        """Deletes the talent's records and outbox rows; leaves a PII-free tombstone when
        something was deleted. Idempotent; a repeated request id returns the first result."""
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
            records = rowcount(
                session.execute(
                    delete(RecordRow).where(
                        RecordRow.account_id == account_id, RecordRow.talent_id == talent_id
                    )
                )
            )
            outbox = rowcount(
                session.execute(
                    delete(OutboxRow).where(
                        OutboxRow.account_id == account_id, OutboxRow.talent_id == talent_id
                    )
                )
            )
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
        logs.log(
            logger,
            "talent consent erased",
            account=account_id,
            records=records,
            outbox=outbox,
            tombstone=tombstone_id or "-",
        )
        return Erasure(records, outbox, tombstone_id, now)
