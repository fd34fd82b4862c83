"""The gateway's access log: one entry per call to its client port (GatewayService and
AdminService; the internal port is not logged), kept MIXIP_GATEWAY_ACCESS_LOG_RETENTION_DAYS.
This module holds an account's view of it (ListAccessLog) and its purge (PurgeAccessLog);
gateway/access_recording.py holds the interceptor that records the calls and the batching
writer.

An entry says who called (account and API key id, from authentication; empty when the call was
not authenticated), from where (the peer address), which RPC, the project and media the call
named, how it ended (the final gRPC status code) and when (the gateway's clock). It never holds
a talent id, media bytes, notes or a key's secret: the interceptor reads only the requests'
top-level `project_id` and `media_id`, and servicers add only identifiers (`gateway.auth.note`).

A listing and a purge first write out the writer's queue, so both see every call this replica
ended before them; another replica's entries are visible once its writer has written them
(within access_recording.FLUSH_SECONDS).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, union_all

from gateway.access_recording import AccessLogWriter
from gateway.settings import DEFAULT_ACCESS_LOG_RETENTION_DAYS
from gateway.store import AccessLogRow, affected
from mixip.runtime import logs
from mixip.runtime.db import Database
from mixip.runtime.errors import NotFound
from mixip.runtime.paging import fetch_limit, page_of

logger = logging.getLogger("mixip.gateway.access_log")


@dataclass(frozen=True)
class AccessEntry:
    """One recorded call, as ListAccessLog returns it."""

    sequence: int
    account_id: str
    api_key_id: str
    peer: str
    rpc: str
    project_id: str
    media_id: str
    status_code: str
    occurred_at: datetime


@dataclass(frozen=True)
class AccessFilter:
    """ListAccessLog's optional filters."""

    since: datetime | None = None
    project_id: str = ""


class AccessLog:
    """The access log's use cases: an account's view of it, and its purge."""

    def __init__(
        self,
        db: Database,
        writer: AccessLogWriter,
        *,
        retention_days: int = DEFAULT_ACCESS_LOG_RETENTION_DAYS,
        owns_project: Callable[[str, str], bool] | None = None,
    ) -> None:
        """`owns_project(account_id, project_id)`: whether the account owns the project, so a
        filter on someone else's project is NOT_FOUND. The composition root passes the
        projects' ownership check; without one (no projects yet) a filter only filters."""
        self.db = db
        self.writer = writer
        self.retention_days = retention_days
        self.owns_project = owns_project

    def entries(
        self, account_id: str, where: AccessFilter, page_size: int, after_sequence: int
    ) -> tuple[list[AccessEntry], int | None]:
        """A page of the account's entries, oldest first: its own calls, and the calls of
        others on its data (owner_account_id). Each side is one range scan of its index."""
        if (
            where.project_id
            and self.owns_project is not None
            and not self.owns_project(account_id, where.project_id)
        ):
            raise NotFound("no such project", reason="PROJECT_NOT_FOUND")
        self.writer.flush()  # every call this replica ended so far is in the table
        limit = fetch_limit(page_size)
        conditions = [AccessLogRow.sequence > after_sequence]
        if where.since is not None:
            conditions.append(AccessLogRow.occurred_at >= where.since)
        if where.project_id:
            conditions.append(AccessLogRow.project_id == where.project_id)
        own = (
            select(AccessLogRow)
            .where(AccessLogRow.account_id == account_id, *conditions)
            .order_by(AccessLogRow.sequence)
            .limit(limit)
            .subquery()
        )
        others = (
            select(AccessLogRow)
            .where(
                AccessLogRow.owner_account_id == account_id,
                AccessLogRow.account_id != account_id,
                *conditions,
            )
            .order_by(AccessLogRow.sequence)
            .limit(limit)
            .subquery()
        )
        both = union_all(select(own), select(others)).subquery()
        with self.db.read() as session:
            rows = session.execute(select(both).order_by(both.c.sequence).limit(limit)).all()
        found = [
            AccessEntry(
                sequence=row.sequence,
                account_id=row.account_id,
                api_key_id=row.api_key_id,
                peer=row.peer,
                rpc=row.rpc,
                project_id=row.project_id,
                media_id=row.media_id,
                status_code=row.status_code,
                occurred_at=row.occurred_at,
            )
            for row in rows
        ]
        return page_of(found, page_size, lambda entry: entry.sequence)

    def purge(self, as_of: datetime, batch_size: int) -> tuple[int, bool]:
        """Deletes up to `batch_size` of the oldest entries older than the retention period at
        `as_of`; returns (deleted, none left). Idempotent: call it until done."""
        self.writer.flush()  # nothing queued escapes the purge it predates
        cutoff = as_of - timedelta(days=self.retention_days)
        expired = AccessLogRow.occurred_at < cutoff
        oldest = (
            select(AccessLogRow.sequence)
            .where(expired)
            .order_by(AccessLogRow.occurred_at, AccessLogRow.sequence)
            .limit(batch_size)
        )
        with self.db.write() as session:
            deleted = affected(
                session, delete(AccessLogRow).where(AccessLogRow.sequence.in_(oldest))
            )
            left = session.scalar(select(AccessLogRow.sequence).where(expired).limit(1))
        logs.log(
            logger,
            "access log purged",
            deleted=deleted,
            done=left is None,
            as_of=as_of.isoformat(),
        )
        return deleted, left is None
