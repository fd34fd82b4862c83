"""The monthly partitions of audit_events (PostgreSQL; docs/audit-partitions.md): their names,
the catalog reads that list them, the DDL that makes, detaches and drops them, and the use
case that makes them ahead. SQLite keeps one table: every use case here is a no-op there."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import Connection, text

from mixip.runtime import logs
from mixip.runtime.db import Database, serialize
from mixip.runtime.times import Clock
from services.audit.store import PARTITION_PREFIX

logger = logging.getLogger("mixip.audit")
# Partition changes and purges wait for each other (a manual purge may overlap a scheduled one).
PURGE_LOCK = "mixip.audit.purge"


def month_of(at: datetime) -> datetime:
    """The first instant (UTC) of the month holding `at`."""
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(month: datetime) -> datetime:
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


def partition_name(month: datetime) -> str:
    return f"{PARTITION_PREFIX}{month:%Y_%m}"


def partition_month(name: str) -> datetime | None:
    """The month a partition holds, from its name (None for the default partition)."""
    try:
        return datetime.strptime(name.removeprefix(PARTITION_PREFIX), "%Y_%m").replace(tzinfo=UTC)
    except ValueError:
        return None


def month_partitions(connection: Connection) -> dict[datetime, str]:
    """The month partitions of audit_events (PostgreSQL), by the month each holds."""
    names = connection.scalars(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'audit_events'::regclass"
        )
    )
    return {month: name for name in names if (month := partition_month(name)) is not None}


def detached_partitions(connection: Connection) -> list[str]:
    """Month tables of this schema that are no partition any more: detached by a purge that
    has yet to drop them (PostgreSQL)."""
    names = connection.scalars(
        text(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition"
            " AND relnamespace = current_schema()::regnamespace"
            " AND relname LIKE 'audit\\_events\\_%'"
        )
    )
    return sorted(name for name in names if partition_month(name) is not None)


def ensure_month_partition(connection: Connection, month: datetime) -> bool:
    """Makes the partition of `month` unless it exists; True when it was made. Rows of that
    month that waited in the default partition move into it (PostgreSQL refuses a partition
    whose rows the default partition holds). The caller serializes partition changes."""
    name = partition_name(month)
    if connection.scalar(text("SELECT to_regclass(:name)"), {"name": name}) is not None:
        return False
    lo, hi = month, next_month(month)
    bounds = f"FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"  # DDL takes no parameters
    waiting = {"lo": lo, "hi": hi}
    if connection.scalar(
        text(
            "SELECT 1 FROM audit_events_default WHERE recorded_at >= :lo AND recorded_at < :hi"
            " LIMIT 1"
        ),
        waiting,
    ):
        connection.execute(
            text(
                f"CREATE TABLE {name} (LIKE audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
        )
        moved = "DELETE FROM audit_events_default WHERE recorded_at >= :lo AND recorded_at < :hi"
        move = f"WITH moved AS ({moved} RETURNING *) INSERT INTO {name} SELECT * FROM moved"  # noqa: S608
        connection.execute(text(move), waiting)
        connection.execute(
            text(f"ALTER TABLE audit_events ATTACH PARTITION {name} FOR VALUES {bounds}")
        )
    else:
        connection.execute(
            text(f"CREATE TABLE {name} PARTITION OF audit_events FOR VALUES {bounds}")
        )
    return True


def lock_events(connection: Connection, timeout_ms: int) -> None:
    """Holds audit_events exclusively for the rest of the transaction (appends wait), waiting
    at most `timeout_ms` for the lock (OperationalError 55P03 lock_not_available then)."""
    connection.execute(text(f"SET LOCAL lock_timeout = '{timeout_ms}ms'"))
    connection.execute(text("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE"))


def delete_default_before(connection: Connection, upper: datetime) -> None:
    """Deletes the default partition's events recorded before `upper`."""
    connection.execute(
        text("DELETE FROM audit_events_default WHERE recorded_at < :upper"), {"upper": upper}
    )


def detach_partition(connection: Connection, name: str) -> None:
    connection.execute(text(f"ALTER TABLE audit_events DETACH PARTITION {name}"))


class Partitions:
    """Makes and drops the month partitions (PostgreSQL), each change serialized with the
    others and with purges (PURGE_LOCK)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def ahead(self) -> list[str]:
        """Makes the partitions of the current and the next month unless they exist (at start
        and at every purge); returns the ones made. A no-op on SQLite."""
        if self.db.dialect != "postgresql":
            return []
        return self.make_for(self.clock())

    def make_for(self, at: datetime) -> list[str]:
        """Makes the partitions of the month of `at` and the next one (PostgreSQL)."""
        made = []
        with self.db.write() as session:
            serialize(session, PURGE_LOCK)  # partition changes wait for each other
            connection = session.connection()
            for month in (month_of(at), next_month(month_of(at))):
                if ensure_month_partition(connection, month):
                    made.append(month.strftime("%Y-%m"))
        if made:
            logs.log(logger, "partitions made", months=",".join(made))
        return made

    def drop_detached(self) -> None:
        """Drops the month tables a purge detached. Outside the detach's transaction: freeing a
        large table's files at commit takes a while, and audit_events is not locked meanwhile
        (nothing else uses a detached table)."""
        with self.db.write() as session:
            serialize(session, PURGE_LOCK)
            connection = session.connection()
            for name in detached_partitions(connection):
                connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
