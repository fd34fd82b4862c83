"""Figure 4, the audit log on PostgreSQL: append throughput by batch size, ShredTalentSalt with a
small against a large history, and PurgeExpired of a large expired history while writers
append. Runs `AuditLog` (what the audit servicer calls) in-process on a scratch database that is
created and dropped here."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, select, text

from bench.stats import ratio, summary
from mixip.common.v1 import common_pb2
from mixip.runtime.db import Database, database_url, insert_ignoring_conflicts
from mixip.runtime.keys import LocalKeyWrapper
from mixip.runtime.times import utcnow
from mixip.tlog.checkpoint import Checkpoint as TreeCheckpoint
from mixip.tlog.checkpoint import open_checkpoint, sign_checkpoint
from mixip.tlog.merkle import MemoryHashes, root_hash
from mixip.tlog.proof import verify_inclusion
from services.audit import service as audit_service
from services.audit.domain import GENESIS_HASH, talent_hash
from services.audit.service import AuditLog, NewEvent
from services.audit.signer import LogSigner
from services.audit.store import Base, ChainHead, SaltRow
from services.audit.tree import StoredTree
from services.audit.vault import SaltVault

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PURGE_BATCH = 10_000  # the retention service's default MIXIP_RETENTION_PURGE_BATCH
SHRED_GOAL = 1.2
PURGE_GOAL_S = 1.0  # issue 13: 10^6 expired events purged in at most 1 s...
PURGE_P99_GOAL = 1.5  # ...with concurrent appends' p99 at most 1.5x their idle p99
TREE_APPEND_GOAL = 1.2  # issue 21: a batch of 1000 costs at most 1.2x with the tree than without
PROOF_P50_GOAL_MS = 2.0  # ...an inclusion proof at 10^7 leaves at most 2 ms (p50)
SIGN_GOAL_MS = 5.0  # ...and signing a checkpoint at most 5 ms
TREE_METHOD = (
    " Tree (issue 21): RecordMatchEvents of 1000-event batches to an account with its Merkle "
    "tree and to one without (the tree's append left out), alternated for {tree_rounds} rounds "
    "after 2 warm-up rounds; ratio = p50 with / p50 without. A tree of {big:,} leaves (leaf i "
    "= its 8-byte index) built in SQL level by level (INSERT ... SELECT generate_series for the "
    "leaves, each level from the one below with lead() over the node index, the primary key "
    "added after), VACUUM ANALYZE; {proofs} InclusionProof calls (AuditLog.inclusion_proof: "
    "one statement for the head, the tree size, the proof's nodes and the event) at random leaves "
    "of the whole tree, each proof verified against the root afterwards; checkpoint: "
    "AuditLog.checkpoint after each of {signs} appends of 10 events to that tree (the size, "
    "the root, the consistency proof from the last signed checkpoint, the Ed25519 note "
    "signature, the row), and the note signature alone."
)
METHOD = (
    "PostgreSQL scratch database (created and dropped by the bench), AuditLog in-process (the "
    "servicer's use cases, no gRPC). Append: one writer, one account, back to back for {window} "
    "s per batch size (events per RecordMatchEvents call: 1, 10, 100, 1000; half the events "
    "name one of 200 talents, so salts are looked up or created), plus 4 writers on 4 accounts "
    "with 10-event batches. Shred: one account holding {large:,} events of talent L and {small:,} "
    "of talent S (history inserted with INSERT ... SELECT generate_series, carrying each "
    "talent's real salted hash); ShredTalentSalt of L and of S alternated {reps} times, the "
    "destroyed salt row re-inserted (still sealed) between runs so every run shreds the same "
    "state; ratio = p50(L) / p50(S). Purge: audit_events partitioned by month; the history "
    "month's partition made as the service makes each month's ahead, then VACUUM ANALYZE and "
    "a CHECKPOINT (a year-old month is on disk); PurgeExpired(cutoff = now "
    "- 12 months, batch {batch:,}) called until done over {expired:,} expired events (one "
    "month: its partition is dropped), while one writer appends 10-event batches alternately "
    "to a live account and to the purged account; append latency p50/p99 during the purge "
    "against the same writer for {window} s just before it. Goal: <= {goal_s:g} s and p99 "
    "during <= {goal_p99:g} x idle p99."
)


def _events(count: int, offset: int, now: datetime) -> list[NewEvent]:
    events = []
    for i in range(offset, offset + count):
        talent = f"talent-{i % 200:03d}" if i % 2 == 0 else ""
        events.append(
            NewEvent(
                idempotency_key=uuid.uuid4().hex,
                project_id="bench-film",
                media_id=f"med-{i // 10}",
                face_index=i % 10,
                label=common_pb2.FACE_LABEL_CLEARED if talent else common_pb2.FACE_LABEL_UNKNOWN,
                reason=common_pb2.LABEL_REASON_CONSENTED_MATCH
                if talent
                else common_pb2.LABEL_REASON_NO_MATCH,
                similarity=0.8 if talent else 0.1,
                talent_id=talent,
                actor="key_bench",
                occurred_at=now,
            )
        )
    return events


def _append(log: AuditLog, window: float) -> dict:
    by_batch = {}
    for batch in (1, 10, 100, 1000):
        account = f"append-{batch}"
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < window:
            log.record(account, _events(batch, done, utcnow()))
            done += batch
        by_batch[str(batch)] = {
            "events_per_s": round(done / (time.perf_counter() - started), 1),
            "calls_per_s": round(done / batch / (time.perf_counter() - started), 1),
        }
    totals = [0] * 4
    stop = threading.Event()

    def writer(slot: int) -> None:
        while not stop.is_set():
            log.record(f"concurrent-{slot}", _events(10, totals[slot], utcnow()))
            totals[slot] += 10

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    stop.wait(window)
    stop.set()
    for thread in threads:
        thread.join()
    concurrent = sum(totals) / (time.perf_counter() - started)
    best = max(v["events_per_s"] for v in by_batch.values())
    return {
        "by_batch": by_batch,
        "events_per_s": best,
        "concurrent_4_accounts_batch_10_events_per_s": round(concurrent, 1),
    }


def _history(log: AuditLog, account: str, sizes: dict[str, int]) -> datetime:
    """`sizes[talent]` expired events per talent, with their real salted hashes, in the
    partition of their month (which the service made ahead back then)."""
    db, vault = log.db, log.vault
    old = utcnow() - timedelta(days=400)
    log.partitions.make_for(old)
    with db.write() as session:
        salts = vault.salts(session, account, list(sizes), create=True)
        first = 1
        for talent, count in sizes.items():
            session.execute(
                text(
                    "INSERT INTO audit_events (account_id, sequence, idempotency_key, project_id,"
                    " media_id, face_index, label, reason, similarity, talent_hash, actor,"
                    " occurred_at, recorded_at, prev_hash, event_hash)"
                    " SELECT :account, g, 'hist-' || g, 'bench-film', 'med-' || (g / 10),"
                    " g % 10, :label, :reason, 0.8, :hash, 'key_bench', :old, :old,"
                    " repeat('0', 64), md5(g::text) || md5(g::text)"
                    " FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g"
                ),
                {
                    "account": account,
                    "label": common_pb2.FACE_LABEL_CLEARED,
                    "reason": common_pb2.LABEL_REASON_CONSENTED_MATCH,
                    "hash": talent_hash(salts[talent], talent),
                    "old": old,
                    "first": first,
                    "last": first + count - 1,
                },
            )
            first += count
        session.execute(
            insert(ChainHead).values(
                account_id=account,
                last_sequence=first - 1,
                last_hash=GENESIS_HASH,
                last_recorded_at=old,
            )
        )
    with db.engine.connect() as connection:
        settled = connection.execution_options(isolation_level="AUTOCOMMIT")
        settled.execute(text("VACUUM ANALYZE audit_events"))
        # Expired events were written a year ago: their pages are on disk, not dirty in memory
        # (freeing dirty pages makes dropping their partition several times slower).
        settled.execute(text("CHECKPOINT"))
    return old


def _shred(log: AuditLog, db: Database, account: str, sizes: dict[str, int], reps: int) -> dict:
    with db.read() as session:
        table = SaltRow.__table__
        saved = {
            row.lookup: dict(row._mapping)
            for row in session.execute(select(table).where(table.c.account_id == account))
        }
    times: dict[str, list[float]] = {talent: [] for talent in sizes}
    order = list(sizes)
    for rep in range(reps):
        for talent in order if rep % 2 == 0 else reversed(order):
            started = time.perf_counter()
            destroyed, _ = log.shred(account, talent)
            times[talent].append(time.perf_counter() - started)
            if not destroyed:
                raise RuntimeError("the salt was not there to shred")
            with db.write() as session:  # the same sealed salt back: the same state again
                insert_ignoring_conflicts(
                    session, SaltRow.__table__, list(saved.values()), ["lookup"]
                )
    large, small = order
    large_ms, small_ms = summary(times[large], digits=3), summary(times[small], digits=3)
    shred_ratio = ratio(large_ms["p50"], small_ms["p50"])
    return {
        "large_events": sizes[large],
        "small_events": sizes[small],
        "large_ms": large_ms,
        "small_ms": small_ms,
        "ratio": shred_ratio,
        "met": shred_ratio <= SHRED_GOAL,
    }


def _writer(log: AuditLog, accounts: list[str], stop: threading.Event, out: list[float]) -> None:
    i = 0
    while not stop.is_set():
        events = _events(10, i, utcnow())
        started = time.perf_counter()
        log.record(accounts[i % len(accounts)], events)
        out.append(time.perf_counter() - started)
        i += 1


def _purge(log: AuditLog, account: str, expired: int, window: float) -> dict:
    accounts = ["live", account]
    idle: list[float] = []
    stop = threading.Event()
    thread = threading.Thread(target=_writer, args=(log, accounts, stop, idle))
    thread.start()
    time.sleep(window)
    stop.set()
    thread.join()
    during: list[float] = []
    stop = threading.Event()
    thread = threading.Thread(target=_writer, args=(log, accounts, stop, during))
    thread.start()
    cutoff = utcnow() - timedelta(days=365)
    purged, calls, started = 0, 0, time.perf_counter()
    try:
        while True:
            count, done, *_ = log.purge(cutoff, PURGE_BATCH)
            purged, calls = purged + count, calls + 1
            if done:
                break
    finally:
        seconds = time.perf_counter() - started
        stop.set()
        thread.join()
    if purged != expired:
        raise RuntimeError(f"purged {purged} events, expected {expired}")
    idle_ms, during_ms = summary(idle), summary(during)
    return {
        "events": purged,
        "seconds": round(seconds, 2),
        "events_per_s": round(purged / seconds, 1),
        "calls": calls,
        "batch": PURGE_BATCH,
        "append_p50_ms_idle": idle_ms["p50"],
        "append_p99_ms_idle": idle_ms["p99"],
        "append_p50_ms_during": during_ms["p50"],
        "append_p99_ms_during": during_ms["p99"],
        "append_max_ms_during": round(max(during) * 1000, 1),
        "appends_during": len(during),
        "goal": f"<= {PURGE_GOAL_S:g} s; p99 during <= {PURGE_P99_GOAL:g}x idle",
        "p99_ratio": round(during_ms["p99"] / idle_ms["p99"], 2),
        "met": seconds <= PURGE_GOAL_S and during_ms["p99"] <= PURGE_P99_GOAL * idle_ms["p99"],
    }


class _NoTree(StoredTree):
    """The audit log as it was before its tree: appends store no node."""

    def append(self, leaves: Sequence[bytes]) -> None:
        return None


def _tree_append(log: AuditLog, rounds: int) -> dict:
    """Batches of 1000 with and without the tree, alternated (who goes first too)."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(rounds + 2):
        for with_tree in (True, False) if round_ % 2 == 0 else (False, True):
            events = _events(1000, round_ * 1000, utcnow())
            audit_service.StoredTree = StoredTree if with_tree else _NoTree  # type: ignore[misc]
            try:
                started = time.perf_counter()
                log.record("tree-on" if with_tree else "tree-off", events)
                elapsed = time.perf_counter() - started
            finally:
                audit_service.StoredTree = StoredTree  # type: ignore[misc]
            if round_ >= 2:
                times[with_tree].append(elapsed)
    on, off = summary(times[True]), summary(times[False])
    append_ratio = ratio(on["p50"], off["p50"])
    return {
        "batch": 1000,
        "with_tree_ms": on,
        "without_tree_ms": off,
        "ratio": append_ratio,
        "goal": f"<= {TREE_APPEND_GOAL}x",
        "met": append_ratio <= TREE_APPEND_GOAL,
    }


