"""The matcher's tables (its own database; no other service reads it). Face vectors and
metadata only: enrollment images are never stored. A face's talent id and vector are sealed
under the talent's data key (the matcher's vault, docs/vault.md); rows are found by
`talent_ref`, an HMAC under that key (`TalentKey.ref`). The queries the use cases run are
here too, below the tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVarTuple, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Row,
    Select,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mixip.runtime.db import UtcDateTime, insert_ignoring_conflicts, rowcount
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


# -- face queries: a face whose talent's key is gone counts as absent ("live" faces only) ------


_Columns = TypeVarTuple("_Columns")


def _live(query: Select[*_Columns]) -> Select[*_Columns]:
    """Only faces whose talent's key exists: a face whose key is gone is treated as absent."""
    return query.join(TalentKeyRow, TalentKeyRow.row_ref == FaceRow.talent_ref)


def face_by_request(
    session: Session, account_id: str, request_id: str
) -> tuple[FaceRow, str | None] | None:
    """The face enrolled under `request_id` and its keyed enrollment digest (None: enrolled
    before keyed digests)."""
    found = session.execute(
        select(FaceRow, FaceRequestRow.digest)
        .outerjoin(FaceRequestRow, FaceRequestRow.face_id == FaceRow.face_id)
        .where(FaceRow.account_id == account_id, FaceRow.request_id == request_id)
    ).one_or_none()
    return None if found is None else (found[0], found[1])


def talent_face_ids(
    session: Session, account_id: str, ref: bytes, enrolled_before: datetime | None = None
) -> list[str]:
    """The ids of the talent's faces (by its key's ref), enrolled at or before
    `enrolled_before` if given."""
    query = select(FaceRow.face_id).where(
        FaceRow.account_id == account_id, FaceRow.talent_ref == ref
    )
    if enrolled_before is not None:
        query = query.where(FaceRow.created_at <= enrolled_before)
    return list(session.scalars(query))


def talent_face(session: Session, account_id: str, ref: bytes, face_id: str) -> FaceRow | None:
    """The talent's face `face_id` (None if it is not the talent's)."""
    query = select(FaceRow).where(*_of_talent(account_id, ref, face_id))
    return session.scalars(query).one_or_none()


def delete_talent_face(session: Session, account_id: str, ref: bytes, face_id: str) -> int:
    """Deletes the talent's face `face_id`; 0 if it was not there (deleted meanwhile)."""
    return rowcount(session.execute(delete(FaceRow).where(*_of_talent(account_id, ref, face_id))))


def _of_talent(account_id: str, ref: bytes, face_id: str) -> tuple[ColumnElement[bool], ...]:
    """Face `face_id`, if it is the talent's (by its key's ref) in the account."""
    return (
        FaceRow.face_id == face_id,
        FaceRow.account_id == account_id,
        FaceRow.talent_ref == ref,
    )


def delete_faces(session: Session, face_ids: list[str]) -> int:
    return rowcount(session.execute(delete(FaceRow).where(FaceRow.face_id.in_(face_ids))))


def count_talent_faces(session: Session, account_id: str, ref: bytes) -> int:
    """How many faces the talent has (its key's or not)."""
    count = session.scalar(
        select(func.count()).where(FaceRow.account_id == account_id, FaceRow.talent_ref == ref)
    )
    return int(count or 0)


def collection_version(session: Session, account_id: str) -> int:
    """The account's collection version (the row exists once a face was enrolled)."""
    return session.scalars(
        select(CollectionRow.version).where(CollectionRow.account_id == account_id)
    ).one()


def live_faces_page(
    session: Session, account_id: str, ref: bytes, after: str, limit: int
) -> list[FaceRow]:
    """Up to `limit` of the talent's faces after face id `after`, by face id."""
    return list(
        session.scalars(
            _live(select(FaceRow))
            .where(
                FaceRow.account_id == account_id,
                FaceRow.talent_ref == ref,
                FaceRow.face_id > after,
            )
            .order_by(FaceRow.face_id)
            .limit(limit)
        )
    )


def live_counts(session: Session, account_id: str) -> tuple[int, int]:
    """The account's faces and talents."""
    faces, talents = session.execute(
        _live(
            select(func.count(), func.count(FaceRow.talent_ref.distinct())).where(
                FaceRow.account_id == account_id
            )
        )
    ).one()
    return int(faces), int(talents)


def live_talent_groups(
    session: Session, account_id: str, after: tuple[str, bytes] | None, limit: int
) -> Sequence[Row[*tuple[Any, ...]]]:
    """Up to `limit` enrolled talents, in (account, talent_ref) order after `after`: each
    (account, talent_ref, face count, its first face id); of one account when given."""
    query = _live(
        select(
            FaceRow.account_id, FaceRow.talent_ref, func.count(), func.min(FaceRow.face_id)
        ).group_by(FaceRow.account_id, FaceRow.talent_ref)
    )
    if account_id:
        query = query.where(FaceRow.account_id == account_id)
    if after is not None:
        query = query.where(tuple_(FaceRow.account_id, FaceRow.talent_ref) > tuple_(*after))
    order = query.order_by(FaceRow.account_id, FaceRow.talent_ref)
    return session.execute(order.limit(limit)).all()


def sealed_faces(session: Session, face_ids: list[str]) -> Sequence[Row[*tuple[Any, ...]]]:
    """(face_id, talent_ref, sealed) of these faces."""
    return session.execute(
        select(FaceRow.face_id, FaceRow.talent_ref, FaceRow.sealed).where(
            FaceRow.face_id.in_(face_ids)
        )
    ).all()


def legacy_faces(session: Session, limit: int) -> list[FaceRow]:
    """Up to `limit` faces enrolled before sealing (clear talent id), by face id."""
    return list(
        session.scalars(
            select(FaceRow)
            .where(FaceRow.legacy_talent_id.is_not(None))
            .order_by(FaceRow.face_id)
            .limit(limit)
        )
    )


def delete_legacy_digests(session: Session) -> int:
    """Deletes the plain enrollment digests (made before keyed digests); returns how many."""
    return rowcount(
        session.execute(delete(FaceRequestRow).where(FaceRequestRow.legacy_digest.is_not(None)))
    )
