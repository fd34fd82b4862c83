"""The retention purge of the audit log: events recorded before a cutoff go, in bounded batches
(and whole expired months at once on PostgreSQL), each chain's checkpoint moving forward to
its last purged event so that the rest still verifies; then the salts only they used."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mixip.runtime import logs
from mixip.runtime.db import Database, serialize
from mixip.runtime.times import Clock
from services.audit.partitions import (
    PURGE_LOCK,
    Partitions,
    delete_default_before,
    detach_partition,
    lock_events,
    month_partitions,
    next_month,
)
from services.audit.store import (
    Checkpoint,
    EventRow,
    any_expired,
    delete_events_through,
    expired_spans,
    head_sequences,
    last_sequence_before,
    oldest_expired,
    purge_generation,
)
from services.audit.vault import SaltVault

logger = logging.getLogger("mixip.audit")
# Dropping expired partitions locks audit_events against appends for a moment: it waits at
# most this long for the lock (appends queue behind a waiting lock), then tries again.
DROP_LOCK_TIMEOUT_MS = 50
DROP_ATTEMPTS = 5


class Purge:
    def __init__(
        self,
        db: Database,
        vault: SaltVault,
        clock: Clock,
        partitions: Partitions,
        step: Callable[[str], None] | None = None,
    ) -> None:
        """`step` is called at a purge's step boundaries ("checkpointed": checkpoints committed,
        expired partitions not detached yet; "detached": detached, not dropped yet), so tests
        can interleave there."""
        self.db = db
        self.vault = vault
        self.clock = clock
        self.partitions = partitions
        self._step = step or (lambda name: None)

    def purge(self, cutoff: datetime, batch_size: int) -> tuple[int, bool, int, int]:
        """Purges events recorded before `cutoff`; returns (purged, done, checkpoints, salts
        deleted). Each account's expired events are a prefix of its chain (`recorded_at` never
        decreases along a chain), so a purge moves the chain's checkpoint to the last purged
        event and the rest still verifies. Checkpoints only move forward: purges wait for each
        other (a manual run may overlap a scheduled one).

        On PostgreSQL, whole expired months go first (`_drop_expired_months`): checkpoints
        committed, then the months' partitions detached and dropped, whatever their size. Then,
        as on SQLite, up to `batch_size` of the oldest events still expired (the boundary
        month's, the default partition's) are deleted row by row, in the order of the expiry
        index (recorded_at, account, sequence): finding them reads `batch_size` index entries,
        so a batch costs the same at the start and at the end of a long purge, and concurrent
        appends (which touch other rows: the chain head and new events) never wait for it on
        PostgreSQL. Once no expired event is left, up to `batch_size` salts whose talent's last
        event was among them are deleted."""
        purged = checkpoints = 0
        if self.db.dialect == "postgresql":
            self.partitions.ahead()
            purged, checkpoints = self._drop_expired_months(cutoff)
        salts_done = True
        with self.db.write() as session:
            serialize(session, PURGE_LOCK)
            for account_id, through in sorted(oldest_expired(session, cutoff, batch_size).items()):
                through_hash = session.get_one(EventRow, (account_id, through)).event_hash
                deleted = delete_events_through(session, account_id, through)
                self._move_checkpoint(session, account_id, through, through_hash, deleted)
                purged += deleted
                checkpoints += 1
            left = any_expired(session, cutoff)
        if self.db.dialect != "postgresql":
            self._step("checkpointed")  # checkpoints and deletes in one transaction
        salts = 0
        if not left:  # every expired event is gone: so are the salts only they used
            with self.db.write() as session:
                salts, salts_done = self.vault.purge_idle(session, cutoff, batch_size)
        done = not left and salts_done
        logs.log(
            logger,
            "events purged",
            purged=purged,
            checkpoints=checkpoints,
            salts_deleted=salts,
            done=done,
        )
        return purged, done, checkpoints, salts

    def _drop_expired_months(self, cutoff: datetime) -> tuple[int, int]:
        """Drops the partitions of months that ended by `cutoff` (PostgreSQL); returns (events
        purged, checkpoints moved).

        1. In one transaction, without blocking appends: per account, the first and last event
           recorded before the end of the last expired month (one statement, so one snapshot,
           with the chain heads), and each checkpoint moved forward to that last event.
        2. `step("checkpointed")`. A chain verifies meanwhile: verification starts after
           the checkpoint, and the events at or before it are the ones about to go.
        3. In another transaction, holding audit_events exclusively (appends wait: each drop is
           a catalog change of a few milliseconds; the lock is waited for at most
           DROP_LOCK_TIMEOUT_MS at a time, so appends never queue behind a long reader): check
           that no event before that end was appended since step 1 (accounts whose head moved
           are probed again), delete the default partition's events before it, and DETACH each
           expired partition. DETACH ... CONCURRENTLY would not block appends, but PostgreSQL
           refuses it on a table with a default partition.
        4. DROP the detached tables, in a transaction that does not lock audit_events: freeing
           their files at commit is most of a purge's time. A purge that stops before this step
           leaves them detached (their events no longer in audit_events); the next one drops
           them.
        If step 3 cannot run (the lock stayed busy, an event was appended before the end, another
        purge ran in between), nothing is dropped and the caller's row-by-row batches carry on,
        which is always correct; the next purge drops the partitions."""
        self.partitions.drop_detached()  # left by a purge that stopped after its detach
        with self.db.write() as session:
            serialize(session, PURGE_LOCK)
            connection = session.connection()
            months = month_partitions(connection)
            expired = sorted(month for month in months if next_month(month) <= cutoff)
            if not expired:
                return 0, 0
            upper = next_month(expired[-1])
            spans, heads = expired_spans(connection, upper)
            for span in spans:
                self._move_checkpoint(session, span.account_id, span.last, span.last_hash, 0)
            session.flush()
            generation = purge_generation(connection)
        self._step("checkpointed")
        for _ in range(DROP_ATTEMPTS):
            try:
                with self.db.write() as session:
                    serialize(session, PURGE_LOCK)
                    connection = session.connection()
                    lock_events(connection, DROP_LOCK_TIMEOUT_MS)
                    present = month_partitions(connection)
                    names = [present[month] for month in expired if month in present]
                    if not names or purge_generation(connection) != generation:
                        reason = "already dropped" if not names else "another purge ran"
                        logs.log(logger, "partition drop skipped", reason=reason)
                        return 0, 0
                    if not self._covered(connection, session, upper, heads):
                        logs.log(logger, "partition drop postponed", reason="late append")
                        return 0, 0
                    delete_default_before(connection, upper)
                    for name in names:
                        detach_partition(connection, name)
                    for span in spans:
                        checkpoint = session.get(Checkpoint, span.account_id)
                        assert checkpoint is not None  # written by the first step
                        checkpoint.purged_total += span.last - span.first + 1
                self._step("detached")
                self.partitions.drop_detached()
                purged = sum(span.last - span.first + 1 for span in spans)
                logs.log(
                    logger,
                    "partitions dropped",
                    months=",".join(month.strftime("%Y-%m") for month in expired),
                    purged=purged,
                )
                return purged, len(spans)
            except OperationalError as exc:
                if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available
                    raise
        logs.log(logger, "partition drop postponed", reason="audit_events busy")
        return 0, 0

    @staticmethod
    def _covered(
        connection: Connection, session: Session, upper: datetime, heads: dict[str, int]
    ) -> bool:
        """Whether every event before `upper` is at or before its chain's checkpoint, for the
        chains appended to since `heads` were read (the others did not change)."""
        for account_id, sequence in head_sequences(connection).items():
            if heads.get(account_id) == sequence:
                continue
            last = last_sequence_before(connection, account_id, upper)
            checkpoint = session.get(Checkpoint, account_id)
            if last is not None and (checkpoint is None or last > checkpoint.through_sequence):
                return False
        return True

    def _move_checkpoint(
        self, session: Session, account_id: str, sequence: int, digest: str, deleted: int
    ) -> None:
        """Moves the account's checkpoint forward to `sequence` (never back: a purge may delete
        events a dropped partition's checkpoint already passed) and counts `deleted`."""
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
            if sequence > checkpoint.through_sequence:
                checkpoint.through_sequence, checkpoint.through_hash = sequence, digest
            checkpoint.purged_total += deleted
            checkpoint.updated_at = self.clock()
