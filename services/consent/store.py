"""The consent service's tables (its own database; no other service reads it)."""

from __future__ import annotations

import secrets
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Date,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mixip.runtime.db import UtcDateTime
from mixip.runtime.times import as_utc
from mixip.runtime.vault import TalentKeyColumns, VaultStateColumns

# SQLite only auto-increments an INTEGER PRIMARY KEY.
Sequence = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class RecordRow(Base):
    """One ledger entry. Rows are only ever inserted, except by erasure (which deletes them all
    for a talent and leaves a tombstone).

    The talent is stored as `talent_ref` (an HMAC under the talent's data key, `TalentKey.ref`: what
    queries by talent filter on) and `sealed_talent_id`, sealed under the talent's data key
    (context: the table and `record_id`). `legacy_talent_id` is the clear column of rows
    written before sealing: NULL in new rows, and in old ones once the start-up pass sealed
    them (`ConsentLedger.seal_legacy`); the sealed columns are NULL only until then."""

    __tablename__ = "consent_records"

    sequence: Mapped[int] = mapped_column(Sequence, primary_key=True, autoincrement=True)
    record_id: Mapped[str] = mapped_column(String(32), unique=True)
    account_id: Mapped[str] = mapped_column(String(128))
    legacy_talent_id: Mapped[str | None] = mapped_column("talent_id", String(128))
    talent_ref: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=True)
    sealed_talent_id: Mapped[bytes] = mapped_column(LargeBinary(256), nullable=True)
    scope: Mapped[int] = mapped_column(SmallInteger)
    project_id: Mapped[str] = mapped_column(String(128))
    decision: Mapped[int] = mapped_column(SmallInteger)
    method: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128))
    captured_at: Mapped[datetime] = mapped_column(UtcDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    request_id: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_consent_timeline", "account_id", "talent_ref", "scope", "project_id", "sequence"),
        Index("ix_consent_request", "account_id", "request_id", unique=True),
    )


class OutboxRow(Base):
    """A face deletion owed to the matcher, written in the revocation's own transaction, and
    deleted once delivered (what is left is a count in `DeliveryCountRow`). The talent is
    stored as in `RecordRow` (context: the table and `outbox_id`)."""

    __tablename__ = "consent_outbox"

    id: Mapped[int] = mapped_column(Sequence, primary_key=True, autoincrement=True)
    outbox_id: Mapped[str] = mapped_column(String(32), unique=True)
    account_id: Mapped[str] = mapped_column(String(128))
    legacy_talent_id: Mapped[str | None] = mapped_column("talent_id", String(128))
    talent_ref: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=True)
    sealed_talent_id: Mapped[bytes] = mapped_column(LargeBinary(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    faces_deleted: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_consent_outbox_due", "delivered_at", "next_attempt_at"),
        Index("ix_consent_outbox_talent", "account_id", "talent_ref"),
    )


class TombstoneRow(Base):
    """What is left of an erased talent's ledger: that an erasure happened, and how much it
    removed. No talent id, no evidence, nothing personal."""

    __tablename__ = "consent_tombstones"

    tombstone_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128))
    erased_at: Mapped[datetime] = mapped_column(UtcDateTime)
    records_deleted: Mapped[int] = mapped_column(Integer)
    outbox_rows_deleted: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_consent_tombstone_request", "account_id", "request_id", unique=True),
    )


class AccountVersionRow(Base):
    """An account's consent version: a fresh random value written in the transaction of every
    record of the account and every erasure that removes something (whatever can change a
    check's answer), so a caller that cached answers under one version knows they still hold
    while it is unchanged. Random rather than counted, so it never returns to an earlier value,
    not even after a restore.
    No row: the account never had a record (its version is "": nothing is cached under it;
    the revision that made this table gave every account with records a row)."""

    __tablename__ = "consent_account_versions"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(32))


def account_version(session: Session, account_id: str) -> str:
    """The account's consent version. Read it before the answers it tags: they then reflect
    at least every change up to it (a later change only makes them fresher than their tag)."""
    version = session.scalar(
        select(AccountVersionRow.version).where(AccountVersionRow.account_id == account_id)
    )
    return version or ""


def bump_account_version(session: Session, account_id: str) -> None:
    """Gives the account a fresh consent version, in the caller's transaction (the one whose
    change it announces). On PostgreSQL the row lock orders concurrent changes of an account."""
    version = secrets.token_hex(16)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(AccountVersionRow)
        .values(account_id=account_id, version=version)
        .on_conflict_do_update(index_elements=["account_id"], set_={"version": version})
    )


def renew_account_versions(session: Session) -> int:
    """A fresh consent version for every account (a vault reset made every answer absent:
    nothing cached before it may still be trusted). How many accounts."""
    accounts = session.scalars(select(AccountVersionRow.account_id)).all()
    for account_id in accounts:
        bump_account_version(session, account_id)
    return len(accounts)


class DeliveryCountRow(Base):
    """What is kept of delivered face deletions: how many, per account and day (UTC) of
    delivery. No talent id: the outbox row that named the talent is deleted on delivery."""

    __tablename__ = "consent_outbox_delivery_counts"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    deliveries: Mapped[int] = mapped_column(BigInteger, default=0)
    faces_deleted: Mapped[int] = mapped_column(BigInteger, default=0)


def record_context(record_id: str) -> bytes:
    """What a record's sealed talent id is bound to: its table and record id."""
    return f"{RecordRow.__tablename__}/{record_id}".encode()


def outbox_context(outbox_id: str) -> bytes:
    """What an outbox row's sealed talent id is bound to: its table and outbox id."""
    return f"{OutboxRow.__tablename__}/{outbox_id}".encode()


class VaultStateRow(VaultStateColumns, Base):
    """The consent vault's one row: its key version and the KEK that wraps its keys
    (mixip/runtime/vault.py, docs/vault.md)."""

    __tablename__ = "consent_vault_state"


class TalentKeyRow(TalentKeyColumns, Base):
    """One talent's data key, sealed under the vault key, by lookup HMAC of (account, talent).
    Erasure deletes it in the transaction that deletes the talent's rows."""

    __tablename__ = "consent_talent_keys"


def outbox_backlog(session: Session) -> tuple[int, datetime | None]:
    """Undelivered revocations: how many, and when the oldest was written (for metrics)."""
    count, oldest = session.execute(
        select(func.count(), func.min(OutboxRow.created_at)).where(OutboxRow.delivered_at.is_(None))
    ).one()
    return int(count), as_utc(oldest) if oldest is not None else None