_LEVEL_0 = text(
    "INSERT INTO audit_tree_nodes (account_id, level, node_index, hash)"
    " SELECT :account, 0, g, sha256('\\x00'::bytea || int8send(g))"
    " FROM generate_series(CAST(0 AS bigint), CAST(:size AS bigint) - 1) g"
)
_LEVEL_UP = text(
    "INSERT INTO audit_tree_nodes (account_id, level, node_index, hash)"
    " SELECT :account, :level + 1, node_index / 2, sha256('\\x01'::bytea || hash || next)"
    " FROM (SELECT node_index, hash, lead(hash) OVER (ORDER BY node_index) AS next"
    " FROM audit_tree_nodes WHERE account_id = :account AND level = :level) pairs"
    " WHERE node_index % 2 = 0 AND next IS NOT NULL"
)


def _big_tree(log: AuditLog, account: str, size: int) -> float:
    """The stored tree of `size` leaves (leaf i = i as 8 bytes, big-endian) and its chain
    head, built in SQL; returns the seconds it took."""
    started = time.perf_counter()
    with log.db.write() as session:
        session.execute(text("ALTER TABLE audit_tree_nodes DROP CONSTRAINT audit_tree_nodes_pkey"))
        session.execute(_LEVEL_0, {"account": account, "size": size})
    with log.db.write() as session:
        session.execute(
            text(
                "CREATE INDEX bench_nodes ON audit_tree_nodes (account_id, level, node_index)"
                " INCLUDE (hash)"
            )
        )
    for level in range(size.bit_length() - 1):
        with log.db.write() as session:
            session.execute(_LEVEL_UP, {"account": account, "level": level})
    with log.db.write() as session:
        session.execute(text("DROP INDEX bench_nodes"))
        session.execute(
            text(
                "ALTER TABLE audit_tree_nodes ADD CONSTRAINT audit_tree_nodes_pkey"
                " PRIMARY KEY (account_id, level, node_index)"
            )
        )
        session.execute(
            insert(ChainHead).values(
                account_id=account,
                last_sequence=size,
                last_hash=GENESIS_HASH,
                last_recorded_at=utcnow(),
            )
        )
    with log.db.engine.connect() as connection:
        settled = connection.execution_options(isolation_level="AUTOCOMMIT")
        settled.execute(text("VACUUM ANALYZE audit_tree_nodes"))
    return time.perf_counter() - started


