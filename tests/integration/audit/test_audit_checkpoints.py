"""Signed checkpoints and proofs over the audit service's API: a checkpoint that verifies with the
published key, inclusion proofs of every event and consistency proofs between checkpoints that
mixip.tlog verifies, and a log that refuses to sign a tree not extending its last checkpoint."""

from __future__ import annotations

import stat

import grpc
from sqlalchemy import delete, select, update

from mixip.audit.v1 import audit_pb2
from mixip.tlog.checkpoint import open_checkpoint
from mixip.tlog.merkle import leaf_hash
from mixip.tlog.note import Ed25519Verifier
from mixip.tlog.proof import verify_consistency, verify_inclusion
from services.audit.signer import LogSigner
from services.audit.store import SignedCheckpointRow, TreeNodeRow
from tests.integration.audit.test_audit_service import ACCOUNT, list_all, record
from tests.support.status import expect_error, expect_invalid


def checkpoint(stub, account=ACCOUNT):
    """The account's signed checkpoint, opened with the key the service publishes."""
    vkey = stub.GetLogPublicKey(audit_pb2.GetLogPublicKeyRequest(account_id=account))
    note = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(account_id=account)).checkpoint
    return open_checkpoint(note, Ed25519Verifier.from_vkey(vkey.verifier_key)).checkpoint


def test_a_checkpoint_verifies_with_the_published_key_and_proves_every_event(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, [f"k{i}" for i in range(5)])
    record(stub, clock, ["other"], account="acct-b")
    signed = checkpoint(stub)
    assert signed.origin == f"mixip.example/audit/{ACCOUNT}" and signed.size == 5
    for event in list_all(stub):
        proof = stub.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(
                account_id=ACCOUNT, sequence=event.sequence, tree_size=signed.size
            )
        )
        assert proof.leaf_index == event.sequence - 1
        verify_inclusion(
            leaf_hash(event.leaf), proof.leaf_index, signed.size, proof.hashes, signed.root
        )


def test_a_consistency_proof_between_two_checkpoints_verifies(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["a", "b", "c"])
    old = checkpoint(stub)
    record(stub, clock, ["d", "e", "f", "g"])
    new = checkpoint(stub)
    proof = stub.GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(
            account_id=ACCOUNT, from_size=old.size, to_size=new.size
        )
    )
    assert (old.size, new.size) == (3, 7)
    verify_consistency(old.size, new.size, old.root, new.root, proof.hashes)


def test_the_log_refuses_to_sign_a_tree_that_does_not_extend_its_last_checkpoint(
    audit_service, clock
):
    stub = audit_service.stub
    record(stub, clock, ["a", "b", "c"])
    kept = checkpoint(stub)
    with audit_service.app.db.write() as session:  # a writer edits the first two leaves' node
        session.execute(
            update(TreeNodeRow)
            .where(TreeNodeRow.level == 1, TreeNodeRow.node_index == 0)
            .values(hash=b"\x07" * 32)
        )
    record(stub, clock, ["d"])
    refused = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        stub.GetCheckpoint,
        audit_pb2.GetCheckpointRequest(account_id=ACCOUNT),
    )
    assert refused.reason == "INCONSISTENT_TREE" and "3 leaves" in refused.message
    with audit_service.app.db.write() as session:  # ...or rewinds the tree below the checkpoint
        session.execute(delete(TreeNodeRow).where(TreeNodeRow.node_index >= 1))
    refused = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        stub.GetCheckpoint,
        audit_pb2.GetCheckpointRequest(account_id=ACCOUNT),
    )
    assert refused.reason == "INCONSISTENT_TREE" and "shrank" in refused.message
    assert kept.size == 3


def test_an_unchanged_tree_keeps_its_signed_checkpoint(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["a"])
    request = audit_pb2.GetCheckpointRequest(account_id=ACCOUNT)
    first = stub.GetCheckpoint(request).checkpoint
    assert stub.GetCheckpoint(request).checkpoint == first


def test_the_schedule_signs_every_grown_tree_and_keeps_the_rest(audit_service, clock):
    stub, log = audit_service.stub, audit_service.app.log
    record(stub, clock, ["a"])
    record(stub, clock, ["b"], account="acct-b")
    untouched = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(account_id="acct-b"))
    record(stub, clock, ["c"])
    log.sign_grown()
    with log.db.read() as session:
        kept = {row.account_id: row for row in session.scalars(select(SignedCheckpointRow))}
    assert {account: row.tree_size for account, row in kept.items()} == {
        ACCOUNT: 2,
        "acct-b": 1,
    }
    assert kept["acct-b"].note == untouched.checkpoint


def test_proof_requests_outside_the_tree_are_invalid(audit_service, clock):
    stub = audit_service.stub
    record(stub, clock, ["a", "b"])
    expect_invalid(
        stub.GetInclusionProof,
        audit_pb2.GetInclusionProofRequest(account_id=ACCOUNT, sequence=0, tree_size=0),
        fields={"sequence", "tree_size"},
    )
    expect_invalid(
        stub.GetInclusionProof,
        audit_pb2.GetInclusionProofRequest(account_id=ACCOUNT, sequence=3, tree_size=2),
        fields={"sequence"},
    )
    beyond = expect_invalid(  # the event is in the tree; the tree has not reached that size
        stub.GetInclusionProof,
        audit_pb2.GetInclusionProofRequest(account_id=ACCOUNT, sequence=1, tree_size=3),
        fields={"tree_size"},
    )
    assert [v.field for v in beyond.violations] == ["tree_size"]
    expect_invalid(
        stub.GetConsistencyProof,
        audit_pb2.GetConsistencyProofRequest(account_id=ACCOUNT, from_size=1, to_size=9),
        fields={"to_size"},
    )


def test_the_signer_key_is_made_once_private_and_read_back(tmp_path):
    path = tmp_path / "keys" / "audit-log-signer.key"
    made = LogSigner.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("PRIVATE+KEY+mixip.example/audit+")
    assert LogSigner.load_or_create(path).vkey("acct-a") == made.vkey("acct-a")
    assert made.vkey("acct-a") != made.vkey("acct-b")
