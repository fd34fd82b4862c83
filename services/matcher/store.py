"""The matcher's tables (its own database; no other service reads it). Face vectors and
metadata only: enrollment images are never stored. A face's talent id and vector are sealed
under the talent's data key (the matcher's vault, docs/vault.md); rows are found by
`talent_ref`, an HMAC under that key (`TalentKey.ref`)."""

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
from mixip.runtime.vault import TalentKey, TalentKeyColumns, VaultStateColumns


class Base(DeclarativeBase):
    pass


class FaceRow(Base):
    """One enrolled face. `sealed` holds its talent id and vector (`services.matcher.sealing`)
    under the talent's data key: destroying the key (the talent's last face deleted) makes
    every copy of the row unreadable. A row whose key is gone is treated as absent.

    `legacy_talent_id` and `legacy_vector` are the clear columns of rows enrolled before
    sealing; the matcher seals them at start and sets them to NULL (new rows leave them NULL).
    """

    __tablename__ = "matcher_faces"

    face_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128))
    talent_ref: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary(4096))
    legacy_talent_id: Mapped[str | None] = mapped_column("talent_id", String(128))
    engine: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(32))
    # float32 little-endian, L2-normalised (local engine); NULL when the vector lives in the
    # engine's own collection (Rekognition).
    legacy_vector: Mapped[bytes | None] = mapped_column("vector", LargeBinary(4096))
    box_x: Mapped[int] = mapped_column(Integer)
    box_y: Mapped[int] = mapped_column(Integer)
    box_width: Mapped[int] = mapped_column(Integer)
    box_height: Mapped[int] = mapped_column(Integer)
    detection_score: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    request_id: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_matcher_faces_talent_ref", "account_id", "talent_ref"),
        Index("ix_matcher_faces_request", "account_id", "request_id", unique=True),
    )


_ID_LENGTH_BYTES = 2


def _face_context(face_id: str) -> bytes:
    return b"matcher_faces/" + face_id.encode()


def seal_face(key: TalentKey, face_id: str, talent_id: str, vector: bytes | None) -> bytes:
    """A face's talent id and vector (b"" when the engine keeps it), sealed under the talent's
    key and bound to the face's row: one decryption opens both when a collection loads."""
    talent = talent_id.encode()
    payload = len(talent).to_bytes(_ID_LENGTH_BYTES, "big") + talent + (vector or b"")
    return key.seal(payload, _face_context(face_id))


def open_face(key: TalentKey, face_id: str, sealed: bytes) -> tuple[str, bytes]:
    """(talent id, vector bytes: b"" when the engine keeps the vector) of a sealed face."""
    payload = key.open(sealed, _face_context(face_id))
    end = _ID_LENGTH_BYTES + int.from_bytes(payload[:_ID_LENGTH_BYTES], "big")
    return payload[_ID_LENGTH_BYTES:end].decode(), payload[end:]


class FaceRequestRow(Base):
    """The content digest of the enrollment that created a face under an idempotency key, so a
    reused key with another image or talent is refused (mixip.runtime.idempotency). A digest,
    never the image, keyed with the talent's data key (`enrollment_digest`): nobody without
    the key can test a photo and a guessed talent id against it. Deleted with its face.

    `legacy_digest` is the plain SHA-256 an older matcher kept: deleted at start (the image to
    key it again is gone); such a retry is then compared on its talent only."""

    __tablename__ = "matcher_face_requests"

    face_id: Mapped[str] = mapped_column(
        ForeignKey("matcher_faces.face_id", ondelete="CASCADE"), primary_key=True
    )
    legacy_digest: Mapped[str | None] = mapped_column("digest", String(64))
    digest: Mapped[str | None] = mapped_column("keyed_digest", String(64))


def enrollment_digest(key: TalentKey, talent_id: str, image: bytes) -> str:
    """The keyed digest of an enrollment's content (talent id and image)."""
    return key.digest("matcher_face_requests", talent_id.encode(), image).hex()


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


class VaultStateRow(VaultStateColumns, Base):
    """The matcher vault's one row (mixip/runtime/vault.py)."""

    __tablename__ = "matcher_vault_state"


class TalentKeyRow(TalentKeyColumns, Base):
    """One talent's data key, sealed under the vault's key; deleted when the talent's last face
    is (erasure, revocation), which makes its sealed faces unreadable everywhere."""

    __tablename__ = "matcher_talent_keys"


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
