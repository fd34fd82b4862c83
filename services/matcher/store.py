"""The matcher's tables (its own database; no other service reads it). Face vectors and
metadata only: enrollment images are never stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Index, Integer, LargeBinary, String, update
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


class CollectionRow(Base):
    """An account's collection version: bumped in the same transaction as every enrollment and
    deletion, so every replica sees that its in-memory index is stale on its next match."""

    __tablename__ = "matcher_collections"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


def bump_version(session: Session, account_id: str) -> None:
    insert_ignoring_conflicts(
        session, CollectionRow.__table__, [{"account_id": account_id, "version": 0}], ["account_id"]
    )
    session.execute(
        update(CollectionRow)
        .where(CollectionRow.account_id == account_id)
        .values(version=CollectionRow.version + 1)
    )
