"""The auditor's side of the audit log through the command line (in-process `mixip` against a
real gateway): a checkpoint kept from before, proofs that mixip.tlog verifies, and the three
database writers of issue 21 — one who edits an event, one who deletes the newest events and
rewinds every head, one who rewrites the whole log from scratch — each caught by
`mixip audit verify --checkpoint` with exit 3, as are a tree rewound under the log's own signed
checkpoint and a forged checkpoint; and an event's receipt, checked offline with the public key
alone, each tampering with it named."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from mixip.cli.main import main
from mixip.tlog.checkpoint import open_checkpoint
from mixip.tlog.cosignature import Cosigner
from mixip.tlog.merkle import leaf_hash
from mixip.tlog.note import Ed25519Signer, Ed25519Verifier
from mixip.tlog.proof import verify_consistency, verify_inclusion
from services.audit.domain import GENESIS_HASH, link_hash
from services.audit.service import _content
from services.audit.signer import ORIGIN_PREFIX, LogSigner
from services.audit.store import ChainHead, EventRow, SignedCheckpointRow, TreeNodeRow
from tests.integration.audit.test_audit_service import record


@pytest.fixture
def auditor(gateway, studio, monkeypatch, tmp_path, capsys):
    """Runs `mixip --gateway <the fixture's gateway> ARGS` as the studio; returns (exit code,
    stdout, stderr)."""
    _, meta = studio
    monkeypatch.setenv("MIXIP_API_KEY", meta[0][1].removeprefix("Bearer "))
    monkeypatch.delenv("MIXIP_GATEWAY_CA", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--data-dir", str(tmp_path / "cli"), "--gateway", gateway.address, *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def kept(auditor, audit_service, studio, clock, tmp_path):
    """Five events of the studio's log, and the checkpoint an auditor kept of them."""
    account, _ = studio
    record(audit_service.stub, clock, [f"k{i}" for i in range(5)], account=account)
    path = tmp_path / "kept.checkpoint"
    code, _, _ = auditor("audit", "checkpoint", "-o", str(path))
    assert code == 0
    return path


def rechain(db, account: str) -> None:
    """What a writer who knows the chain does after editing it: recomputes every link and the
    head, so that the hash chain verifies again."""
    with db.write() as session:
        rows = session.scalars(
            select(EventRow).where(EventRow.account_id == account).order_by(EventRow.sequence)
        ).all()
        prev = GENESIS_HASH
        for row in rows:
            row.prev_hash = prev
            row.event_hash = prev = link_hash(prev, _content(row).canonical())
        head = session.get(ChainHead, account)
        assert head is not None
        head.last_hash, head.last_sequence = prev, rows[-1].sequence if rows else 0


def test_a_kept_checkpoint_verifies_while_the_log_only_grows(
    auditor, kept, audit_service, studio, clock
):
    account, _ = studio
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    code, out, _ = auditor("audit", "public-key", "--json")
    verifier = Ed25519Verifier.from_vkey(json.loads(out)["verifier_key"])
    old = open_checkpoint(kept.read_text(), verifier).checkpoint
    record(audit_service.stub, clock, ["k5", "k6"], account=account)
    code, out, _ = auditor("audit", "verify", "--checkpoint", str(kept), "--json")
    assert code == 0 and json.loads(out) == {"ok": True}

    code, out, _ = auditor("audit", "checkpoint", "--json")
    new = open_checkpoint(json.loads(out)["checkpoint"], verifier).checkpoint
    assert (old.size, new.size) == (5, 7)
    code, out, _ = auditor("audit", "consistency", "--from", str(kept), "--json")
    proof = json.loads(out)
    assert code == 0 and (proof["from_size"], proof["to_size"]) == (5, 7)
    verify_consistency(5, 7, old.root, new.root, [base64.b64decode(h) for h in proof["proof"]])
    code, out, _ = auditor("audit", "list", "--json")
    event = json.loads(out)["events"][2]  # its leaf bytes, for the auditor to hash
    code, out, _ = auditor("audit", "prove", str(event["sequence"]), "--json")
    included = json.loads(out)
    assert code == 0 and included["tree_size"] == 7
    verify_inclusion(
        leaf_hash(base64.b64decode(event["leaf"])),
        included["leaf_index"],
        7,
        [base64.b64decode(h) for h in included["proof"]],
        new.root,
    )


