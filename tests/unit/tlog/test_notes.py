"""C2SP signed notes, checkpoints, cosignatures and proof files: the published vectors, round
trips, and every refusal a strict parser owes (bad signatures, wrong keys, extra lines, trailing
spaces, non-canonical base64, unknown keys that must never be trusted)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from mixip.tlog.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from mixip.tlog.cosignature import CosignatureVerifier, Cosigner, timestamp
from mixip.tlog.merkle import EMPTY_ROOT, MemoryHashes
from mixip.tlog.note import (
    Ed25519Signer,
    Ed25519Verifier,
    InvalidSignatureError,
    NoteError,
    UnverifiedNoteError,
    b64encode,
    key_id,
    open_note,
    sign,
)
from mixip.tlog.proof import prove_inclusion
from mixip.tlog.receipt import Receipt, ReceiptError, verify_receipt

# The signed-note spec's example (c2sp.org/signed-note).
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n— example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)
# The keys and note of golang.org/x/mod/sumdb/note's tests.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuG"
    "UgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ORIGIN = "mixip.example/audit"


@pytest.fixture(scope="module")
def log() -> Ed25519Signer:
    return Ed25519Signer(ORIGIN, bytes(range(32)))


@pytest.fixture(scope="module")
def witness() -> Cosigner:
    return Cosigner("witness.example/w1", bytes(range(32, 64)), clock=lambda: 1_700_000_000)


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return Checkpoint(ORIGIN, 5, MemoryHashes([b"a", b"b", b"c", b"d", b"e"]).root())


def test_the_spec_example_note_verifies_with_the_spec_example_key():
    verifier = Ed25519Verifier.from_vkey(SPEC_VKEY)
    assert verifier.vkey == SPEC_VKEY
    opened = open_note(SPEC_NOTE, [verifier])
    assert opened.text == "This is an example message.\n"
    assert [(s.name, s.key_id) for s in opened.signatures] == [("example.com/foo", 0x530D903A)]


def test_go_keys_parse_and_sign_the_very_note_go_signs():
    signer = Ed25519Signer.from_skey(GO_SKEY)
    assert signer.skey == GO_SKEY
    assert signer.verifier().vkey == GO_VKEY
    assert sign(GO_TEXT, [signer]) == GO_NOTE
    assert open_note(GO_NOTE.encode(), [Ed25519Verifier.from_vkey(GO_VKEY)]).text == GO_TEXT


def test_the_key_id_hashes_name_newline_type_and_key(log):
    digest = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + log.public_key).digest()
    assert log.key_id == int.from_bytes(digest[:4], "big")
    material = base64.b64encode(bytes([1]) + log.public_key).decode()
    assert log.verifier().vkey == f"{ORIGIN}+{digest[:4].hex()}+{material}"


def test_a_generated_key_round_trips_through_its_texts():
    signer = Ed25519Signer.generate("example.org/k")
    again = Ed25519Signer.from_skey(signer.skey)
    assert again.seed == signer.seed
    assert Ed25519Verifier.from_vkey(signer.verifier().vkey) == signer.verifier()
    assert signer.seed.hex() not in repr(signer)


@pytest.mark.parametrize(
    "vkey",
    [
        SPEC_VKEY.replace("530d903a", "530d903b"),  # the ID of another key
        SPEC_VKEY.replace("530d903a", "530D903A"),  # hex is lowercase
        SPEC_VKEY.replace("530d903a", "530d903"),
        SPEC_VKEY.replace("example.com/foo", "example.com/bar"),  # the ID no longer matches
        SPEC_VKEY.replace("example.com/foo", "example com/foo"),
        SPEC_VKEY.replace("+Aeky", "+Aky"),
        SPEC_VKEY.replace("+Aeky", "+Beky"),  # signature type 0x05
        SPEC_VKEY + "=",
        SPEC_VKEY[:-1] + "l",  # non-canonical trailing bits
        SPEC_VKEY + " ",
        "example.com/foo+530d903a",
        "",
    ],
)
def test_a_malformed_or_inconsistent_verifier_key_is_refused(vkey):
    with pytest.raises(NoteError):
        Ed25519Verifier.from_vkey(vkey)


@pytest.mark.parametrize(
    "skey",
    [
        GO_SKEY.removeprefix("PRIVATE+KEY+"),
        GO_SKEY.replace("c74f20a3", "c74f20a4"),
        GO_SKEY.replace("PeterNeumann", "PeterNeumann2"),
        GO_SKEY.replace("+AYEK", "+AoEK"),  # signature type 0x02
    ],
)
def test_a_malformed_or_inconsistent_signer_key_is_refused(skey):
    with pytest.raises(NoteError):
        Ed25519Signer.from_skey(skey)


def test_a_note_with_no_known_key_is_not_trusted_and_unknown_signatures_are_set_aside(log):
    other = Ed25519Signer("example.org/other", bytes(32))
    note = sign("hello\n", [other, log])
    with pytest.raises(UnverifiedNoteError):
        open_note(note, [Ed25519Verifier.from_vkey(SPEC_VKEY)])
    opened = open_note(note, [log.verifier()])
    assert [s.name for s in opened.signatures] == [ORIGIN]
    assert [s.name for s in opened.unverified] == ["example.org/other"]


def test_a_key_sharing_only_the_name_or_only_the_id_is_unknown_not_a_failure(log):
    note = sign("hello\n", [log])
    same_name = Ed25519Signer(ORIGIN, bytes(32)).verifier()
    with pytest.raises(UnverifiedNoteError):
        open_note(note, [same_name])
    line = note.split("\n\n")[1]
    renamed = note.replace(line, line.replace(ORIGIN, "example.org/x"))
    opened = open_note(renamed + line, [log.verifier()])
    assert [s.name for s in opened.unverified] == ["example.org/x"]


def test_a_bad_signature_from_a_known_key_rejects_the_whole_note(log):
    other = Ed25519Signer("example.org/other", bytes(32))
    good = sign("hello\n", [log, other])
    forged = sign("hellO\n", [log]).split("\n\n")[1]
    mixed = good.replace(good.split("\n\n")[1].split("\n")[0] + "\n", forged)
    with pytest.raises(InvalidSignatureError):
        open_note(mixed, [log.verifier(), other.verifier()])
    with pytest.raises(InvalidSignatureError):
        open_note("hellO\n" + good.removeprefix("hello\n"), [log.verifier()])


@pytest.mark.parametrize(
    "change",
    [
        lambda n: n.replace("\n\n", "\n"),  # no blank line
        lambda n: n[:-1],  # no final newline
        lambda n: n + "\n",  # an empty signature line
        lambda n: n + "extra line\n",
        lambda n: n.replace("— ", "- "),
        lambda n: n.replace("— ", "—  "),
        lambda n: n[:-1] + " \n",  # trailing space
        lambda n: n.replace("\n— ", "\n—\t"),
        lambda n: n.replace("hello", "hel\x00lo"),
        lambda n: n.replace("hello", "hel\rlo"),
        lambda n: n.replace("=\n", "\n"),  # unpadded base64
        lambda n: n.replace("— " + ORIGIN, "— " + ORIGIN + "+1"),
        lambda n: n.replace("— " + ORIGIN + " ", "— " + ORIGIN + " AAAA"),
        lambda n: n.split("— ")[0] + "— " + ORIGIN + " AAAAAA==\n",  # key ID and no signature
    ],
)
def test_a_malformed_note_is_refused(log, change):
    note = sign("hello\n", [log])
    with pytest.raises(NoteError):
        open_note(change(note), [log.verifier()])


def test_non_canonical_base64_in_a_signature_is_refused(log):
    note = sign("hello\n", [log])
    encoded = note.split(" ")[-1].strip()
    raw = base64.b64decode(encoded)
    assert len(raw) % 3 == 2  # 68 bytes: the last character carries two unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    sloppy = encoded[:-2] + alphabet[alphabet.index(encoded[-2]) | 1] + "="
    assert base64.b64decode(sloppy) == raw
    with pytest.raises(NoteError, match="canonical"):
        open_note(note.replace(encoded, sloppy), [log.verifier()])


def test_invalid_utf8_and_too_many_signatures_are_refused(log):
    with pytest.raises(NoteError, match="UTF-8"):
        open_note(b"\xff\n\n" + sign("x\n", [log]).encode().split(b"\n\n")[1], [log.verifier()])
    line = sign("hello\n", [log]).split("\n\n")[1]
    with pytest.raises(NoteError, match="more than 100"):
        open_note("hello\n\n" + line * 101, [log.verifier()])
    assert open_note("hello\n\n" + line * 16, [log.verifier()]).text == "hello\n"


def test_signing_refuses_a_text_without_final_newline_or_a_bad_key_name(log):
    with pytest.raises(NoteError):
        sign("hello", [log])
    with pytest.raises(NoteError):
        Ed25519Signer("two words", bytes(32))
    with pytest.raises(NoteError):
        Ed25519Signer("a+b", bytes(32))


def test_a_checkpoint_is_three_lines_signed_by_the_log(log, checkpoint):
    note = sign_checkpoint(checkpoint, log)
    root = base64.b64encode(checkpoint.root).decode()
    assert note.startswith(f"{ORIGIN}\n5\n{root}\n\n— {ORIGIN} ")
    opened = open_checkpoint(note, log.verifier())
    assert opened.checkpoint == checkpoint
    assert opened.witnesses == ()


@pytest.mark.parametrize(
    "text",
    [
        f"{ORIGIN}\n5\n{base64.b64encode(EMPTY_ROOT).decode()}\nextension\n",
        f"{ORIGIN}\n05\n{base64.b64encode(EMPTY_ROOT).decode()}\n",
        f"{ORIGIN}\n+5\n{base64.b64encode(EMPTY_ROOT).decode()}\n",
        f"{ORIGIN}\n5 \n{base64.b64encode(EMPTY_ROOT).decode()}\n",
        f"{ORIGIN}\n\u0665\n{base64.b64encode(EMPTY_ROOT).decode()}\n",  # an Arabic-Indic five
        f"{ORIGIN}\n{2**63}\n{base64.b64encode(EMPTY_ROOT).decode()}\n",
        f"{ORIGIN}\n5\n{base64.b64encode(EMPTY_ROOT[:31]).decode()}\n",
        f"{ORIGIN}\n5\n{base64.b64encode(EMPTY_ROOT).decode()} \n",
        f"{ORIGIN} \n5\n{base64.b64encode(EMPTY_ROOT).decode()}\n",
        f"\n5\n{base64.b64encode(EMPTY_ROOT).decode()}\n",
        f"{ORIGIN}\n5\n",
    ],
)
def test_a_checkpoint_text_not_exactly_in_form_is_refused(text):
    with pytest.raises(NoteError):
        Checkpoint.parse(text)


def test_a_checkpoint_of_another_log_or_without_the_log_signature_is_refused(log, checkpoint):
    other = Ed25519Signer("mixip.example/other", bytes(32))
    with pytest.raises(NoteError, match="for log"):
        open_checkpoint(sign_checkpoint(checkpoint, other), other.verifier())
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(sign_checkpoint(checkpoint, other), log.verifier())


def test_a_witness_cosignature_signs_the_header_the_time_and_the_checkpoint(
    log, witness, checkpoint
):
    note = sign_checkpoint(checkpoint, log, witness)
    opened = open_checkpoint(note, log.verifier(), [witness.verifier()], quorum=1)
    assert opened.witnesses == ("witness.example/w1",)
    [cosignature] = [s for s in opened.note.signatures if s.name == witness.name]
    assert timestamp(cosignature) == 1_700_000_000
    message = b"cosignature/v1\ntime 1700000000\n" + checkpoint.text.encode()
    Ed25519PrivateKey.from_private_bytes(witness.seed).public_key().verify(
        cosignature.signature[8:], message
    )
    assert witness.key_id == key_id(witness.name, 0x04, witness.public_key)
    assert CosignatureVerifier.from_vkey(witness.verifier().vkey) == witness.verifier()


def test_a_witness_adds_its_cosignature_to_a_note_the_log_signed(log, witness, checkpoint):
    opened = open_checkpoint(sign_checkpoint(checkpoint, log), log.verifier()).note
    cosigned = sign(opened.text, [witness], keep=opened.signatures)
    assert cosigned == sign_checkpoint(checkpoint, log, witness)
    assert open_checkpoint(cosigned, log.verifier(), [witness.verifier()], 1).witnesses == (
        witness.name,
    )


def test_a_missing_quorum_or_a_witness_key_used_as_a_log_key_is_refused(log, witness, checkpoint):
    note = sign_checkpoint(checkpoint, log)
    with pytest.raises(UnverifiedNoteError, match="0 witness cosignatures, 1 required"):
        open_checkpoint(note, log.verifier(), [witness.verifier()], quorum=1)
    cosigned = sign_checkpoint(checkpoint, log, witness)
    as_log_key = Ed25519Verifier(witness.name, witness.public_key)
    with pytest.raises(UnverifiedNoteError):  # type 0x01 and 0x04 key IDs differ
        open_note(cosigned.replace(f"— {ORIGIN} ", "— x.example/gone "), [as_log_key])
    later = Cosigner(witness.name, witness.seed, clock=lambda: 1_700_000_001)
    [line] = [s for s in sign(checkpoint.text, [later]).split("\n") if s.startswith("— ")]
    [good] = [s for s in cosigned.split("\n") if s.startswith(f"— {witness.name}")]
    moved = base64.b64decode(line.split(" ")[-1])[:12] + base64.b64decode(good.split(" ")[-1])[12:]
    tampered = cosigned.replace(good, f"— {witness.name} {base64.b64encode(moved).decode()}")
    with pytest.raises(InvalidSignatureError):  # the time is signed
        open_checkpoint(tampered, log.verifier(), [witness.verifier()])


def test_a_proof_file_round_trips_and_verifies_with_the_keys_alone(log, witness):
    leaves = [f"event {i}".encode() for i in range(11)]
    tree = MemoryHashes(leaves)
    checkpoint = Checkpoint(ORIGIN, 11, tree.root())
    note = sign_checkpoint(checkpoint, log, witness)
    receipt = Receipt(7, tuple(prove_inclusion(tree, 7, 11)), note, extra=b"ctx")
    text = receipt.text
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra Y3R4\nindex 7\n")
    assert text.endswith("\n\n" + note)
    assert Receipt.parse(text) == receipt
    verified = verify_receipt(text, leaves[7], log.verifier(), [witness.verifier()], quorum=1)
    assert (verified.checkpoint, verified.index, verified.leaf) == (checkpoint, 7, leaves[7])
    assert verified.signed.witnesses == (witness.name,)
    without_extra = Receipt(7, receipt.proof, note).text
    assert verify_receipt(without_extra, leaves[7], log.verifier()).checkpoint.size == 11
    carried = Receipt(7, receipt.proof, note, extra=leaves[7]).text  # the mesh's receipts
    assert verify_receipt(carried, None, log.verifier()).leaf == leaves[7]
    broken = {
        "leaf": lambda: verify_receipt(without_extra, None, log.verifier()),
        "inclusion": lambda: verify_receipt(text, leaves[6], log.verifier()),
        "signature": lambda: verify_receipt(text, leaves[7], witness.verifier()),
        "witnesses": lambda: verify_receipt(
            text, leaves[7], log.verifier(), [witness.verifier()], quorum=2
        ),
    }
    for part, verify in broken.items():
        with pytest.raises(ReceiptError) as caught:
            verify()
        assert caught.value.part == part
    for tampered in (
        text.replace("index 7", "index 6"),
        carried.replace(f"extra {b64encode(leaves[7])}", f"extra {b64encode(leaves[6])}"),
        Receipt(7, receipt.proof[:-1], note).text,
        Receipt(7, (bytes(32), *receipt.proof[1:]), note).text,
    ):
        with pytest.raises(ReceiptError) as caught:
            verify_receipt(tampered, None if "extra" in tampered else leaves[7], log.verifier())
        assert caught.value.part == "inclusion"
    edited = text.replace(b64encode(tree.root()), b64encode(bytes(32)))  # the checkpoint's root
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(edited, leaves[7], log.verifier())
    assert caught.value.part == "signature"


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.replace("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2"),
        lambda t: t.replace("index 7", "index 07"),
        lambda t: t.replace("index 7", "index  7"),
        lambda t: t.replace("index 7\n", ""),
        lambda t: t.replace("extra Y3R4", "extra Y3R4="),
        lambda t: t.replace("index 7\n", "index 7\n\n", 1),
        lambda t: t.replace("index 7\n", "index 7\nAAAA\n"),
        lambda t: t.replace("\n\n", "\n"),
    ],
)
def test_a_malformed_proof_file_is_refused(log, change):
    tree = MemoryHashes([b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"])
    note = sign_checkpoint(Checkpoint(ORIGIN, 8, tree.root()), log)
    text = Receipt(7, tuple(prove_inclusion(tree, 7, 8)), note, extra=b"ctx").text
    assert verify_receipt(text, b"h", log.verifier())
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(change(text), b"h", log.verifier())
    assert caught.value.part in ("format", "signature", "inclusion")


@settings(max_examples=50, deadline=None)
@given(
    text=st.lists(
        st.text(st.characters(blacklist_categories=["Cc", "Cs"]), min_size=0, max_size=20),
        min_size=1,
        max_size=4,
    ),
    name=st.text(
        st.characters(
            blacklist_categories=["Cc", "Cs", "Zs", "Zl", "Zp"], blacklist_characters="+"
        ),
        min_size=1,
        max_size=12,
    ).filter(lambda n: not any(c.isspace() for c in n)),
)
def test_any_text_signed_by_any_named_key_opens_to_itself(text, name):
    body = "\n".join(text) + "\n"
    signer = Ed25519Signer(name, hashlib.sha256(name.encode()).digest())
    opened = open_note(sign(body, [signer]), [Ed25519Verifier.from_vkey(signer.verifier().vkey)])
    assert opened.text == body
