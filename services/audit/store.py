"""The audit service's tables (its own database; no other service reads it) and the queries
that read and write them (the partitions' catalog reads and DDL: partitions.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DDL,
    BigInteger,
    Connection,
    Double,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Row,
    ScalarResult,
    Select,
    SmallInteger,
    String,
    Text,
    and_,
    column,
    delete,
    event,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mixip.runtime.db import UtcDateTime, insert_ignoring_conflicts, rowcount
from mixip.runtime.vault import VaultSecretColumns, VaultStateColumns
from mixip.tlog.merkle import NodeId
from services.audit.domain import GENESIS_HASH, KIND_MATCH, NO_DECISION


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


# -- queries ----------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def locked_chain_head(session: Session, account_id: str) -> ChainHead:
    """The account's chain head, locked for this transaction (made on the first append)."""
    locked = select(ChainHead).where(ChainHead.account_id == account_id).with_for_update()
    head = session.scalars(locked).one_or_none()
    if head is not None:
        return head
    insert_ignoring_conflicts(
        session,
        ChainHead.__table__,
        [
            {
                "account_id": account_id,
                "last_sequence": 0,
                "last_hash": GENESIS_HASH,
                "last_recorded_at": _EPOCH,
            }
        ],
        ["account_id"],
    )
    return session.scalars(locked).one()


def chain_heads(session: Session, account_id: str = "") -> Sequence[ChainHead]:
    """The chain head of `account_id` (every account's when empty), by account."""
    query = select(ChainHead).order_by(ChainHead.account_id)
    if account_id:
        query = query.where(ChainHead.account_id == account_id)
    return session.scalars(query).all()


def signed_note_of_size(session: Session, account_id: str, size: Select[Any]) -> str | None:
    """The account's published checkpoint note if it was signed at the tree size `size`
    selects (one statement: the size and the note in one snapshot)."""
    return session.scalar(
        select(SignedCheckpointRow.note).where(
            SignedCheckpointRow.account_id == account_id,
            SignedCheckpointRow.tree_size == size.scalar_subquery(),
        )
    )


def events_by_key(
    session: Session, account_id: str, keys: list[str]
) -> Sequence[Row[*tuple[Any, ...]]]:
    """The stored content of the account's events recorded under `keys` (what a repeated key
    must match; no hashes, no times)."""
    return session.execute(
        select(
            EventRow.idempotency_key,
            EventRow.project_id,
            EventRow.media_id,
            EventRow.face_index,
            EventRow.label,
            EventRow.reason,
            EventRow.similarity,
            EventRow.talent_hash,
            EventRow.kind,
            EventRow.decision,
        ).where(EventRow.account_id == account_id, EventRow.idempotency_key.in_(keys))
    ).all()


def events_page(
    session: Session,
    account_id: str,
    after_sequence: int,
    limit: int,
    *,
    talent_hash: bytes | None = None,
    project_id: str = "",
    since: datetime | None = None,
) -> list[EventRow]:
    """Up to `limit` of the account's events after `after_sequence`, oldest first, of one
    talent (by hash), project and occurrence time onwards when given."""
    conditions = [EventRow.account_id == account_id, EventRow.sequence > after_sequence]
    if talent_hash is not None:
        conditions.append(EventRow.talent_hash == talent_hash)
    if project_id:
        conditions.append(EventRow.project_id == project_id)
    if since is not None:
        conditions.append(EventRow.occurred_at >= since)
    query = select(EventRow).where(and_(*conditions)).order_by(EventRow.sequence).limit(limit)
    return list(session.scalars(query))


def events_after(session: Session, account_id: str, sequence: int) -> ScalarResult[EventRow]:
    """The account's events after `sequence`, oldest first, streamed (a chain to verify)."""
    return session.execute(
        select(EventRow)
        .where(EventRow.account_id == account_id, EventRow.sequence > sequence)
        .order_by(EventRow.sequence)
        .execution_options(yield_per=2000)
    ).scalars()


