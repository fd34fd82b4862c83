"""The tlog-witness (mixip/tlog/witness.py, `mixip witness serve`): it cosigns a checkpoint only
when it extends the last one it cosigned for that log, answers each refusal with the status
C2SP tlog-witness names, and keeps its state across a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from mixip.tlog.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from mixip.tlog.cosignature import CosignatureVerifier, Cosigner
from mixip.tlog.merkle import MemoryHashes
from mixip.tlog.note import Ed25519Signer
from mixip.tlog.proof import prove_consistency
from mixip.tlog.witness import (
    SIZE_CONTENT_TYPE,
    Witness,
    WitnessRefused,
    WitnessState,
    add_checkpoint,
    request_body,
)

ORIGIN = "mixip.example/audit/acct_witnessed"


class Log:
    """A log as the mesh keeps one: leaves, a signing key, checkpoints of any size."""

    def __init__(self, signer: Ed25519Signer, leaves: int = 0) -> None:
        self.signer, self.tree, self.count = signer, MemoryHashes(), 0
        self.grow(leaves)

    def grow(self, n: int) -> None:
        self.tree.append(f"event {self.count + i}".encode() for i in range(n))
        self.count += n

    def note(self, size: int | None = None) -> str:
        size = self.count if size is None else size
        return sign_checkpoint(Checkpoint(ORIGIN, size, self.tree.root(size)), self.signer)

    def body(self, old: int, size: int | None = None) -> bytes:
        size = self.count if size is None else size
        return request_body(
            old, prove_consistency(self.tree, old, size) if old else [], self.note(size)
        )


@pytest.fixture
def log() -> Log:
    return Log(Ed25519Signer.generate(ORIGIN), 5)


@pytest.fixture
def cosigner() -> Cosigner:
    return Cosigner("witness.example/w1", Ed25519Signer.generate("witness.example/w1").seed)


@pytest.fixture
def witness(log, cosigner, tmp_path) -> Witness:
    return Witness(cosigner, {ORIGIN: log.signer.verifier()}, WitnessState(tmp_path / "state"))


def cosigned(log: Log, cosigner: Cosigner, note: str, lines: str) -> int:
    """The size of the checkpoint, once the witness's cosignature verifies on it."""
    opened = open_checkpoint(note + lines, log.signer.verifier(), [cosigner.verifier()], quorum=1)
    return opened.checkpoint.size


def test_a_log_that_grows_is_cosigned_at_every_size(witness, log, cosigner):
    reply = witness.add_checkpoint(log.body(0))
    assert reply.status == 200 and cosigned(log, cosigner, log.note(), reply.body) == 5
    log.grow(7)
    reply = witness.add_checkpoint(log.body(5))
    assert reply.status == 200 and cosigned(log, cosigner, log.note(), reply.body) == 12
    assert witness.add_checkpoint(log.body(12)).status == 200  # the same tree again


def test_each_refusal_has_the_status_the_protocol_names(witness, log, cosigner):
    assert witness.add_checkpoint(log.body(0)).status == 200
    log.grow(3)
    stale = witness.add_checkpoint(log.body(0, 8))
    assert (stale.status, stale.body, stale.content_type) == (409, "5\n", SIZE_CONTENT_TYPE)
    # a fork: another tree whose first 5 leaves differ, with a proof that is its own
    fork = Log(log.signer, 0)
    fork.tree.append(b"rewritten" for _ in range(8))
    fork.count = 8
    assert witness.add_checkpoint(fork.body(5)).status == 422
    # a rollback: the same size with another root
    assert witness.add_checkpoint(fork.body(5, 5)).status == 422
    stranger = Log(Ed25519Signer.generate(ORIGIN), 8)  # the origin's name, not its key
    assert witness.add_checkpoint(stranger.body(5)).status == 403
    unknown = Log(Ed25519Signer.generate("other.example/log"), 3)
    note = sign_checkpoint(Checkpoint("other.example/log", 3, unknown.tree.root()), unknown.signer)
    assert witness.add_checkpoint(request_body(0, [], note)).status == 404
    assert witness.add_checkpoint(b"old 9\n\n" + log.note(8).encode()).status == 400
    assert witness.add_checkpoint(b"new 5\n\n" + log.note(8).encode()).status == 400
    assert witness.add_checkpoint(log.body(5)).status == 200  # none of that moved its state


def test_two_requests_racing_cannot_roll_the_witness_back(log, cosigner, tmp_path):
    """C2SP's race: A (size N) checked, B (size N+K) checked and stored, then A stored would
    roll K leaves back. A is held between its check and its update; B waits for A, and then
    finds the size A stored: a 409, not a cosignature."""
    held, release = threading.Event(), threading.Event()

    def step(name: str) -> None:
        if threading.current_thread().name == "A":
            held.set()
            release.wait(10)

    witness = Witness(
        cosigner, {ORIGIN: log.signer.verifier()}, WitnessState(tmp_path / "state"), step
    )
    witness.add_checkpoint(log.body(0))
    log.grow(2)
    first = log.body(5)  # 5 -> 7
    log.grow(2)
    second = log.body(5)  # 5 -> 9
    replies = {}
    a = threading.Thread(target=lambda: replies.update(A=witness.add_checkpoint(first)), name="A")
    b = threading.Thread(target=lambda: replies.update(B=witness.add_checkpoint(second)), name="B")
    a.start()
    assert held.wait(10)
    b.start()
    b.join(0.2)
    assert b.is_alive()  # B waits for A's check-and-update to finish
    release.set()
    a.join(10)
    b.join(10)
    assert replies["A"].status == 200
    assert (replies["B"].status, replies["B"].body) == (409, "7\n")  # B must prove 7 -> 9
    assert WitnessState(tmp_path / "state").get(ORIGIN).size == 7


def test_the_served_witness_keeps_its_state_through_a_kill(log, tmp_path):
    key_file, state = tmp_path / "witness.key", tmp_path / "witness.state"
    public = run_cli("witness", "public-key", "--key-file", key_file, "--name", "w.example/w1")
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"
    vkey = json.loads(public.stdout)["vkey"]
    witness_key = CosignatureVerifier.from_vkey(vkey)
    served = serve(key_file, state, log)
    try:
        url = json.loads(served.stdout.readline())["url"]
        lines = add_checkpoint(url, 0, [], log.note())
        checked = open_checkpoint(log.note() + lines, log.signer.verifier(), [witness_key], 1)
        assert checked.witnesses == ("w.example/w1",)
    finally:
        served.send_signal(signal.SIGKILL)
        served.wait()
    served = serve(key_file, state, log)
    try:
        url = json.loads(served.stdout.readline())["url"]
        with pytest.raises(WitnessRefused) as refused:
            add_checkpoint(url, 0, [], log.note())
        assert refused.value.known_size == 5
    finally:
        served.terminate()
        served.wait()
    bad = run_cli("witness", "serve", "--key-file", key_file, "--state", state, "--log", "x+y+z")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--log" in bad.stderr


def run_cli(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mixip.cli.main", "--json", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def serve(key_file, state, log: Log) -> subprocess.Popen:
    command = [sys.executable, "-m", "mixip.cli.main", "--json", "witness", "serve"]
    command += ["--key-file", str(key_file), "--state", str(state), "--listen", "127.0.0.1:0"]
    command += ["--log", log.signer.verifier().vkey]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
