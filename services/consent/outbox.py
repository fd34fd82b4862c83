"""Delivers owed face deletions to the matcher until each is acknowledged.

Rows persist in the consent database, so a revocation survives restarts of either service.
A delivered row is deleted in the transaction that counts it (per account and day, without the
talent id): the outbox keeps talent ids (sealed under the talent's data key) only while a
deletion is owed. A row whose key is gone (its talent was erased) has nothing left to deliver
and is dropped.
Several replicas may run dispatchers: a row is claimed with a short lease by a conditional
UPDATE, so one dispatcher works on it at a time (and `DeleteTalentFaces` is idempotent anyway).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from mixip.runtime import logs
from mixip.runtime.backoff import Backoff
from mixip.runtime.db import Database, insert_ignoring_conflicts, rowcount
from mixip.runtime.errors import failure_code
from mixip.runtime.times import Clock
from mixip.runtime.vault import TalentKey, Vault
from mixip.runtime.worker import Worker
from services.consent.store import DeliveryCountRow, OutboxRow, outbox_context

logger = logging.getLogger("mixip.consent.outbox")

# A deletion not delivered is due again after this (jittered, growing with its attempts).
RETRY_BACKOFF = Backoff(base_seconds=0.5, max_seconds=60.0)

# deliver(account_id, talent_id, idempotency key, revoked at) -> faces deleted; raises on
# failure. Only faces enrolled before the revocation go: a late delivery must spare a face
# enrolled after consent was granted again.
Deliver = Callable[[str, str, str, datetime], int]


class OutboxDispatcher:
    def __init__(
        self,
        db: Database,
        vault: Vault,
        deliver: Deliver,
        clock: Clock,
        *,
        poll_seconds: float = 2.0,
        backoff: Backoff = RETRY_BACKOFF,
        lease_seconds: float = 30.0,
        batch_size: int = 50,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.vault = vault
        self.deliver = deliver
        self.clock = clock
        self.backoff = backoff
        self.lease = timedelta(seconds=lease_seconds)
        self.batch_size = batch_size
        self.rng = rng or random.Random()
        # A pass that delivered something is followed by another at once (more may be due).
        self.worker = Worker(
            "consent-outbox",
            lambda: self.run_once() > 0,
            poll_seconds=poll_seconds,
            join_seconds=10.0,
        )

    # -- lifecycle (mixip/runtime/worker.py) ----------------------------------------------------

    def start(self) -> None:
        self.worker.start()

    def wake(self) -> None:
        self.worker.wake()

    def stop(self) -> None:
        self.worker.stop()

    # -- one pass -----------------------------------------------------------------------------

    def run_once(self) -> int:
        """Tries every due row once; returns how many were acknowledged."""
        acknowledged = 0
        for row, talent_id in self._claim_due():
            if talent_id is None:
                self._drop(row)
                continue
            try:
                deleted = self.deliver(row.account_id, talent_id, row.outbox_id, row.created_at)
            except Exception as exc:  # any failure: the row stays owed and is retried
                self._retry_later(row, failure_code(exc))
            else:
                self._acknowledge(row, deleted)
                acknowledged += 1
        return acknowledged

    def pending(self) -> int:
        """Deletions not yet acknowledged."""
        with self.db.read() as session:
            return session.scalars(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.delivered_at.is_(None))
            ).one()

    def _claim_due(self) -> list[tuple[OutboxRow, str | None]]:
        """Claims due rows, each with its talent id opened (None when the talent's key is
        gone). Rows written in clear by an older replica wait for the start-up sealing."""
        now = self.clock()
        with self.db.read() as session:
            candidates = session.scalars(
                select(OutboxRow)
                .where(
                    OutboxRow.delivered_at.is_(None),
                    OutboxRow.talent_ref.is_not(None),
                    OutboxRow.next_attempt_at <= now,
                    or_(OutboxRow.lease_until.is_(None), OutboxRow.lease_until <= now),
                )
                .order_by(OutboxRow.id)
                .limit(self.batch_size)
            ).all()
        claimed = []
        for row in candidates:
            with self.db.write() as session:
                won = rowcount(
                    session.execute(
                        update(OutboxRow)
                        .where(
                            OutboxRow.id == row.id,
                            OutboxRow.delivered_at.is_(None),
                            or_(OutboxRow.lease_until.is_(None), OutboxRow.lease_until <= now),
                        )
                        .values(lease_until=now + self.lease)
                    )
                )
            if won:
                claimed.append(row)
        if not claimed:
            return []
        with self.db.read() as session:
            keys = self.vault.keys_by_ref(session, {row.talent_ref for row in claimed})
        return [
            (row, _opened(row, keys[row.talent_ref]) if row.talent_ref in keys else None)
            for row in claimed
        ]

    def _drop(self, row: OutboxRow) -> None:
        """A row whose talent's key is gone: the erasure that destroyed it deleted the
        talent's faces already, and nothing could name the talent to the matcher anyway."""
        with self.db.write() as session:
            session.execute(delete(OutboxRow).where(OutboxRow.id == row.id))
        logs.log(
            logger,
            "face deletion dropped: talent erased",
            account=row.account_id,
            outbox=row.outbox_id,
        )

    def _acknowledge(self, row: OutboxRow, deleted: int) -> None:
        """The row goes and its count stays, in one transaction (if an erasure deleted the row
        meanwhile, there is nothing left to count)."""
        now = self.clock()
        with self.db.write() as session:
            if rowcount(session.execute(delete(OutboxRow).where(OutboxRow.id == row.id))):
                count_deliveries(session, row.account_id, now, 1, deleted)
        logs.log(
            logger,
            "face deletion delivered",
            account=row.account_id,
            outbox=row.outbox_id,
            faces_deleted=deleted,
        )

    def compact_delivered(self) -> int:
        """Turns rows marked delivered (by versions that kept them) into counts; returns how
        many went. Run at start-up."""
        with self.db.write() as session:
            rows = session.execute(
                select(
                    OutboxRow.id,
                    OutboxRow.account_id,
                    OutboxRow.delivered_at,
                    OutboxRow.faces_deleted,
                ).where(OutboxRow.delivered_at.is_not(None))
            ).all()
            for _, account_id, delivered_at, faces in rows:
                assert delivered_at is not None  # selected for it
                count_deliveries(session, account_id, delivered_at, 1, faces or 0)
            if rows:
                session.execute(delete(OutboxRow).where(OutboxRow.id.in_([r[0] for r in rows])))
        return len(rows)

    def _retry_later(self, row: OutboxRow, code: str) -> None:
        attempts = row.attempts + 1
        delay = self.backoff.delay(attempts, self.rng)  # jittered: replicas and rows spread out
        with self.db.write() as session:
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.id == row.id)
                .values(
                    attempts=attempts,
                    last_error=code[:64],
                    lease_until=None,
                    next_attempt_at=self.clock() + timedelta(seconds=delay),
                )
            )
        logs.log(
            logger,
            "face deletion failed; will retry",
            level=logging.WARNING,
            account=row.account_id,
            outbox=row.outbox_id,
            attempts=attempts,
            code=code,
            retry_in_s=round(delay, 2),
        )


def _opened(row: OutboxRow, key: TalentKey) -> str:
    return key.open_text(row.sealed_talent_id, outbox_context(row.outbox_id))


def count_deliveries(
    session: Session, account_id: str, when: datetime, deliveries: int, faces: int
) -> None:
    """Adds to the account's counter of the day (UTC) of `when`."""
    day = when.date()
    insert_ignoring_conflicts(
        session,
        DeliveryCountRow.__table__,
        [{"account_id": account_id, "day": day, "deliveries": 0, "faces_deleted": 0}],
        ["account_id", "day"],
    )
    session.execute(
        update(DeliveryCountRow)
        .where(DeliveryCountRow.account_id == account_id, DeliveryCountRow.day == day)
        .values(
            deliveries=DeliveryCountRow.deliveries + deliveries,
            faces_deleted=DeliveryCountRow.faces_deleted + faces,
        )
    )
