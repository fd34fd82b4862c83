"""The retention service's tables (its own database; no other service reads it).

APScheduler's job-store tables (`retention_jobs_<replica>`) live in the same database but are
created and owned by APScheduler, one per replica (see `schedule.job_store_table`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from mixip.runtime.db import UtcDateTime
from services.retention.domain import Outcome

# SQLite only auto-increments an INTEGER PRIMARY KEY.
Sequence = BigInteger().with_variant(Integer, "sqlite")
MAX_ERROR_LENGTH = 200


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    """One run of a job: inserted RUNNING (or SKIPPED), then finished SUCCEEDED or FAILED.
    Counts only; no talent id is ever stored here."""

    __tablename__ = "retention_runs"

    seq: Mapped[int] = mapped_column(Sequence, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), unique=True)
    job: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    cutoff: Mapped[datetime | None] = mapped_column(UtcDateTime)
    events_purged: Mapped[int] = mapped_column(BigInteger, default=0)
    talents_checked: Mapped[int] = mapped_column(BigInteger, default=0)
    vectors_deleted: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(String(MAX_ERROR_LENGTH))
    tick: Mapped[datetime | None] = mapped_column(UtcDateTime)
    replica_id: Mapped[str] = mapped_column(String(128))
    details: Mapped[RunDetailRow | None] = relationship(lazy="joined")

    __table_args__ = (Index("ix_retention_runs_job", "job", "seq"),)


class RunDetailRow(Base):
    """More of a run (a table of its own, so databases made before it need no migration): the
    time a purge ran as of, who asked for a manual run, and what the gateway's purge deleted.
    Counts and an admin key id only; no talent id."""

    __tablename__ = "retention_run_details"

    run_id: Mapped[str] = mapped_column(ForeignKey("retention_runs.run_id"), primary_key=True)
    as_of: Mapped[datetime | None] = mapped_column(UtcDateTime)
    requested_by: Mapped[str | None] = mapped_column(String(64))
    media_purged: Mapped[int] = mapped_column(BigInteger, default=0)
    media_objects_deleted: Mapped[int] = mapped_column(BigInteger, default=0)


class TickRow(Base):
    """The lock of one scheduled tick of a job: the replica that inserts it runs the tick, every
    other replica firing the same tick finds it and records a SKIPPED run."""

    __tablename__ = "retention_ticks"

    job: Mapped[str] = mapped_column(String(16), primary_key=True)
    tick: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32))
    replica_id: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[datetime] = mapped_column(UtcDateTime)


def last_succeeded(session: Session, job: str) -> RunRow | None:
    """The latest run of `job` that succeeded (for metrics)."""
    return session.scalars(
        select(RunRow)
        .where(RunRow.job == job, RunRow.outcome == Outcome.SUCCEEDED.value)
        .order_by(RunRow.seq.desc())
        .limit(1)
    ).one_or_none()
