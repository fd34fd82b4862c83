"""bulk_insert writes exactly what a plain INSERT would, on SQLite and on PostgreSQL (COPY)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import BigInteger, Double, Integer, LargeBinary, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mixip.runtime.db import Database, UtcDateTime, bulk_insert


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bulk_rows"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    text: Mapped[str | None] = mapped_column(String(200))
    blob: Mapped[bytes | None] = mapped_column(LargeBinary(64))
    number: Mapped[float] = mapped_column(Double)
    at: Mapped[datetime] = mapped_column(UtcDateTime)


def test_every_value_reads_back_unchanged(database_url):
    db = Database(database_url("runtime"), Base.metadata)
    db.create_tables()
    at = datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC)
    rows = [
        {
            "id": i,
            "text": text,
            "blob": blob,
            "number": number,
            "at": at.astimezone(timezone(timedelta(hours=5))) if i % 2 else at,
        }
        for i, (text, blob, number) in enumerate(
            [
                ("plain", b"\x00\x01\xff", 0.1 + 0.2),
                ("tab\there, new\nline, cr\r, back\\slash \\N", None, 1e-300),
                (None, b"\\x00\t\n", -0.0),
                ("ünïcødé ✓", bytes(range(64)), 0.8123456789012345),
            ]
        )
    ]
    with db.write() as session:
        bulk_insert(session, Row.__table__, rows)
    with db.read() as session:
        stored = session.execute(select(Row).order_by(Row.id)).scalars().all()
        got = [(r.id, r.text, r.blob, r.number, r.at) for r in stored]
    db.dispose()
    assert got == [(r["id"], r["text"], r["blob"], r["number"], at) for r in rows]


class Numbered(Base):
    """A table whose key the database assigns (the gateway's access log)."""

    __tablename__ = "bulk_numbered"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    text: Mapped[str] = mapped_column(String(200))


def test_rows_without_the_auto_incrementing_key_get_increasing_keys_in_order(database_url):
    db = Database(database_url("runtime"), Base.metadata)
    db.create_tables()
    for batch in (["a", "b", "c"], ["d", "e"]):
        with db.write() as session:
            bulk_insert(session, Numbered.__table__, [{"text": t} for t in batch])
    with db.read() as session:
        stored = session.execute(select(Numbered.seq, Numbered.text).order_by(Numbered.seq)).all()
    db.dispose()
    assert [text for _, text in stored] == ["a", "b", "c", "d", "e"]
    assert [seq for seq, _ in stored] == sorted({seq for seq, _ in stored})
