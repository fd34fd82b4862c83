"""The audit service's tables (its own database; no other service reads it)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    DDL,
    BigInteger,
    Connection,
    Double,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mixip.runtime.db import UtcDateTime
from mixip.runtime.vault import VaultSecretColumns, VaultStateColumns
from services.audit.domain import KIND_MATCH, NO_DECISION


class Base(DeclarativeBase):
    pass


class EventRow(Base):
    """One match result or review decision (`kind`; rows recorded before kinds existed read
    as matches, `decision` NO_DECISION). The talent appears only as HMAC(salt, talent id),
    never in clear.

    On PostgreSQL the table is partitioned by month of `recorded_at` (RANGE; one partition per
    month, `audit_events_YYYY_MM`, and `audit_events_default` for any instant no month
    partition covers, so an append never fails): a purge drops whole expired months instead of
    deleting their rows. A key of a partitioned table must hold the partition key, so there the
    primary key is (account_id, sequence, recorded_at) and the idempotency key's index is
    unique on (account_id, idempotency_key, recorded_at). Both stay unique without it, as on
    SQLite, by the one writer: `AuditLog.record` holds the account's chain head row lock, reads
    the batch's keys from every partition and inserts only the absent ones with the next
    sequences; appends to one account are serial, and keys and sequences are per account."""

    __tablename__ = "audit_events"

    account_id: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int] = mapped_column(BigInteger)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    project_id: Mapped[str] = mapped_column(String(128))
    media_id: Mapped[str] = mapped_column(String(128))
    face_index: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(SmallInteger)
    reason: Mapped[int] = mapped_column(SmallInteger)
    similarity: Mapped[float] = mapped_column(Double)
    talent_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    actor: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    prev_hash: Mapped[str] = mapped_column(String(64))
    event_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[int] = mapped_column(SmallInteger, server_default=text(str(KIND_MATCH)))
    decision: Mapped[int] = mapped_column(SmallInteger, server_default=text(str(NO_DECISION)))

    __table_args__ = (
        # PostgreSQL's primary key (with recorded_at) is added after CREATE TABLE, below.
        PrimaryKeyConstraint("account_id", "sequence").ddl_if(dialect="sqlite"),
        Index("ix_audit_events_key", "account_id", "idempotency_key", unique=True).ddl_if(
            dialect="sqlite"
        ),
        Index(
            "ix_audit_events_key_at", "account_id", "idempotency_key", "recorded_at", unique=True
        ).ddl_if(dialect="postgresql"),
        Index("ix_audit_events_talent", "account_id", "talent_hash", "sequence"),
        # Purge reads the oldest expired events in this order (a bounded range scan).
        Index("ix_audit_events_expiry", "recorded_at", "account_id", "sequence"),
        {"postgresql_partition_by": "RANGE (recorded_at)"},
    )


PARTITION_PREFIX = "audit_events_"  # every partition's name (migrations ignore them)
DEFAULT_PARTITION = "audit_events_default"

for _ddl in (
    "ALTER TABLE audit_events ADD PRIMARY KEY (account_id, sequence, recorded_at)",
    f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF audit_events DEFAULT",
):
    event.listen(EventRow.__table__, "after_create", DDL(_ddl).execute_if(dialect="postgresql"))  # type: ignore[no-untyped-call, unused-ignore]  # DDL() is unannotated


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


class ChainHead(Base):
    """The last link of an account's chain; appends lock this row, so they are serial."""

    __tablename__ = "audit_chain_heads"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    last_recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TreeNodeRow(Base):
    """A stored node of an account's Merkle tree (RFC 9162, docs/audit-log.md): the hash of
    the perfect subtree over leaves [node_index * 2**level, (node_index + 1) * 2**level).
    Written once, in the transaction that appends its last leaf; purges delete events, never
    nodes, so every checkpoint stays provable. Leaf i is the event of sequence
    `last_sequence - size + 1 + i`: a log whose oldest events were purged before the tree
    existed has a tree of the rest."""

    __tablename__ = "audit_tree_nodes"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    node_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class SignedCheckpointRow(Base):
    """The latest checkpoint the log signed of an account's tree (docs/audit-log.md): the log
    never signs one that its tree of `tree_size` leaves does not extend with `root_hash`."""

    __tablename__ = "audit_signed_checkpoints"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    signed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Checkpoint(Base):
    """Where an account's chain starts after purges: the last purged event's sequence and hash."""

    __tablename__ = "audit_checkpoints"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    through_sequence: Mapped[int] = mapped_column(BigInteger)
    through_hash: Mapped[str] = mapped_column(String(64))
    purged_total: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SaltRow(VaultSecretColumns, Base):
    """One talent's salt, sealed under the vault key. Keyed by a keyed hash of (account, talent)
    so the vault holds no talent id in clear either. Deleting the row is crypto-shredding."""

    __tablename__ = "audit_salts"

    sealed_secret: Mapped[bytes] = mapped_column("sealed_salt", LargeBinary(128))


class VaultKey(Base):
    """The vault's master secret, wrapped by the key-encryption key (file or KMS)."""

    __tablename__ = "audit_vault_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary(2048))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class VaultState(VaultStateColumns, Base):
    """The vault's one row (id 1): its current key version, the key-encryption key that wraps
    it (a key file name or a KMS key ARN, never key material) and, wrapped under that KEK, the
    sealing key of this version and the lookup key (the same in every version: salt rows are
    found by it). Every transaction that uses salts reads it (locked against rotations on
    PostgreSQL), so every replica notices a rotation at its next transaction.

    `retired_kek_ref` names the KEK of the previous version until it has been destroyed: a
    rotation that stops after its commit is finished by the next start or rotation."""

    __tablename__ = "audit_vault_state"


class SaltActivity(Base):
    """When a salt last had an event recorded (by the same lookup key as its salt row), so the
    purge can delete salts that no remaining event refers to, without knowing any talent."""

    __tablename__ = "audit_salt_activity"

    lookup: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128))
    last_event_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_audit_salt_activity_last", "last_event_at"),)


class ShredMarkerRow(Base):
    """A talent whose salt was shredded, by the vault's lookup HMAC of (account, talent) only: no
    talent id, no salt. While it exists, events about the talent are recorded without a talent
    hash and no new salt is made (an upload in flight cannot link the talent again); lifted when
    a biometric consent is recorded after the erasure (LiftShredMarker)."""

    __tablename__ = "audit_shred_markers"

    lookup: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    shredded_at: Mapped[datetime] = mapped_column(UtcDateTime)