def test_an_edited_event_is_caught_even_when_its_chain_was_recomputed(
    auditor, kept, audit_service, studio
):
    account, _ = studio
    db = audit_service.app.db
    with db.write() as session:
        session.execute(
            update(EventRow)
            .where(EventRow.account_id == account, EventRow.sequence == 2)
            .values(media_id="media-innocent")
        )
    rechain(db, account)
    code, out, _ = auditor("audit", "verify")
    assert code == 0  # the hash chain alone is fooled
    code, out, _ = auditor("audit", "verify", "--checkpoint", str(kept), "--json")
    verdict = json.loads(out)
    assert code == 3 and verdict["broken"] == "inclusion"
    assert "event #2 is not in" in verdict["detail"]


def test_deleting_the_newest_events_and_rewinding_every_head_is_caught(
    auditor, kept, audit_service, studio
):
    account, _ = studio
    db = audit_service.app.db
    with db.write() as session:
        session.execute(
            delete(EventRow).where(EventRow.account_id == account, EventRow.sequence > 3)
        )
        mine = TreeNodeRow.account_id == account
        nodes = session.execute(select(TreeNodeRow.level, TreeNodeRow.node_index).where(mine))
        for level, index in nodes.all():
            if (index + 1) << level > 3:  # the node covers a leaf from index 3 on
                session.execute(
                    delete(TreeNodeRow).where(
                        mine, TreeNodeRow.level == level, TreeNodeRow.node_index == index
                    )
                )
        session.execute(
            delete(SignedCheckpointRow).where(SignedCheckpointRow.account_id == account)
        )
    rechain(db, account)
    code, out, _ = auditor("audit", "verify")
    assert code == 0
    code, out, _ = auditor("audit", "verify", "--checkpoint", str(kept), "--json")
    verdict = json.loads(out)
    assert code == 3 and verdict["broken"] == "consistency"
    assert "shrank" in verdict["detail"]


def test_a_log_rewritten_from_scratch_is_caught(auditor, kept, audit_service, studio, clock):
    account, _ = studio
    with audit_service.app.db.write() as session:
        for table in (EventRow, TreeNodeRow, ChainHead, SignedCheckpointRow):
            session.execute(delete(table).where(table.account_id == account))
    record(audit_service.stub, clock, [f"forged-{i}" for i in range(8)], account=account)
    code, out, _ = auditor("audit", "verify")
    assert code == 0
    code, out, _ = auditor("audit", "verify", "--checkpoint", str(kept), "--json")
    verdict = json.loads(out)
    assert code == 3 and verdict["broken"] == "consistency"
    assert "does not extend the kept checkpoint" in verdict["detail"]


def test_a_checkpoint_not_signed_by_the_log_is_refused(auditor, kept, tmp_path):
    forged = tmp_path / "forged.checkpoint"
    text = kept.read_text()
    forged.write_text(text.replace("\n5\n", "\n6\n", 1))
    code, out, _ = auditor("audit", "verify", "--checkpoint", str(forged), "--json")
    assert code == 3 and json.loads(out)["broken"] == "signature"


def test_a_tree_rewound_under_its_signed_checkpoint_is_refused_and_caught(
    auditor, kept, audit_service, studio
):
    account, _ = studio
    with audit_service.app.db.write() as session:
        session.execute(
            delete(TreeNodeRow).where(TreeNodeRow.account_id == account, TreeNodeRow.level == 0)
        )
    code, out, _ = auditor("audit", "verify", "--checkpoint", str(kept), "--json")
    verdict = json.loads(out)
    assert code == 3 and verdict["broken"] == "tree"
    assert "refusing to sign" in verdict["detail"]