def _proofs_and_signing(log: AuditLog, account: str, size: int, proofs: int, signs: int) -> dict:
    with log.db.read() as session:
        root = root_hash(StoredTree(session, account), size)
    reference = MemoryHashes(i.to_bytes(8, "big") for i in range(min(size, 1 << 12)))
    if size <= 1 << 12 and reference.root() != root:
        raise RuntimeError("the tree built in SQL is not the RFC's")
    rng = random.Random(21)
    made: list[tuple[int, int, list[bytes]]] = []
    times = []
    for _ in range(proofs):
        sequence = rng.randrange(1, size + 1)
        started = time.perf_counter()
        inclusion = log.inclusion_proof(account, sequence, size)
        times.append(time.perf_counter() - started)
        made.append((sequence, inclusion.leaf_index, inclusion.hashes))
    for sequence, index, proof in made:  # each proof proves its leaf in the tree's root
        if index != sequence - 1:
            raise RuntimeError(f"event {sequence} is leaf {index}")
        verify_inclusion(leaf_hash_of(index), index, size, proof, root)
    proof_ms = summary(times, digits=3)
    signer = log.signer
    assert signer is not None
    log.checkpoint(account)  # the first signed checkpoint of this tree
    service_times, note_times = [], []
    for i in range(signs):
        log.record(account, _events(10, i * 10, utcnow()))
        started = time.perf_counter()
        note = log.checkpoint(account)
        service_times.append(time.perf_counter() - started)
        checkpoint = open_checkpoint(note, signer.for_account(account).verifier()).checkpoint
        if checkpoint.size != size + 10 * (i + 1):
            raise RuntimeError(f"signed {checkpoint.size} leaves")
        started = time.perf_counter()
        sign_checkpoint(
            TreeCheckpoint(checkpoint.origin, checkpoint.size, checkpoint.root),
            signer.for_account(account),
        )
        note_times.append(time.perf_counter() - started)
    sign_ms, note_ms = summary(service_times, digits=3), summary(note_times, digits=3)
    return {
        "proof": {
            "leaves": size,
            "hashes": len(made[0][2]),
            "ms": proof_ms,
            "goal": f"p50 <= {PROOF_P50_GOAL_MS:g} ms",
            "met": proof_ms["p50"] <= PROOF_P50_GOAL_MS,
        },
        "checkpoint": {
            "leaves": size,
            "ms": sign_ms,
            "note_signature_ms": note_ms,
            "goal": f"p50 <= {SIGN_GOAL_MS:g} ms",
            "met": sign_ms["p50"] <= SIGN_GOAL_MS,
        },
    }


