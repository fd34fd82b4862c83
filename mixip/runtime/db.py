"""SQLAlchemy 2 engines and units of work for every service.

Embedded default: one SQLite file per service (WAL, foreign keys, write transactions take the
lock up front with BEGIN IMMEDIATE so two writers never deadlock on a lock upgrade).
Production and CI: PostgreSQL through psycopg2, with pre-ping so a restarted server is
reconnected to without restarting the service.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    DateTime,
    Engine,
    MetaData,
    Table,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, CursorResult, Dialect, Result, make_url
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause

from mixip.runtime.files import private_dir, touch_private

_SQLITE_BEGIN = "mixip_sqlite_begin"


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on every backend (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def database_url(url: str) -> URL:
    """The URL with an explicit driver: plain postgresql:// means psycopg2 (our dependency;
    SQLAlchemy 2.1 would pick psycopg 3)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


def create_db_engine(url: str, *, autocommit: bool = False) -> Engine:
    """The engine of `url`; with `autocommit` (PostgreSQL), its connections stay in autocommit
    mode: nothing is set on them at each checkout and return."""
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # The file is made 0600 in a 0700 directory before SQLite opens it; SQLite gives its
            # -wal and -shm files the database file's mode.
            path = Path(parsed.database)
            if not path.parent.exists():
                private_dir(path.parent)
            touch_private(path)
        engine = create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's begin event below issue BEGIN, not the driver.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # Deleted content is overwritten with zeros, not left in free pages (erasure).
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
            connection.exec_driver_sql(f"BEGIN {mode}")

        return engine
    return create_engine(
        parsed,
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
        pool_pre_ping=True,
        pool_size=8,
        max_overflow=16,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5},  # an unreachable server fails, not hangs
    )


class Database:
    """One service's database: its engine, its tables, and transactions on them."""

    def __init__(self, url: str, metadata: MetaData) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        self.dialect = self.engine.dialect.name
        self._writer = (
            self.engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
            if self.dialect == "sqlite"
            else self.engine
        )
        # a pool of its own (connected on first use): switching a pooled connection into
        # autocommit and back costs a statement each way
        self._autocommit = (
            create_db_engine(url, autocommit=True) if self.dialect == "postgresql" else None
        )
        self.metadata = metadata

    def create_tables(self) -> None:
        """Creates missing tables (scratch databases: benchmarks, tests of one store). Services
        migrate their schema instead (mixip.runtime.migrations)."""
        with self.engine.begin() as connection:
            if self.dialect == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
            self.metadata.create_all(connection)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A read-write unit of work: commits on success, rolls back on any exception."""
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read(self, *, snapshot: bool = False) -> Iterator[Session]:
        """A read-only unit of work (rolled back at the end). With `snapshot`, every query sees
        the same committed state (REPEATABLE READ on PostgreSQL; SQLite's WAL read transaction
        is a snapshot already)."""
        bind = self.engine
        if snapshot and self.dialect == "postgresql":
            bind = self.engine.execution_options(isolation_level="REPEATABLE READ")
        with Session(bind) as session:
            yield session

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection on which each statement is its own transaction (PostgreSQL only): no
        BEGIN or ROLLBACK round trip around a read that is one statement, one snapshot."""
        if self._autocommit is None:
            raise ValueError("autocommit connections are PostgreSQL's only")
        with self._autocommit.connect() as connection:
            yield connection

    def scrub(self, tables: Sequence[str]) -> None:
        """Makes deleted rows of these tables leave the database's files, after an erasure
        deleted or overwrote them: SQLite (secure_delete zeroes freed cells) copies its WAL into
        the database and truncates the WAL; PostgreSQL vacuums the tables, so no dead tuple
        keeps the old row versions. What stays (WAL archives, backups, replicas) holds only
        ciphertext under keys that the erasure and the next rotation destroy (docs/erasure.md).
        Best effort: a reader that holds an old snapshot delays the SQLite checkpoint, which
        the next scrub or the next automatic checkpoint completes."""
        with self.engine.connect() as connection:
            if self.dialect == "sqlite":
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                return
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            for table in tables:
                quoted = connection.dialect.identifier_preparer.quote(table)
                connection.exec_driver_sql(f"VACUUM {quoted}")

    def rewrite(self, tables: Sequence[str]) -> None:
        """`scrub` for rows that were stored in clear (an account's display name): PostgreSQL's
        plain VACUUM frees a dead tuple's space without overwriting its bytes, so these tables
        are rewritten into new files (VACUUM FULL: an exclusive lock for as long as the copy
        takes; keep it to small tables). SQLite's `secure_delete` already zeroed them."""
        if self.dialect == "sqlite":
            self.scrub(tables)
            return
        with self.engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            for table in tables:
                quoted = connection.dialect.identifier_preparer.quote(table)
                connection.exec_driver_sql(f"VACUUM FULL {quoted}")

    def ping(self) -> bool:
        """Whether the database answers now (for health)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()


def serialize(session: Session, name: str) -> None:
    """Makes this transaction wait for any other holding lock `name` until it ends (a
    transaction-scoped advisory lock on PostgreSQL; SQLite write transactions are serial)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def insert_ignoring_conflicts(
    session: Session,
    table: FromClause,
    rows: Sequence[dict[str, Any]],
    conflict_columns: Sequence[str],
) -> int:
    """INSERT ... ON CONFLICT DO NOTHING; returns how many rows were inserted."""
    if not rows:
        return 0
    assert isinstance(table, Table)  # a model's __table__
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(table)
        .values(list(rows))
        .on_conflict_do_nothing(index_elements=list(conflict_columns))
    )
    return rowcount(session.execute(statement))


def rowcount(result: Result[Any]) -> int:
    """How many rows an INSERT, UPDATE or DELETE touched."""
    return int(cast(CursorResult[Any], result).rowcount)


def bulk_insert(session: Session, table: FromClause, rows: Sequence[dict[str, Any]]) -> None:
    """Inserts many rows at once: COPY on PostgreSQL (2-3x a multi-row INSERT at a thousand
    rows), one multi-row INSERT elsewhere. Every row has the same keys: every column of
    `table`, or all but columns the database fills (an auto-incrementing key)."""
    if not rows:
        return
    assert isinstance(table, Table)  # a model's __table__
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(table.insert(), list(rows))
        return
    columns = [column.name for column in table.columns if column.name in rows[0]]
    buffer = io.StringIO()
    for row in rows:
        buffer.write("\t".join(_copy_text(row[name]) for name in columns))
        buffer.write("\n")
    buffer.seek(0)
    quoted = ", ".join(f'"{name}"' for name in columns)
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None  # a checked-out connection
    cursor = dbapi_connection.cursor()
    try:
        cursor.copy_expert(f'COPY "{table.name}" ({quoted}) FROM STDIN', buffer)
    finally:
        cursor.close()


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    """One value in COPY's text format (NULL is \\N; bytea as escaped hex)."""
    if value is None:
        return "\\N"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if isinstance(value, datetime):
        return _copy_instant(value)
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same double
    return str(value).translate(_COPY_ESCAPES)


@functools.lru_cache(maxsize=256)
def _copy_instant(value: datetime) -> str:
    """A batch's rows share a few instants: each is formatted once."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: every timestamp here is aware UTC")
    return value.astimezone(UTC).isoformat()
