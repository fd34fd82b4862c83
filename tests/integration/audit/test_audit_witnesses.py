"""Witness cosignatures before a checkpoint is published (services/audit/witnesses.py): the audit
service asks real tlog-witnesses over HTTP, proves consistency from the size each holds, and
publishes only with the quorum of verified cosignatures; a witness holding a fork withholds its
cosignature, and below the quorum nothing is published."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from sqlalchemy import select

from mixip.audit.v1 import audit_pb2, audit_pb2_grpc
from mixip.runtime.db import Database
from mixip.runtime.keys import LocalKeyWrapper
from mixip.tlog.checkpoint import open_checkpoint
from mixip.tlog.cosignature import Cosigner
from mixip.tlog.note import Ed25519Signer, Ed25519Verifier
from mixip.tlog.receipt import Receipt, ReceiptError, verify_receipt
from mixip.tlog.witness import Seen, Witness, WitnessState
from services.audit.app import SERVICE_NAME, AuditApp
from services.audit.signer import KEY_FILE, LogSigner
from services.audit.store import Base, SignedCheckpointRow
from services.audit.witnesses import Witnessing, WitnessPeer
from tests.integration.audit.test_audit_service import ACCOUNT, record
from tests.support.status import expect_error


class Served:
    """A witness on a real HTTP server on a loopback port of its own."""

    def __init__(self, name: str, tmp_path) -> None:
        self.cosigner = Cosigner(name, Ed25519Signer.generate(name).seed)
        self.state = WitnessState(tmp_path / f"{name.replace('/', '_')}.state")
        self.witness: Witness | None = None
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                assert served.witness is not None
                body = self.rfile.read(int(self.headers["Content-Length"]))
                reply = served.witness.add_checkpoint(body)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.end_headers()
                self.wfile.write(reply.body.encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def trust(self, log_verifier) -> None:
        self.witness = Witness(self.cosigner, {log_verifier.name: log_verifier}, self.state)

    def peer(self) -> WitnessPeer:
        return WitnessPeer(self.url, self.cosigner.verifier())


@pytest.fixture
def witnesses(tmp_path):
    served = [Served(f"w{i}.example/witness", tmp_path) for i in (1, 2)]
    yield served
    for witness in served:
        witness.server.shutdown()


@pytest.fixture
def audit(database_url, tmp_path, serve, clock, channels, witnesses):
    """The audit service, its log key known to both witnesses; `make(quorum)` starts it."""
    signer = LogSigner.load_or_create(tmp_path / "log-key" / KEY_FILE)
    for witness in witnesses:
        witness.trust(signer.for_account(ACCOUNT).verifier())

    def make(quorum: int):
        app = AuditApp(
            Database(database_url("audit"), Base.metadata),
            LocalKeyWrapper(tmp_path / "keys" / "audit-kek.key"),
            clock,
            signer=signer,
            witnessing=Witnessing(tuple(w.peer() for w in witnesses), quorum),
        )
        running = serve(app)
        channel = channels(f"127.0.0.1:{running.port}", SERVICE_NAME)
        return app, audit_pb2_grpc.AuditServiceStub(channel)

    return make


def signed(stub, witnesses, quorum: int):
    """The published checkpoint, opened with the log's key and `quorum` of the witnesses'."""
    vkey = stub.GetLogPublicKey(audit_pb2.GetLogPublicKeyRequest(account_id=ACCOUNT))
    note = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(account_id=ACCOUNT)).checkpoint
    log = Ed25519Verifier.from_vkey(vkey.verifier_key)
    keys = [w.cosigner.verifier() for w in witnesses]
    return open_checkpoint(note, log, keys, quorum=quorum)


def test_a_checkpoint_is_published_cosigned_by_every_witness_as_the_log_grows(
    audit, witnesses, clock
):
    _, stub = audit(quorum=2)
    record(stub, clock, ["a", "b", "c"])
    first = signed(stub, witnesses, quorum=2)
    assert first.checkpoint.size == 3 and len(first.witnesses) == 2
    record(stub, clock, ["d", "e"])
    second = signed(stub, witnesses, quorum=2)  # each witness checked a proof from 3 to 5
    assert second.checkpoint.size == 5
    assert {w.state.get(first.checkpoint.origin).size for w in witnesses} == {5}


def test_a_witness_that_holds_another_size_is_asked_again_from_it(audit, witnesses, clock):
    app, stub = audit(quorum=2)
    record(stub, clock, ["a", "b"])
    origin = signed(stub, witnesses, quorum=2).checkpoint.origin
    fresh = witnesses[1]
    fresh.state = WitnessState(fresh.state.path.with_suffix(".new"))  # a witness added later
    fresh.trust(app.log.signer.for_account(ACCOUNT).verifier())
    record(stub, clock, ["c"])
    assert signed(stub, witnesses, quorum=2).checkpoint.size == 3  # 409 "0", then from 0
    assert fresh.state.get(origin).size == 3


def test_below_the_quorum_nothing_is_published(audit, witnesses, clock):
    app, stub = audit(quorum=2)
    record(stub, clock, ["a", "b"])
    origin = signed(stub, witnesses, quorum=2).checkpoint.origin
    # the second witness saw another tree of 2 leaves (a split view shown to it)
    witnesses[1].state.put(origin, Seen(2, b"\x07" * 32))
    record(stub, clock, ["c"])
    refused = expect_error(
        grpc.StatusCode.UNAVAILABLE,
        stub.GetCheckpoint,
        audit_pb2.GetCheckpointRequest(account_id=ACCOUNT),
    )
    assert refused.reason == "WITNESS_QUORUM"
    with app.db.read() as session:
        assert session.scalars(select(SignedCheckpointRow.tree_size)).all() == [2]
    assert witnesses[1].state.get(origin).size == 2  # the forked witness cosigned nothing


def test_a_quorum_of_one_publishes_what_one_witness_cosigned(audit, witnesses, clock):
    _, stub = audit(quorum=1)
    record(stub, clock, ["a"])
    witnesses[1].state.put(f"mixip.example/audit/{ACCOUNT}", Seen(1, b"\x07" * 32))
    published = signed(stub, witnesses, quorum=1)
    assert published.witnesses == (witnesses[0].cosigner.name,)


def test_a_receipt_carries_the_published_cosignatures_and_needs_the_quorum(audit, witnesses, clock):
    _, stub = audit(quorum=2)
    record(stub, clock, ["a", "b", "c", "d"])
    published = signed(stub, witnesses, quorum=2)
    assert published.checkpoint.size == 4
    proof = stub.GetInclusionProof(
        audit_pb2.GetInclusionProofRequest(
            account_id=ACCOUNT, sequence=3, tree_size=published.checkpoint.size
        )
    )
    note = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(account_id=ACCOUNT)).checkpoint
    text = Receipt(proof.leaf_index, tuple(proof.hashes), note, extra=proof.leaf).text
    log = Ed25519Verifier.from_vkey(
        stub.GetLogPublicKey(audit_pb2.GetLogPublicKeyRequest(account_id=ACCOUNT)).verifier_key
    )
    keys = [w.cosigner.verifier() for w in witnesses]
    verified = verify_receipt(text, None, log, keys, quorum=2)
    assert (verified.index, verified.signed.witnesses) == (2, tuple(k.name for k in keys))
    assert json.loads(verified.leaf)["sequence"] == 3
    cosignatures = tuple(f"\n— {k.name} " for k in keys)
    uncosigned = "\n".join(  # the cosignature lines cut off
        line for line in text.split("\n") if not ("\n" + line).startswith(cosignatures)
    )
    assert uncosigned.count("\n— ") == 1
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(uncosigned, None, log, keys, quorum=1)
    assert caught.value.part == "witnesses"