def test_an_auditor_verifies_with_the_keys_it_keeps_not_the_one_the_log_serves(
    auditor, kept, audit_service, studio, clock, tmp_path
):
    account, _ = studio
    keys = tmp_path / "log.keys"
    code, out, _ = auditor("audit", "public-key")
    keys.write_text(out)
    code, out, _ = auditor("audit", "verify", "--checkpoint", str(kept), "--key", str(keys))
    assert (code, out) == (0, "audit log extends the kept checkpoint; every event is in it\n")

    # a key of the same name that did not sign the kept checkpoint: one line, exit 3
    other = tmp_path / "other.keys"
    other.write_text(Ed25519Signer.generate(f"{ORIGIN_PREFIX}/{account}").verifier().vkey)
    code, out, _ = auditor("audit", "verify", "--checkpoint", str(kept), "--key", str(other))
    assert code == 3 and len(out.splitlines()) == 1
    assert out.startswith(
        f"audit log does NOT verify: the kept checkpoint does not verify with the keys kept in "
        f"{other}"
    )

    # the log signs with another key from now on (a restart with a new key file does this):
    # the key it serves opens its new checkpoint, the auditor's does not
    audit_service.app.log.signer = LogSigner(Ed25519Signer.generate(ORIGIN_PREFIX))
    record(audit_service.stub, clock, ["k5"], account=account)
    code, out, _ = auditor(
        "audit", "verify", "--checkpoint", str(kept), "--key", str(keys), "--json"
    )
    verdict = json.loads(out)
    assert code == 3 and verdict["broken"] == "signature"
    assert verdict["detail"].startswith("the log's current checkpoint does not verify with")
    # (without --key, the kept checkpoint fails the key the log serves now)
    code, out, _ = auditor("audit", "verify", "--checkpoint", str(kept), "--json")
    verdict = json.loads(out)
    assert code == 3 and verdict["broken"] == "signature"
    assert verdict["detail"].startswith("the kept checkpoint does not verify with the log's key")
    # ... until the auditor adds the new key to the ones it keeps (a rotation)
    code, out, _ = auditor("audit", "public-key")
    keys.write_text(keys.read_text() + out)
    code, out, _ = auditor("audit", "verify", "--checkpoint", str(kept), "--key", str(keys))
    assert code == 0


def test_a_key_file_that_holds_no_key_is_a_usage_error(auditor, kept, tmp_path):
    bad = tmp_path / "bad.keys"
    for content in ("", "not+a+key\n", "\xff"):
        bad.write_text(content, encoding="latin-1")
        code, out, err = auditor("audit", "verify", "--checkpoint", str(kept), "--key", str(bad))
        assert (code, out) == (2, "") and len(err.splitlines()) == 1 and str(bad) in err
    code, _, err = auditor("audit", "verify", "--key", str(bad))
    assert code == 2 and "--checkpoint" in err


