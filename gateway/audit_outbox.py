"""The audit outbox: the one way into audit. An upload's (or a job's) audit events and a review
decision's, queued in their own commit and delivered to the audit service in batches by a
background deliverer; `match_event` builds them all.

An upload makes one durable commit on its hot path: its results and its audit events (one row
each) in the same transaction, under the erasure fence lock, so an event about a talent whose
erasure began is never queued (gateway/uploads.py); a review decision does the same with its
row and its event (gateway/reviews.py). The promise to the client: no results or decisions are
returned whose audit events are not durably queued in the same commit; they are delivered
within seconds (the deliverer is woken by every commit, lingers `linger_seconds` to batch the
uploads of that moment, and polls every `poll_seconds`).

- Delivery is at least once: `RecordMatchEvents` is idempotent per idempotency key, so a row
  delivered twice (two replicas, a crash between the call and the row's deletion) is recorded
  once. A delivered row is deleted: the outbox keeps talent ids only while an event
  is owed (the audit log itself is the count), sealed under the account's data key
  (gateway/seals.py): a row whose key is gone (a copy restored elsewhere) is dropped unread.
- Every gateway replica runs a deliverer: a batch is claimed with a short lease (`FOR UPDATE
  SKIP LOCKED` on PostgreSQL; SQLite serializes the claiming writers), so replicas do not
  deliver the same rows in the normal case.
- `drain(account)` delivers every queued row of an account now, leases or not. An erasure
  drains before it shreds the talent's salt (its events are hashed with the salt that then
  dies; a claimed row still in flight elsewhere is delivered here first, and that late call
  is then a repeat the audit service refuses or ignores, its rows being gone); reading the
  audit log, verifying it and exporting a talent drain first, so a client reads its own
  writes.
- While the audit service is down uploads and review decisions still succeed, the rows wait
  (with backoff), and the gauges `mixip_gateway_audit_outbox_depth` and
  `mixip_gateway_audit_outbox_oldest_age_seconds` say how many and for how long.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from gateway.peers import AuditPort
from gateway.seals import ACCOUNT_SUBJECT, OUTBOX_CONTEXT, Seals
from gateway.store import AuditOutboxRow
from mixip.audit.v1 import audit_pb2
from mixip.common.v1 import common_pb2
from mixip.runtime import logs
from mixip.runtime.backoff import Backoff
from mixip.runtime.checkpoints import Checkpoint, no_checkpoint
from mixip.runtime.db import Database, rowcount
from mixip.runtime.errors import failure_code
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.times import Clock, to_timestamp
from mixip.runtime.vault import TalentKey
from mixip.runtime.worker import Worker

logger = logging.getLogger("mixip.gateway.audit_outbox")

# A batch not delivered is due again after this (jittered, growing with its attempts).
RETRY_BACKOFF = Backoff(base_seconds=0.5, max_seconds=30.0)


class AuditOutbox:
    def __init__(
        self,
        db: Database,
        audit: AuditPort,
        clock: Clock,
        seals: Seals,
        *,
        poll_seconds: float = 1.0,
        linger_seconds: float = 0.25,
        lease_seconds: float = 30.0,
        backoff: Backoff = RETRY_BACKOFF,
        batch_size: int = MAX_BATCH,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock
        self.seals = seals
        self.lease = timedelta(seconds=lease_seconds)
        self.backoff = backoff
        self.batch_size = batch_size
        self.rng = rng or random.Random()
        # Tests pause the deliverer between its claim and its call through this hook.
        self.checkpoint: Checkpoint = no_checkpoint
        # Woken by a commit, it lingers a moment so that the uploads of that moment go in one
        # batch: one claim, one call, one deletion for all of them (per upload, the
        # deliverer's two commits and a call cost the gateway as much CPU as the upload).
        self.worker = Worker(
            "gateway-audit-outbox",
            self._pass,
            poll_seconds=poll_seconds,
            linger_seconds=linger_seconds,
        )

    # -- queueing (in the caller's transaction) -------------------------------------------------

    def queue(
        self,
        session: Session,
        account_id: str,
        events: Sequence[audit_pb2.MatchEventInput],
        key: TalentKey | None,
    ) -> None:
        """Adds the events, sealed under the account's data key `key` (gateway/seals.py), to the
        caller's transaction (they are owed once it commits)."""
        if not events:
            return
        assert key is not None  # the caller fetched the account's key with the events'
        now = self.clock()
        session.add_all(
            AuditOutboxRow(
                account_id=account_id,
                sealed_event=key.seal(e.SerializeToString(), OUTBOX_CONTEXT),
                created_at=now,
                attempts=0,
            )
            for e in events
        )

    # -- lifecycle (mixip/runtime/worker.py) -----------------------------------------------------

    def start(self) -> None:
        self.worker.start()

    def wake(self) -> None:
        self.worker.wake()

    def stop(self) -> None:
        self.worker.stop()

    def _pass(self) -> bool:
        """One pass of the deliverer; whether it delivered a full batch (more may be waiting)."""
        return self.run_once() >= self.batch_size

    # -- delivery ------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claims one batch of due rows, delivers it (one call per account); the number of
        events delivered."""
        claimed = self._claim()
        if not claimed:
            return 0
        self.checkpoint("outbox.claimed")
        delivered = 0
        for account_id, rows in _by_account(claimed).items():
            try:
                self._deliver(account_id, rows)
            except Exception as exc:  # any failure: the rows stay owed and are retried
                self._retry_later(account_id, rows, exc)
            else:
                delivered += len(rows)
        return delivered

    def drain(self, account_id: str) -> int:
        """Delivers every row queued for the account when it is called, claimed elsewhere or
        not (rows queued meanwhile are left to the deliverer, so a steady stream of uploads
        cannot keep a reader waiting); the number delivered. Raises if the audit service cannot
        take them (nothing is lost)."""
        delivered = 0
        with self.db.read() as session:
            last = session.scalar(
                select(func.max(AuditOutboxRow.id)).where(AuditOutboxRow.account_id == account_id)
            )
        self.checkpoint("outbox.draining")
        while last is not None:
            with self.db.read() as session:
                rows = session.execute(
                    select(AuditOutboxRow.id, AuditOutboxRow.sealed_event)
                    .where(AuditOutboxRow.account_id == account_id, AuditOutboxRow.id <= last)
                    .order_by(AuditOutboxRow.id)
                    .limit(self.batch_size)
                ).all()
            if not rows:
                return delivered
            self._deliver(account_id, [(row.id, row.sealed_event) for row in rows])
            delivered += len(rows)
        return delivered

    def _claim(self) -> list[tuple[str, int, bytes | None]]:
        now = self.clock()
        with self.db.write() as session:
            rows = session.execute(
                select(AuditOutboxRow.id, AuditOutboxRow.account_id, AuditOutboxRow.sealed_event)
                .where(or_(AuditOutboxRow.lease_until.is_(None), AuditOutboxRow.lease_until <= now))
                .order_by(AuditOutboxRow.id)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)  # PostgreSQL; SQLite's writers are serial
            ).all()
            if rows:
                session.execute(
                    update(AuditOutboxRow)
                    .where(AuditOutboxRow.id.in_([r.id for r in rows]))
                    .values(lease_until=now + self.lease)
                )
        return [(r.account_id, r.id, r.sealed_event) for r in rows]

    def _deliver(self, account_id: str, rows: list[tuple[int, bytes | None]]) -> None:
        """Records the rows' events (idempotent), then deletes the rows."""
        with self.db.read() as session:
            keys = self.seals.keys(session, account_id, [ACCOUNT_SUBJECT], create=False)
        key = keys.get(ACCOUNT_SUBJECT)
        events = [
            audit_pb2.MatchEventInput.FromString(key.open(sealed, OUTBOX_CONTEXT))
            for _, sealed in rows
            if key is not None and sealed is not None
        ]
        if events:
            self.audit.record_match_events(account_id, events)
        with self.db.write() as session:
            session.execute(
                delete(AuditOutboxRow).where(AuditOutboxRow.id.in_([i for i, _ in rows]))
            )

    def _retry_later(
        self, account_id: str, rows: list[tuple[int, bytes | None]], exc: Exception
    ) -> None:
        code = failure_code(exc)
        with self.db.write() as session:
            attempts = (
                session.scalar(
                    select(func.max(AuditOutboxRow.attempts)).where(
                        AuditOutboxRow.id.in_([i for i, _ in rows])
                    )
                )
                or 0
            ) + 1
            delay = self.backoff.delay(attempts, self.rng)  # jittered: replicas spread out
            owed = rowcount(
                session.execute(
                    update(AuditOutboxRow)
                    .where(AuditOutboxRow.id.in_([i for i, _ in rows]))
                    .values(
                        attempts=attempts,
                        last_error=code[:64],
                        lease_until=self.clock() + timedelta(seconds=delay),
                    )
                )
            )
        if owed:  # rows an erasure's drain delivered meanwhile are not owed any more
            logs.log(
                logger,
                "audit events not delivered; will retry",
                level=logging.WARNING,
                account=account_id,
                events=owed,
                attempts=attempts,
                code=code,
                retry_in_s=round(delay, 2),
            )

    # -- gauges --------------------------------------------------------------------------------

    def backlog(self) -> tuple[int, float]:
        """(events owed, age in seconds of the oldest) across accounts."""
        with self.db.read() as session:
            count, oldest = session.execute(
                select(func.count(), func.min(AuditOutboxRow.created_at))
            ).one()
        if not count or oldest is None:
            return 0, 0.0
        return int(count), max(0.0, (self.clock() - oldest).total_seconds())