def marked(session: Session, lookups: list[bytes]) -> set[bytes]:
    """The lookups among `lookups` that carry a shred marker."""
    return set(
        session.scalars(select(ShredMarkerRow.lookup).where(ShredMarkerRow.lookup.in_(lookups)))
    )


def add_shred_marker(session: Session, lookup: bytes, account_id: str, at: datetime) -> None:
    """Marks the talent of `lookup` as shredded (kept as it was when already marked)."""
    insert_ignoring_conflicts(
        session,
        ShredMarkerRow.__table__,
        [{"lookup": lookup, "account_id": account_id, "shredded_at": at}],
        ["lookup"],
    )


def remove_shred_marker(session: Session, lookup: bytes) -> bool:
    """Lifts the shred marker of `lookup`; True when there was one."""
    lifted = session.execute(delete(ShredMarkerRow).where(ShredMarkerRow.lookup == lookup))
    return rowcount(lifted) > 0


def oldest_expired(session: Session, cutoff: datetime, limit: int) -> dict[str, int]:
    """Per account, the last sequence among the `limit` oldest events recorded before `cutoff`
    (read in the order of the expiry index: `limit` index entries)."""
    oldest = session.execute(
        select(EventRow.account_id, EventRow.sequence)
        .where(EventRow.recorded_at < cutoff)
        .order_by(EventRow.recorded_at, EventRow.account_id, EventRow.sequence)
        .limit(limit)
    ).all()
    through_of: dict[str, int] = {}
    for account_id, sequence in oldest:
        through_of[account_id] = max(sequence, through_of.get(account_id, 0))
    return through_of


def delete_events_through(session: Session, account_id: str, through: int) -> int:
    """Deletes the account's events up to sequence `through`; returns how many."""
    return rowcount(
        session.execute(
            delete(EventRow).where(EventRow.account_id == account_id, EventRow.sequence <= through)
        )
    )


def any_expired(session: Session, cutoff: datetime) -> bool:
    """Whether an event recorded before `cutoff` is left."""
    left = session.scalar(select(EventRow.sequence).where(EventRow.recorded_at < cutoff).limit(1))
    return left is not None


@dataclass(frozen=True)
class ExpiredSpan:
    """One account's events recorded before a bound: sequences first..last."""

    account_id: str
    head_sequence: int
    first: int
    last: int
    last_hash: str


# Per account: the first and last event recorded before :upper, and the chain head and the
# checkpoint, all in one statement (one snapshot). Each probe is one index descent per
# partition below :upper (partitions are pruned on the literal bound).
_EXPIRED_SPANS = text(
    "SELECT h.account_id, h.last_sequence, c.through_sequence, first.sequence, last.sequence,"
    " last.event_hash FROM audit_chain_heads h"
    " LEFT JOIN audit_checkpoints c ON c.account_id = h.account_id"
    " LEFT JOIN LATERAL (SELECT e.sequence FROM audit_events e WHERE e.account_id ="
    " h.account_id AND e.recorded_at < :upper ORDER BY e.sequence LIMIT 1) first ON true"
    " LEFT JOIN LATERAL (SELECT e.sequence, e.event_hash FROM audit_events e WHERE"
    " e.account_id = h.account_id AND e.recorded_at < :upper ORDER BY e.sequence DESC"
    " LIMIT 1) last ON true"
)


def expired_spans(
    connection: Connection, upper: datetime
) -> tuple[list[ExpiredSpan], dict[str, int]]:
    """Each account's events before `upper` (first and last sequence, last hash), and every
    chain head's sequence, read in one snapshot (PostgreSQL: LATERAL)."""
    spans, heads = [], {}
    for account_id, head, _, first, last, last_hash in connection.execute(
        _EXPIRED_SPANS, {"upper": upper}
    ):
        heads[account_id] = head
        if last is not None:
            spans.append(ExpiredSpan(account_id, head, first, last, last_hash))
    return spans, heads


def head_sequences(connection: Connection) -> dict[str, int]:
    """Every chain head's last sequence, by account."""
    rows = connection.execute(select(ChainHead.account_id, ChainHead.last_sequence))
    return {account_id: sequence for account_id, sequence in rows}


