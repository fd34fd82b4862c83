"""Retention of the gateway's copies: stored media, their face results (talent → media →
project → time, in clear) and their stored objects expire after the account's retention period
(default 365 days).

The retention service's purge drives the deletion through `PurgeExpiredMedia`, one bounded batch
per call. Each batch deletes the rows first, in one transaction (a media and its results go
together), and the stored objects after the commit: a crash in between leaves unreferenced
objects, never a row pointing at a deleted object. Once no expired media is left, the purge
purges abandoned upload sessions (gateway/upload_sessions.py: idle past their rule, 24 hours by
default: their parts and rows), sweeps unreferenced objects older than any upload can take, and
deletes the analysis jobs that ended more than MIXIP_GATEWAY_JOB_RETENTION_DAYS before
(gateway/jobs.py). Every step is idempotent, so concurrent purges or a retried call delete
nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from gateway.media_store import MediaStore
from gateway.seals import Seals
from gateway.settings import DEFAULT_RETENTION_DAYS
from gateway.store import AccountRetentionRow, AccountRow, MediaFaceRow, MediaRow, affected
from mixip.runtime import logs
from mixip.runtime.db import Database
from mixip.runtime.errors import NotFound
from mixip.runtime.times import Clock

logger = logging.getLogger("mixip.gateway.retention")


@dataclass(frozen=True)
class AccountRetention:
    account_id: str
    retention_days: int
    updated_at: datetime


@dataclass(frozen=True)
class PurgeBatch:
    """What one call deleted."""

    media_deleted: int = 0
    faces_deleted: int = 0
    objects_deleted: int = 0
    orphans_deleted: int = 0
    sessions_deleted: int = 0
    jobs_deleted: int = 0
    done: bool = False


class MediaRetention:
    def __init__(
        self,
        db: Database,
        media_store: MediaStore,
        clock: Clock,
        sweep_orphans: Callable[[int], int],  # (limit) -> unreferenced objects deleted
        seals: Seals,
        purge_sessions: Callable[[datetime, int], int],  # (as of, limit) -> sessions deleted
        purge_jobs: Callable[[datetime, int], int],  # (as of, limit) -> ended jobs deleted
        *,
        default_days: int = DEFAULT_RETENTION_DAYS,
    ) -> None:
        self.db = db
        self.seals = seals
        self.media_store = media_store
        self.clock = clock
        self.sweep_orphans = sweep_orphans
        self.purge_sessions = purge_sessions
        self.purge_jobs = purge_jobs
        self.default_days = default_days

    # -- per-account setting ------------------------------------------------------------------

    def set_account_retention(
        self, account_id: str, days: int, admin_key_id: str
    ) -> AccountRetention:
        with self.db.write() as session:
            if session.get(AccountRow, account_id) is None:
                raise NotFound("no such account")
            row = session.get(AccountRetentionRow, account_id)
            if row is None:
                row = AccountRetentionRow(account_id=account_id)
                session.add(row)
            row.retention_days, row.updated_at, row.updated_by = days, self.clock(), admin_key_id
            saved = AccountRetention(account_id, days, row.updated_at)
        logs.log(logger, "account retention set", account=account_id, days=days, key=admin_key_id)
        return saved

    # -- purge --------------------------------------------------------------------------------

    def purge_expired(self, as_of: datetime, batch_size: int) -> PurgeBatch:
        """One batch: expired media first; once none is left, abandoned upload sessions; then
        orphaned objects and ended jobs."""
        expired = self._expired(as_of, batch_size)
        if not expired:
            sessions = self.purge_sessions(as_of, batch_size)
            if sessions == batch_size:
                return PurgeBatch(sessions_deleted=sessions)
            orphans = self.sweep_orphans(batch_size)
            jobs = self.purge_jobs(as_of, batch_size)
            if jobs:
                logs.log(logger, "ended jobs purged", jobs=jobs, as_of=as_of.isoformat())
            return PurgeBatch(
                sessions_deleted=sessions,
                orphans_deleted=orphans,
                jobs_deleted=jobs,
                done=orphans < batch_size and jobs < batch_size,
            )
        ids = [media_id for media_id, _, _ in expired]
        with self.db.write() as session:
            faces = affected(session, delete(MediaFaceRow).where(MediaFaceRow.media_id.in_(ids)))
            media = affected(session, delete(MediaRow).where(MediaRow.media_id.in_(ids)))
            # their file names' keys (an expiry is no erasure: no rotation is owed for it)
            self.seals.destroy_media_keys(
                session, [(account, m) for m, account, _ in expired], owe_rotation=False
            )
        # After the commit: until here every object was still referenced and readable.
        for _, account_id, storage_key in expired:
            self.media_store.delete(account_id, storage_key)
        logs.log(
            logger,
            "expired media purged",
            media=media,
            faces=faces,
            objects=len(expired),
            as_of=as_of.isoformat(),
        )
        return PurgeBatch(media_deleted=media, faces_deleted=faces, objects_deleted=len(expired))

    def _expired(self, as_of: datetime, limit: int) -> list[tuple[str, str, str]]:
        """(media id, account id, storage key) of up to `limit` media uploaded more than their
        account's retention period before `as_of`, oldest first: one condition per distinct
        period in force (accounts on the default, then each period set by an admin)."""
        with self.db.read() as session:
            periods = session.scalars(select(AccountRetentionRow.retention_days).distinct()).all()
            custom = select(AccountRetentionRow.account_id)
            conditions = [
                MediaRow.account_id.not_in(custom)
                & (MediaRow.created_at < as_of - timedelta(days=self.default_days))
            ]
            for days in periods:
                accounts = custom.where(AccountRetentionRow.retention_days == days)
                conditions.append(
                    MediaRow.account_id.in_(accounts)
                    & (MediaRow.created_at < as_of - timedelta(days=days))
                )
            found: list[tuple[str, str, str]] = []
            for condition in conditions:
                rows = session.execute(
                    select(MediaRow.media_id, MediaRow.account_id, MediaRow.storage_key)
                    .where(condition)
                    .order_by(MediaRow.created_at, MediaRow.media_id)
                    .limit(limit - len(found))
                ).all()
                found += [(media_id, account, key) for media_id, account, key in rows]
                if len(found) >= limit:
                    break
        return found