def match_event(
    idempotency_key: str,
    project_id: str,
    media_id: str,
    face: common_pb2.FaceResult,
    actor: str,
    occurred_at: datetime,
    decision: int = 0,
) -> audit_pb2.MatchEventInput:
    """The audit event about one face's result as the gateway keeps it (an erased talent's
    face already made `erased_face`, gateway/store.py): an upload's or a job's match event, or
    with a `decision`, a review decision's (kind REVIEW_DECISION). `actor` is the API key id.
    The talent id goes to the audit service only, which hashes it with the talent's salt."""
    event = audit_pb2.MatchEventInput(
        idempotency_key=idempotency_key,
        project_id=project_id,
        media_id=media_id,
        face_index=face.face_index,
        label=face.label,
        reason=face.reason,
        similarity=face.similarity,
        talent_id=face.talent_id,
        actor=actor,
        occurred_at=to_timestamp(occurred_at),
    )
    if decision:
        event.kind = audit_pb2.EVENT_KIND_REVIEW_DECISION
        event.decision = decision  # type: ignore[assignment]
    return event


def _by_account(
    claimed: list[tuple[str, int, bytes | None]],
) -> dict[str, list[tuple[int, bytes | None]]]:
    grouped: dict[str, list[tuple[int, bytes | None]]] = defaultdict(list)
    for account_id, row_id, event in claimed:
        grouped[account_id].append((row_id, event))
    return grouped
