"""Each account's Merkle tree in the audit database: appended in the events' own transaction, its
root the RFC 9162 hash of the events' canonical bytes, proofs read from the stored nodes that
mixip.tlog verifies, a purge that keeps every hash, an erasure that changes none (and no
checkpoint, proof or receipt that carries the talent), and the revision that builds the tree of a
log recorded before it."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mixip.runtime import migrations
from mixip.runtime.db import Database
from mixip.runtime.errors import FailedPrecondition
from mixip.runtime.keys import LocalKeyWrapper
from mixip.tlog.merkle import EMPTY_ROOT, leaf_hash, tree_hash
from mixip.tlog.note import Ed25519Verifier
from mixip.tlog.proof import ProofError, verify_consistency, verify_inclusion
from mixip.tlog.receipt import Receipt, verify_receipt
from services.audit.service import AuditLog, EventFilter, NewEvent
from services.audit.signer import KEY_FILE, LogSigner
from services.audit.store import Base, TreeNodeRow
from services.audit.vault import SaltVault

JAN = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
TREE_REVISION = "27af5fbd0e4b"
BEFORE_TREE = "0d8c0fc399f3"


@pytest.fixture
def audit_log(database_url, tmp_path, clock):
    """An AuditLog on a freshly migrated database, as the service builds it."""
    clock.now = JAN
    url = database_url("audit")
    migrations.upgrade(url, "audit")
    db = Database(url, Base.metadata)
    yield AuditLog(db, SaltVault(db, LocalKeyWrapper(tmp_path / "audit-kek.key"), clock), clock)
    db.dispose()


def events(prefix: str, count: int, clock, talent: str = "t-ada") -> list[NewEvent]:
    return [
        NewEvent(
            idempotency_key=f"{prefix}-{i}",
            project_id="film",
            media_id=f"{prefix}-media",
            face_index=i,
            label=1,
            reason=1,
            similarity=0.25 * i,
            talent_id=talent if i % 2 else "",
            actor="key_test",
            occurred_at=clock(),
        )
        for i in range(count)
    ]


def canonical_leaves(log: AuditLog, account: str) -> list[tuple[int, bytes]]:
    page, _ = log.list_events(EventFilter(account), 1000, 0)
    return [(e.content.sequence, e.content.canonical()) for e in page]


def node_count(log: AuditLog) -> int:
    with log.db.read() as session:
        return session.scalar(select(func.count()).select_from(TreeNodeRow))


def test_the_tree_root_is_the_rfc_hash_of_the_events_in_order(audit_log, clock):
    assert audit_log.tree_head("acct-a") == (0, EMPTY_ROOT)
    sizes = []
    for batch, count in enumerate((1, 4, 2, 9)):
        audit_log.record("acct-a", events(f"b{batch}", count, clock))
        audit_log.record("acct-b", events(f"b{batch}", 1, clock))
        sizes.append(audit_log.tree_head("acct-a"))
        clock.advance(minutes=1)
    leaves = [leaf for _, leaf in canonical_leaves(audit_log, "acct-a")]
    assert [size for size, _ in sizes] == [1, 5, 7, 16]
    for size, root in sizes:
        assert root == tree_hash(leaves[:size])
    leaves_b = [leaf for _, leaf in canonical_leaves(audit_log, "acct-b")]
    assert audit_log.tree_head("acct-b") == (4, tree_hash(leaves_b))


def test_every_event_and_every_earlier_size_is_proven_from_the_stored_nodes(audit_log, clock):
    heads = []
    for batch, count in enumerate((3, 1, 6, 2)):
        audit_log.record("acct-a", events(f"b{batch}", count, clock))
        heads.append(audit_log.tree_head("acct-a"))
    size, root = heads[-1]
    for sequence, leaf in canonical_leaves(audit_log, "acct-a"):
        inclusion = audit_log.inclusion_proof("acct-a", sequence, size)
        assert (inclusion.leaf_index, inclusion.leaf) == (sequence - 1, leaf)
        verify_inclusion(leaf_hash(leaf), inclusion.leaf_index, size, inclusion.hashes, root)
    for old_size, old_root in heads:
        proof = audit_log.consistency_proof("acct-a", old_size, size)
        verify_consistency(old_size, size, old_root, root, proof)
    with pytest.raises(ProofError):
        audit_log.consistency_proof("acct-a", 3, size + 1)
    with pytest.raises(ProofError):
        audit_log.inclusion_proof("acct-a", 1, size + 1)


def test_a_retry_adds_no_leaf_and_a_failed_tree_append_records_no_event(audit_log, clock):
    audit_log.record("acct-a", events("b", 3, clock))
    stored = node_count(audit_log)
    assert audit_log.record("acct-a", events("b", 3, clock)) == (0, 3)
    assert node_count(audit_log) == stored
    with pytest.raises(FailedPrecondition):  # a reused key with other content
        audit_log.record("acct-a", [replace(events("b", 1, clock)[0], similarity=0.99)])
    with audit_log.db.write() as session:  # a node where leaves 2 and 3's parent will go
        session.add(TreeNodeRow(account_id="acct-a", level=1, node_index=1, hash=bytes(32)))
    with pytest.raises((IntegrityError, psycopg2.IntegrityError)):  # COPY's own, on PostgreSQL
        audit_log.record("acct-a", events("c", 2, clock))
    assert [s for s, _ in canonical_leaves(audit_log, "acct-a")] == [1, 2, 3]
    assert audit_log.tree_head("acct-a")[0] == 3
    assert audit_log.verify("acct-a").ok


def test_a_purge_deletes_events_but_keeps_the_tree_and_its_proofs(audit_log, clock):
    audit_log.record("acct-a", events("old", 5, clock))
    old_size, old_root = audit_log.tree_head("acct-a")
    clock.advance(days=40)
    audit_log.partitions.ahead()
    audit_log.record("acct-a", events("new", 3, clock))
    size, root = audit_log.tree_head("acct-a")
    before = canonical_leaves(audit_log, "acct-a")
    purged, done, _, _ = audit_log.purge(JAN + timedelta(days=20), 1000)
    assert (purged, done) == (5, True)
    assert [s for s, _ in canonical_leaves(audit_log, "acct-a")] == [6, 7, 8]
    assert audit_log.tree_head("acct-a") == (size, root)
    proof = audit_log.consistency_proof("acct-a", old_size, size)
    verify_consistency(old_size, size, old_root, root, proof)
    for sequence, leaf in canonical_leaves(audit_log, "acct-a"):
        inclusion = audit_log.inclusion_proof("acct-a", sequence, size)
        verify_inclusion(leaf_hash(leaf), inclusion.leaf_index, size, inclusion.hashes, root)
    purged_one = audit_log.inclusion_proof("acct-a", 2, size)  # its leaf is gone, not its proof
    assert purged_one.leaf == b""
    verify_inclusion(leaf_hash(before[1][1]), 1, size, purged_one.hashes, root)


def test_the_revision_builds_the_tree_of_a_log_recorded_before_it(audit_log, clock):
    audit_log.record("acct-a", events("a", 7, clock))
    audit_log.record("acct-b", events("b", 2, clock))
    clock.advance(days=40)
    audit_log.partitions.ahead()
    audit_log.record("acct-a", events("later", 5, clock))
    before = {account: audit_log.tree_head(account) for account in ("acct-a", "acct-b")}
    url = audit_log.db.url
    migrations.downgrade(url, "audit", BEFORE_TREE)
    migrations.upgrade(url, "audit", TREE_REVISION)
    assert {a: audit_log.tree_head(a) for a in before} == before

    # A log whose oldest events were purged before the tree existed: the tree starts after them
    # (and a proof made before that, whose leaf offset the log remembers, misleads no later one).
    assert audit_log.inclusion_proof("acct-a", 10, before["acct-a"][0]).leaf_index == 9
    audit_log.purge(JAN + timedelta(days=20), 1000)
    migrations.downgrade(url, "audit", BEFORE_TREE)
    migrations.upgrade(url, "audit", TREE_REVISION)
    remaining = canonical_leaves(audit_log, "acct-a")
    assert [s for s, _ in remaining] == [8, 9, 10, 11, 12]
    size, root = audit_log.tree_head("acct-a")
    assert (size, root) == (5, tree_hash([leaf for _, leaf in remaining]))
    assert audit_log.tree_head("acct-b") == (0, EMPTY_ROOT)
    for index, (sequence, leaf) in enumerate(remaining):
        inclusion = audit_log.inclusion_proof("acct-a", sequence, size)
        assert (inclusion.leaf_index, inclusion.leaf) == (index, leaf)
        verify_inclusion(leaf_hash(leaf), index, size, inclusion.hashes, root)
    audit_log.record("acct-b", events("c", 1, clock))
    assert audit_log.tree_head("acct-b")[0] == 1


def test_erasure_changes_nothing_in_the_tree_and_no_proof_carries_the_talent(
    audit_log, clock, tmp_path
):
    audit_log.signer = LogSigner.load_or_create(tmp_path / "log-key" / KEY_FILE)
    audit_log.record("acct-a", events("e", 6, clock, talent="t-ada"))
    with audit_log.db.read() as session:
        salt = audit_log.vault.salts(session, "acct-a", ["t-ada"], create=False)["t-ada"]
    size, root = audit_log.tree_head("acct-a")
    note = audit_log.checkpoint("acct-a")
    leaves = canonical_leaves(audit_log, "acct-a")
    receipts = []
    for sequence, _ in leaves:
        inclusion = audit_log.inclusion_proof("acct-a", sequence, size)
        proof = tuple(inclusion.hashes)
        receipts.append(Receipt(inclusion.leaf_index, proof, note, extra=inclusion.leaf).text)
    consistency = audit_log.consistency_proof("acct-a", 2, size)
    published = "\n".join([note, *receipts, *(h.hex() for h in consistency)]).encode()
    published += b"".join(leaf for _, leaf in leaves)
    for secret in (b"t-ada", salt, salt.hex().encode(), base64.b64encode(salt)):
        assert secret not in published

    assert audit_log.shred("acct-a", "t-ada")[0]
    assert audit_log.tree_head("acct-a") == (size, root)
    assert canonical_leaves(audit_log, "acct-a") == leaves
    assert audit_log.checkpoint("acct-a") == note  # the same tree, the same checkpoint
    verifier = Ed25519Verifier.from_vkey(audit_log.public_key("acct-a"))
    for text, (_, leaf) in zip(receipts, leaves, strict=True):
        assert verify_receipt(text, None, verifier).leaf == leaf
