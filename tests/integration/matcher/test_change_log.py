"""The collection change log keeps the last CHANGES_KEPT versions of an account, no more."""

from __future__ import annotations

from sqlalchemy import select

from mixip.runtime.db import Database
from services.matcher import store
from services.matcher.store import Base, CollectionChangeRow, bump_version


def test_each_version_bump_prunes_changes_older_than_the_kept_versions(database_url, monkeypatch):
    monkeypatch.setattr(store, "CHANGES_KEPT", 3)
    db = Database(database_url("matcher"), Base.metadata)
    db.create_tables()
    for n in range(6):
        with db.write() as session:
            bump_version(session, "acct", added=[f"face-{n}"])
            bump_version(session, "other", added=[f"other-{n}"])
    with db.read() as session:
        kept = session.execute(
            select(CollectionChangeRow.account_id, CollectionChangeRow.version).order_by(
                CollectionChangeRow.account_id, CollectionChangeRow.version
            )
        ).all()
    db.dispose()
    assert kept == [("acct", 4), ("acct", 5), ("acct", 6), ("other", 4), ("other", 5), ("other", 6)]
