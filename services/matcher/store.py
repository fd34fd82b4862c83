"""The matcher's tables (its own database; no other service reads it). Face vectors and
metadata only: enrollment images are never stored."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mixip.runtime.db import UtcDateTime, insert_ignoring_conflicts


class Base(DeclarativeBase):
    pass


class FaceRow(Base):
    __tablename__ = "matcher_faces"

    face_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128))
    talent_id: Mapped[str] = mapped_column(String(128))
    engine: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(32))
    # float32 little-endian, L2-normalised (local engine); NULL when the vector lives in the
    # engine's own collection (Rekognition).
    vector: Mapped[bytes | None] = mapped_column(LargeBinary(4096))
    box_x: Mapped[int] = mapped_column(Integer)
    box_y: Mapped[int] = mapped_column(Integer)
    box_width: Mapped[int] = mapped_column(Integer)
    box_height: Mapped[int] = mapped_column(Integer)
    detection_score: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    request_id: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_matcher_faces_talent", "account_id", "talent_id"),
        Index("ix_matcher_faces_request", "account_id", "request_id", unique=True),
    )


class FaceRequestRow(Base):
    """The content digest of the enrollment that created a face under an idempotency key, so a
    reused key with another image or talent is refused (mixip.runtime.idempotency). A digest,
    never the image; deleted with its face."""

    __tablename__ = "matcher_face_requests"

    face_id: Mapped[str] = mapped_column(
        ForeignKey("matcher_faces.face_id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(64))


class CollectionRow(Base):
    """An account's collection version: bumped in the same transaction as every enrollment and
    deletion, so every replica sees that its in-memory index is stale on its next match."""

    __tablename__ = "matcher_collections"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class CollectionChangeRow(Base):
    """Which faces a version added or removed (written with the version bump), so a replica's
    approximate index can catch up by applying the changes since its own version instead of
    rebuilding. Face ids only: no talent id, no vector. The last `CHANGES_KEPT` versions of an
    account are kept; a replica further behind rebuilds."""

    __tablename__ = "matcher_collection_changes"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    face_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    added: Mapped[bool] = mapped_column(Boolean)


CHANGES_KEPT = 100_000


def bump_version(
    session: Session,
    account_id: str,
    *,
    added: Sequence[str] = (),
    removed: Sequence[str] = (),
) -> int:
    """The account's next collection version, recording which faces it added and removed."""
    insert_ignoring_conflicts(
        session, CollectionRow.__table__, [{"account_id": account_id, "version": 0}], ["account_id"]
    )
    session.execute(
        update(CollectionRow)
        .where(CollectionRow.account_id == account_id)
        .values(version=CollectionRow.version + 1)
    )
    # The UPDATE holds the row's lock until commit: versions are handed out one at a time, so
    # a snapshot that sees version V sees the changes of every version up to V.
    version = session.scalars(
        select(CollectionRow.version).where(CollectionRow.account_id == account_id)
    ).one()  # the row exists: inserted above if it did not
    changes = [
        {"account_id": account_id, "version": version, "face_id": face_id, "added": is_added}
        for face_ids, is_added in ((added, True), (removed, False))
        for face_id in face_ids
    ]
    if changes:
        session.execute(insert(cast(Table, CollectionChangeRow.__table__)), changes)
    session.execute(
        delete(CollectionChangeRow).where(
            CollectionChangeRow.account_id == account_id,
            CollectionChangeRow.version <= version - CHANGES_KEPT,
        )
    )
    return version


def collection_sizes(session: Session) -> list[int]:
    """How many faces each account's collection holds, without saying whose (for metrics)."""
    counts = session.scalars(
        select(func.count()).select_from(FaceRow).group_by(FaceRow.account_id)
    ).all()
    return [int(count) for count in counts]