def test_a_receipt_verifies_offline_with_the_public_key_alone(
    auditor, kept, studio, tmp_path, capsys
):
    keys, receipt = tmp_path / "log.keys", tmp_path / "event-3.tlog-proof"
    code, out, _ = auditor("audit", "public-key")
    keys.write_text(out)
    code, out, _ = auditor("audit", "prove", "3", "--receipt", "-o", str(receipt))
    assert code == 0 and out == f"receipt of event #3 (leaf 2 of 5) written to {receipt}\n"
    assert stat.S_IMODE(receipt.stat().st_mode) == 0o600
    text = receipt.read_text()
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra ")
    assert text.endswith("\n\n" + kept.read_text())  # the published checkpoint, verbatim
    code, out, _ = auditor("audit", "list", "--json")
    leaves = [event["leaf"] for event in json.loads(out)["events"]]

    def check(*args: str) -> tuple[int, dict]:
        """`mixip audit verify-receipt` with no mesh to ask: the gateway is a closed port."""
        code = main(["--gateway", "127.0.0.1:1", "--json", "audit", "verify-receipt", *args])
        return code, json.loads(capsys.readouterr().out)

    code, verdict = check(str(receipt), "--key", str(keys))
    assert code == 0 and verdict["ok"] and verdict["leaf"] == leaves[2]
    assert (verdict["leaf_index"], verdict["tree_size"], verdict["event"]["sequence"]) == (2, 5, 3)
    assert verdict["event"]["account_id"] == studio[0] and verdict["witnesses"] == []
    assert check(str(receipt), "--key", str(keys), "--leaf", leaves[2])[0] == 0
    code, verdict = check(str(receipt), "--key", str(keys), "--leaf", leaves[3])
    assert code == 3 and verdict["broken"] == "inclusion"

    lines = text.split("\n")
    root = kept.read_text().split("\n")[2]
    tampered = {
        "format": text.replace("tlog-proof@v1", "tlog-proof@v2"),
        "inclusion": text.replace("\nindex 2\n", "\nindex 1\n"),
        "signature": text.replace(f"\n{root}\n", f"\n{base64.b64encode(bytes(32)).decode()}\n"),
    }
    tampered["leaf edited"] = text.replace(lines[1], f"extra {leaves[1]}")
    tampered["hash edited"] = text.replace(lines[3], base64.b64encode(bytes(32)).decode())
    expected = {"leaf edited": "inclusion", "hash edited": "inclusion"}
    for name, changed in tampered.items():
        broken = tmp_path / "broken.tlog-proof"
        broken.write_text(changed)
        code, verdict = check(str(broken), "--key", str(keys))
        assert code == 3 and verdict["ok"] is False, name
        assert verdict["broken"] == expected.get(name, name), verdict

    # another key of the log's name (a forged log): signature; kept beside the real one (a
    # rotation): verifies
    other = Ed25519Signer.generate(f"{ORIGIN_PREFIX}/{studio[0]}").verifier().vkey
    forged = tmp_path / "forged.keys"
    forged.write_text(other + "\n")
    code, verdict = check(str(receipt), "--key", str(forged))
    assert code == 3 and verdict["broken"] == "signature"
    forged.write_text(other + "\n" + keys.read_text())
    assert check(str(receipt), "--key", str(forged))[0] == 0
    # witnesses the auditor requires but who did not cosign
    witness = tmp_path / "witnesses.keys"
    witness.write_text(Cosigner("w.example/w", bytes(32)).verifier().vkey + "\n")
    code, verdict = check(str(receipt), "--key", str(keys), "--witnesses", str(witness))
    assert code == 3 and verdict["broken"] == "witnesses"
    code, _ = check(str(receipt), "--key", str(keys), "--witnesses", str(witness), "--quorum", "0")
    assert code == 0


def test_receipt_usage_errors_exit_2_in_one_line(auditor, kept, tmp_path):
    keys = str(tmp_path / "log.keys")
    code, out, _ = auditor("audit", "public-key")
    Path(keys).write_text(out)
    code, _, err = auditor("audit", "prove", "3", "-o", str(tmp_path / "x"))
    assert code == 2 and "--receipt" in err and not (tmp_path / "x").exists()
    code, _, err = auditor("audit", "prove", "3", "--receipt", "-o", str(tmp_path / "r"))
    assert code == 0
    for args in (
        ("--leaf", "not base64!"),
        ("--quorum", "1"),
        ("--witnesses", keys),  # a log key is not a witness key
    ):
        code, out, err = auditor(
            "audit", "verify-receipt", str(tmp_path / "r"), "--key", keys, *args
        )
        assert (code, out) == (2, "") and len(err.splitlines()) == 1, args
