"""audit events partitioned by month on PostgreSQL

On PostgreSQL, audit_events becomes a table partitioned by RANGE (recorded_at), one partition
per month (`audit_events_YYYY_MM`) plus a default one, so a purge drops whole expired months.
In the upgrade's one transaction: the old table is renamed aside, the partitioned table and a
partition for every month that holds events (and the current and next months) are made, every
row is moved, the keys and indexes are built, and the old table is dropped. The primary key and
the idempotency key's index gain recorded_at (a partitioned table's keys must hold the
partition key); services/audit/store.py says why the keys stay unique. A no-op on SQLite.

Created 2026-11-30 01:50:00
"""

from datetime import UTC, datetime

from alembic import op
from sqlalchemy import text

revision = "7c1d2e9a4b60"
down_revision = "90ceaa6bad06"
branch_labels = None
depends_on = None

COLUMNS = (
    "account_id, sequence, idempotency_key, project_id, media_id, face_index, label, reason,"
    " similarity, talent_hash, actor, occurred_at, recorded_at, prev_hash, event_hash"
)
DEFINITION = """(
    account_id VARCHAR(128) NOT NULL,
    sequence BIGINT NOT NULL,
    idempotency_key VARCHAR(200) NOT NULL,
    project_id VARCHAR(128) NOT NULL,
    media_id VARCHAR(128) NOT NULL,
    face_index INTEGER NOT NULL,
    label SMALLINT NOT NULL,
    reason SMALLINT NOT NULL,
    similarity DOUBLE PRECISION NOT NULL,
    talent_hash BYTEA,
    actor VARCHAR(128) NOT NULL,
    occurred_at TIMESTAMP WITH TIME ZONE NOT NULL,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
    prev_hash VARCHAR(64) NOT NULL,
    event_hash VARCHAR(64) NOT NULL
)"""
INDEXES = (
    "CREATE INDEX ix_audit_events_talent ON audit_events (account_id, talent_hash, sequence)",
    "CREATE INDEX ix_audit_events_expiry ON audit_events (recorded_at, account_id, sequence)",
)


def _month(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next(month: datetime) -> datetime:
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


def _partition(month: datetime) -> None:
    op.execute(
        f"CREATE TABLE IF NOT EXISTS audit_events_{month:%Y_%m} PARTITION OF audit_events"
        f" FOR VALUES FROM ('{month.isoformat()}') TO ('{_next(month).isoformat()}')"
    )


def _copy(source: str) -> None:
    op.execute(f"INSERT INTO audit_events ({COLUMNS}) SELECT {COLUMNS} FROM {source}")  # noqa: S608


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    bind = op.get_bind()
    op.execute("ALTER TABLE audit_events RENAME TO audit_events_unpartitioned")
    op.execute(
        "ALTER TABLE audit_events_unpartitioned RENAME CONSTRAINT audit_events_pkey TO"
        " audit_events_unpartitioned_pkey"
    )
    for name in ("ix_audit_events_key", "ix_audit_events_talent", "ix_audit_events_expiry"):
        op.execute(f"DROP INDEX {name}")
    op.execute(f"CREATE TABLE audit_events {DEFINITION} PARTITION BY RANGE (recorded_at)")
    op.execute("CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT")
    # The months that hold events (one index probe each), then the current and the next.
    months = []
    found = bind.scalar(text("SELECT min(recorded_at) FROM audit_events_unpartitioned"))
    while found is not None:
        months.append(_month(found))
        found = bind.scalar(
            text("SELECT min(recorded_at) FROM audit_events_unpartitioned WHERE recorded_at >= :m"),
            {"m": _next(months[-1])},
        )
    now = _month(datetime.now(UTC))
    for month in [*months, now, _next(now)]:
        _partition(month)
    _copy("audit_events_unpartitioned")
    op.execute("ALTER TABLE audit_events ADD PRIMARY KEY (account_id, sequence, recorded_at)")
    op.execute(
        "CREATE UNIQUE INDEX ix_audit_events_key_at ON audit_events"
        " (account_id, idempotency_key, recorded_at)"
    )
    for index in INDEXES:
        op.execute(index)
    op.execute("DROP TABLE audit_events_unpartitioned")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE audit_events RENAME TO audit_events_partitioned")
    op.execute(
        "ALTER TABLE audit_events_partitioned RENAME CONSTRAINT audit_events_pkey TO"
        " audit_events_partitioned_pkey"
    )
    for name in ("ix_audit_events_key_at", "ix_audit_events_talent", "ix_audit_events_expiry"):
        op.execute(f"DROP INDEX {name}")
    op.execute(f"CREATE TABLE audit_events {DEFINITION}")
    _copy("audit_events_partitioned")
    op.execute("ALTER TABLE audit_events ADD PRIMARY KEY (account_id, sequence)")
    op.execute(
        "CREATE UNIQUE INDEX ix_audit_events_key ON audit_events (account_id, idempotency_key)"
    )
    for index in INDEXES:
        op.execute(index)
    op.execute("DROP TABLE audit_events_partitioned")  # and its partitions