def last_sequence_before(connection: Connection, account_id: str, upper: datetime) -> int | None:
    """The sequence of the account's last event recorded before `upper` (None: none is)."""
    return connection.scalar(
        select(EventRow.sequence)
        .where(EventRow.account_id == account_id, EventRow.recorded_at < upper)
        .order_by(EventRow.sequence.desc())
        .limit(1)
    )


def purge_generation(connection: Connection) -> tuple[int, int]:
    """Changes whenever a purge deletes events (another purge between two steps of one)."""
    count, total = connection.execute(
        text("SELECT count(*), coalesce(sum(purged_total), 0) FROM audit_checkpoints")
    ).one()
    return int(count), int(total)


# An inclusion proof's read: the chain head's last sequence, the tree's size (one descent of
# the primary key), the hashes of the proof's nodes in the order asked (two array parameters)
# and the event's row. Prepared once per connection: planning it was a third of its time.
_EVENT_COLUMNS = ", ".join(f"e.{c.name}" for c in EventRow.__table__.c)
_PREPARE_PROOF_READ = (
    "PREPARE mixip_audit_proof_read (text, bigint, smallint[], bigint[]) AS"  # noqa: S608
    " SELECT h.last_sequence, s.size, ARRAY(SELECT n.hash FROM unnest($3, $4)"
    " WITH ORDINALITY AS w(level, node_index, place) JOIN audit_tree_nodes n"
    " ON n.account_id = $1 AND n.level = w.level AND n.node_index = w.node_index"
    f" ORDER BY w.place) AS hashes, {_EVENT_COLUMNS}"
    " FROM (SELECT 1) AS one LEFT JOIN audit_chain_heads h ON h.account_id = $1"
    " LEFT JOIN LATERAL (SELECT node_index + 1 AS size FROM audit_tree_nodes"
    " WHERE account_id = $1 AND level = 0 ORDER BY node_index DESC LIMIT 1) s ON true"
    " LEFT JOIN audit_events e ON e.account_id = $1 AND e.sequence = $2"
)
_PROOF_READ = text(
    "EXECUTE mixip_audit_proof_read (:account, :sequence, :levels, :indexes)"
).columns(
    column("last_sequence", BigInteger),
    column("size", BigInteger),
    column("hashes"),
    *EventRow.__table__.c,
)


def proof_read(
    connection: Connection, account_id: str, sequence: int, ids: list[NodeId]
) -> tuple[int, int, list[bytes], Row[*tuple[Any, ...]] | None]:
    """The account's last sequence, its tree's size, the hashes of `ids` (those stored, in
    order) and event `sequence`'s row (None when absent): one statement (PostgreSQL),
    prepared on the connection the first time."""
    if "mixip_audit_proof_read" not in connection.info:  # the DBAPI connection's
        connection.exec_driver_sql(_PREPARE_PROOF_READ)
        connection.info["mixip_audit_proof_read"] = True
    read = connection.execute(
        _PROOF_READ,
        {
            "account": account_id,
            "sequence": sequence,
            "levels": [node.level for node in ids],
            "indexes": [node.index for node in ids],
        },
    ).one()
    hashes = [bytes(value) for value in read.hashes]  # bytea: views
    row = read if read.sequence is not None else None
    return read.last_sequence or 0, read.size or 0, hashes, row


def head_and_size(connection: Connection, account_id: str, size: Select[Any]) -> tuple[int, int]:
    """The account's last sequence and the tree size `size` selects, in one statement (0, 0
    before its first event)."""
    found = connection.execute(
        select(ChainHead.last_sequence, size.scalar_subquery()).where(
            ChainHead.account_id == account_id
        )
    ).one_or_none()
    return (found[0], found[1] or 0) if found else (0, 0)


def event_row(
    connection: Connection, account_id: str, sequence: int
) -> Row[*tuple[Any, ...]] | None:
    """Event `sequence` of the account as a Core row (None once purged)."""
    return connection.execute(
        select(EventRow.__table__).where(
            EventRow.account_id == account_id, EventRow.sequence == sequence
        )
    ).one_or_none()