def leaf_hash_of(index: int) -> bytes:
    """The leaf hash of leaf `index` of the tree `_big_tree` builds."""
    return hashlib.sha256(b"\x00" + index.to_bytes(8, "big")).digest()


def run(smoke: bool) -> dict:
    window = 1.0 if smoke else 6.0
    sizes = {"talent-large": 10_000 if smoke else 1_000_000, "talent-small": 1_000}
    reps = 6 if smoke else 40
    tree_rounds, big = (6, 1 << 12) if smoke else (80, 10_000_000)
    proofs, signs = (200, 20) if smoke else (1000, 100)
    admin_url = database_url(
        os.environ.get("MIXIP_BENCH_DATABASE_URL")
        or os.environ.get("MIXIP_TEST_DATABASE_URL")
        or DEFAULT_ADMIN_URL
    )
    name = f"mixip_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    keys = Path(tempfile.mkdtemp(prefix="mixip-bench-audit-"))
    db = None
    try:
        db = Database(admin_url.set(database=name).render_as_string(False), Base.metadata)
        db.create_tables()
        vault = SaltVault(db, LocalKeyWrapper(keys / "audit-kek.key"), utcnow)
        signer = LogSigner.load_or_create(keys / "audit-log-signer.key")
        log = AuditLog(db, vault, utcnow, signer=signer)
        append = _append(log, window)
        print(f"  audit append: {append}", flush=True)
        tree = {"append": _tree_append(log, tree_rounds)}
        print(f"  audit tree append: {tree['append']}", flush=True)
        _history(log, "history", sizes)
        shred = _shred(log, db, "history", sizes, reps)
        print(f"  audit shred: {shred}", flush=True)
        purge = _purge(log, "history", sum(sizes.values()), window)
        print(f"  audit purge: {purge}", flush=True)
        tree["build_seconds"] = round(_big_tree(log, "big-tree", big), 1)
        tree |= _proofs_and_signing(log, "big-tree", big, proofs, signs)
    finally:
        if db is not None:
            db.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(keys, ignore_errors=True)
    return {
        "method": METHOD.format(
            window=window,
            large=sizes["talent-large"],
            small=sizes["talent-small"],
            reps=reps,
            batch=PURGE_BATCH,
            expired=sum(sizes.values()),
            goal_s=PURGE_GOAL_S,
            goal_p99=PURGE_P99_GOAL,
        )
        + TREE_METHOD.format(tree_rounds=tree_rounds, big=big, proofs=proofs, signs=signs),
        "goal": (
            f"shred ratio <= {SHRED_GOAL}; purge <= {PURGE_GOAL_S:g} s with concurrent appends' "
            f"p99 <= {PURGE_P99_GOAL:g}x idle; tree append <= {TREE_APPEND_GOAL}x without; "
            f"inclusion proof p50 <= {PROOF_P50_GOAL_MS:g} ms at 10^7 leaves; checkpoint "
            f"signing p50 <= {SIGN_GOAL_MS:g} ms"
        ),
        "append": append,
        "shred": shred,
        "purge": purge,
        "tree": tree,
    }
