"""Purging by month partitions (PostgreSQL) and by DELETE (SQLite): chains keep verifying from
their checkpoints across month boundaries, whole months go at once and only the boundary month
row by row, appends between a purge's checkpoint and its drop are kept, and the revision that
partitions an existing log keeps every event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from mixip.runtime import migrations
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper
from services.audit.domain import GENESIS_HASH, EventContent, chain_hash
from services.audit.service import AuditLog, NewEvent
from services.audit.store import Base, ChainHead, Checkpoint, EventRow
from services.audit.vault import SaltVault
from tests.support.databases import PG_ADMIN_URL

JAN = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
FEB = datetime(2026, 2, 10, 9, 0, tzinfo=UTC)
MAR = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
APR = datetime(2026, 4, 10, 9, 0, tzinfo=UTC)
CUTOFF = datetime(2026, 3, 15, tzinfo=UTC)  # January and February whole, March in part


@pytest.fixture
def audit_log(database_url, tmp_path, clock):
    """Factory: an AuditLog (what the servicer calls) on a migrated database, as the service
    builds it, with an optional step hook."""
    made = []

    def make(step=None, url: str | None = None) -> AuditLog:
        url = url or database_url("audit")
        migrations.upgrade(url, "audit")
        db = Database(url, Base.metadata)
        made.append(db)
        vault = SaltVault(db, LocalKeyWrapper(tmp_path / "keys" / "audit-kek.key"), clock)
        return AuditLog(db, vault, clock, step=step)

    yield make
    for db in made:
        db.dispose()


def events(prefix: str, count: int, clock, talent: str = "") -> list[NewEvent]:
    return [
        NewEvent(
            idempotency_key=f"{prefix}-{i}",
            project_id="film",
            media_id=f"{prefix}-media",
            face_index=i,
            label=1,
            reason=1,
            similarity=0.5,
            talent_id=talent,
            actor="key_test",
            occurred_at=clock(),
        )
        for i in range(count)
    ]


def fill_months(log: AuditLog, clock) -> None:
    """Accounts a and b append in January, February, March (the service making each month's
    partition ahead, as its start and its daily purge do), and a last time in April."""
    for month in (JAN, FEB, MAR):
        clock.now = month
        log.partitions.ahead()
        log.record("acct-a", events(f"a-{month:%m}", 4, clock, talent="t-ada"))
        log.record("acct-b", events(f"b-{month:%m}", 3, clock))
        clock.advance(days=10)  # after the cutoff in March
        log.record("acct-a", events(f"a-{month:%m}-late", 2, clock))
    clock.now = APR
    log.record("acct-b", events("b-04", 1, clock))


def keys_of(log: AuditLog, account: str) -> list[str]:
    with log.db.read() as session:
        return list(
            session.scalars(
                select(EventRow.idempotency_key)
                .where(EventRow.account_id == account)
                .order_by(EventRow.sequence)
            )
        )


def checkpoint_of(log: AuditLog, account: str) -> tuple[int, str, int]:
    with log.db.read() as session:
        row = session.get(Checkpoint, account)
        return row.through_sequence, row.through_hash, row.purged_total


def hash_of(log: AuditLog, account: str, sequence: int) -> str:
    with log.db.read() as session:
        return session.get(EventRow, (account, sequence)).event_hash


def partitions(log: AuditLog) -> list[str]:
    with log.db.read() as session:
        return sorted(
            session.scalars(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'audit_events'::regclass"
                )
            )
        )


def purge_all(log: AuditLog, cutoff: datetime, batch: int) -> list[int]:
    counts = []
    while True:
        purged, done, _, _ = log.purge(cutoff, batch)
        counts.append(purged)
        if done:
            return counts


def test_a_purge_across_month_boundaries_keeps_chains_verifying(audit_log, clock):
    clock.now = JAN  # the service starts in January
    log = audit_log()
    fill_months(log, clock)
    # The last events before the cutoff: a's March first four (sequence 16), b's March three
    # (sequence 9), whatever partition they sat in.
    expected = {"acct-a": 16, "acct-b": 9}
    hashes = {account: hash_of(log, account, seq) for account, seq in expected.items()}

    assert sum(purge_all(log, CUTOFF, batch=3)) == 16 + 9

    for account, sequence in expected.items():
        assert checkpoint_of(log, account) == (sequence, hashes[account], sequence)
    assert keys_of(log, "acct-a") == ["a-03-late-0", "a-03-late-1"]
    assert keys_of(log, "acct-b") == ["b-04-0"]
    verdict = log.verify()
    assert verdict.ok and verdict.events_checked == 3 and verdict.chains_checked == 2
    # a later purge at a later cutoff moves the checkpoints on, and the chain continues
    log.record("acct-a", events("a-after", 1, clock))
    assert sum(purge_all(log, datetime(2026, 4, 1, tzinfo=UTC), batch=100)) == 2
    assert checkpoint_of(log, "acct-a")[0] == 18
    assert log.verify().ok


def test_a_purge_drops_whole_months_and_deletes_only_the_boundary_month(audit_log, clock, backend):
    clock.now = JAN  # the service starts in January
    log = audit_log()
    fill_months(log, clock)
    spring = {f"audit_events_2026_{m:02d}" for m in range(1, 6)} | {"audit_events_default"}
    if backend == "postgresql":  # (the migration also made the wall clock's months)
        assert spring & set(partitions(log)) == spring - {"audit_events_2026_05"}
    # One call with a batch of 2: PostgreSQL drops January and February whole (a's 6 and b's 3
    # events of each month: 18) and deletes two of March's expired events (the batch); SQLite
    # deletes two events.
    purged, done, _, _ = log.purge(CUTOFF, 2)
    assert not done
    if backend == "postgresql":
        assert purged == 18 + 2
        # January and February went; April's purge made May ahead
        assert spring & set(partitions(log)) == spring - {
            "audit_events_2026_01",
            "audit_events_2026_02",
        }
        assert checkpoint_of(log, "acct-b")[0] == 6  # through February
    else:
        assert purged == 2
    assert log.verify().ok  # between batches too
    assert sum(purge_all(log, CUTOFF, batch=2)) + purged == 25
    assert log.verify().ok
    with log.db.read() as session:
        assert session.scalar(select(func.count()).select_from(EventRow)) == 3


def test_appends_between_a_purges_checkpoints_and_its_drop_are_kept(audit_log, clock, backend):
    """At the purge's step boundary (checkpoints committed; on PostgreSQL the expired months
    not dropped yet), writers append, one of them to a new account at an instant inside an
    expired month (a clock behind): the drop must not take that event's month without a
    checkpoint covering it, and every chain must verify before and after."""
    seen = []

    def step(name: str) -> None:
        seen.append(name)
        if len(seen) > 1:
            return
        # verification holds while the checkpoints are ahead of the events still stored
        assert log.verify().ok
        log.record("acct-a", events("during", 2, clock))
        behind, clock.now = clock.now, FEB
        log.record("acct-late", events("late", 1, clock))  # lands in February
        clock.now = behind
        assert log.verify().ok

    clock.now = JAN
    log = audit_log(step=step)
    fill_months(log, clock)
    first = sum(purge_all(log, CUTOFF, batch=50))
    if backend == "postgresql":
        # the drop was refused (February gained an event no checkpoint covered): the purge
        # deleted the expired events row by row instead, the late one with them
        assert first == 25 + 1 and "audit_events_2026_02" in partitions(log)
    else:  # the late event came after the purge's only transaction
        assert first == 25
    assert first + sum(purge_all(log, CUTOFF, batch=50)) == 25 + 1
    assert seen[0] == "checkpointed"
    assert keys_of(log, "acct-a") == ["a-03-late-0", "a-03-late-1", "during-0", "during-1"]
    assert keys_of(log, "acct-late") == []
    assert checkpoint_of(log, "acct-late")[0] == 1
    verdict = log.verify()
    assert verdict.ok and verdict.chains_checked == 3 and verdict.events_checked == 5
    if backend == "postgresql":
        assert "audit_events_2026_02" not in partitions(log)


@pytest.mark.parametrize("backend", ["postgresql"] if PG_ADMIN_URL else [])
def test_a_purge_that_stops_after_its_detach_leaves_a_table_the_next_one_drops(
    audit_log, clock, backend
):
    class Stopped(Exception):
        pass

    def step(name: str) -> None:
        if name == "detached" and not stopped:
            stopped.append(name)
            raise Stopped

    stopped: list[str] = []
    clock.now = JAN
    log = audit_log(step=step)
    fill_months(log, clock)
    with pytest.raises(Stopped):
        log.purge(CUTOFF, 100)
    with log.db.read() as session:
        # January and February are out of audit_events, their tables still there
        assert session.scalar(text("SELECT to_regclass('audit_events_2026_01')")) is not None
        assert (
            session.scalar(
                select(func.min(EventRow.sequence)).where(EventRow.account_id == "acct-b")
            )
            == 7
        )
    assert "audit_events_2026_01" not in partitions(log)
    assert log.verify().ok
    assert sum(purge_all(log, CUTOFF, batch=100)) == 7  # March's expired events: a 4, b 3
    with log.db.read() as session:
        assert session.scalar(text("SELECT to_regclass('audit_events_2026_01')")) is None
        assert session.scalar(text("SELECT to_regclass('audit_events_2026_02')")) is None
    assert log.verify().ok


def test_events_waiting_in_the_default_partition_move_into_their_month(audit_log, clock, backend):
    log = audit_log()
    clock.now = JAN
    log.partitions.ahead()
    clock.now = MAR  # no purge ran for two months: March has no partition yet
    log.record("acct-a", events("march", 3, clock))
    made = log.partitions.ahead()
    if backend == "postgresql":
        assert made == ["2026-03", "2026-04"]
        with log.db.read() as session:
            moved = session.scalar(text("SELECT count(*) FROM audit_events_2026_03"))
            left = session.scalar(text("SELECT count(*) FROM audit_events_default"))
        assert (moved, left) == (3, 0)
    else:
        assert made == []
    assert keys_of(log, "acct-a") == ["march-0", "march-1", "march-2"]
    assert log.verify().ok


PREVIOUS = "90ceaa6bad06"  # the audit revision before the partitioning one


def test_partitioning_an_existing_log_keeps_every_event_and_the_chain_verifies(
    audit_log, database_url, clock, backend
):
    url = database_url("audit")
    migrations.upgrade(url, "audit", PREVIOUS)
    rows, prev = [], GENESIS_HASH
    for sequence in range(1, 61):  # one event a week from January: 14 months
        content = EventContent(
            account_id="acct-a",
            sequence=sequence,
            idempotency_key=f"k-{sequence}",
            project_id="film",
            media_id="m",
            face_index=0,
            label=1,
            reason=1,
            similarity=0.25,
            talent_hash=None,
            actor="key_test",
            occurred_at=JAN + timedelta(weeks=sequence),
            recorded_at=JAN + timedelta(weeks=sequence),
        )
        digest = chain_hash(prev, content)
        columns = {k: v for k, v in content.__dict__.items() if k not in ("kind", "decision")}
        rows.append({**columns, "prev_hash": prev, "event_hash": digest})  # before kinds
        prev = digest
    db = Database(url, Base.metadata)
    with db.write() as session:
        session.execute(EventRow.__table__.insert(), rows)
        session.add(
            ChainHead(
                account_id="acct-a",
                last_sequence=60,
                last_hash=prev,
                last_recorded_at=rows[-1]["recorded_at"],
            )
        )
    db.dispose()

    clock.now = rows[-1]["recorded_at"]
    log = audit_log(url=url)  # upgrades to head, as the service does at start
    with log.db.read() as session:
        stored = [
            {c.name: getattr(row, c.name) for c in EventRow.__table__.columns}
            for row in session.scalars(select(EventRow).order_by(EventRow.sequence))
        ]
    assert [{k: row[k] for k in rows[0]} for row in stored] == rows
    assert {(row["kind"], row["decision"]) for row in stored} == {(1, 0)}  # read as matches
    verdict = log.verify()
    assert verdict.ok and verdict.events_checked == 60
    if backend == "postgresql":
        months = {f"audit_events_{r['recorded_at']:%Y_%m}" for r in rows}
        assert set(partitions(log)) >= months | {"audit_events_default"}
        with log.db.read() as session:
            assert session.scalar(text("SELECT count(*) FROM audit_events_default")) == 0
    # a purge then drops the first year's months, and the chain still verifies
    assert sum(purge_all(log, datetime(2027, 1, 1, tzinfo=UTC), batch=10)) == sum(
        r["recorded_at"] < datetime(2027, 1, 1, tzinfo=UTC) for r in rows
    )
    assert log.verify().ok
    migrations.downgrade(url, "audit", PREVIOUS)  # and back: every remaining event kept
    with log.db.read() as session:
        assert session.scalar(select(func.count()).select_from(EventRow)) == len(
            [r for r in rows if r["recorded_at"] >= datetime(2027, 1, 1, tzinfo=UTC)]
        )
