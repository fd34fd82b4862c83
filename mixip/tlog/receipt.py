"""C2SP tlog-proof (https://c2sp.org/tlog-proof): one offline file proving that a leaf is in a
log, verifiable with the log's public key (and witnesses' keys) alone:

    c2sp.org/tlog-proof@v1
    [extra <base64>]
    index <leaf index>
    <base64 inclusion proof hash, one per line, the leaf's sibling first>

    <the signed checkpoint, verbatim, with its cosignatures>
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mixip.tlog.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint
from mixip.tlog.merkle import HASH_SIZE, leaf_hash
from mixip.tlog.note import NoteError, Verifier, b64decode, b64encode
from mixip.tlog.proof import ProofError, verify_inclusion

HEADER = "c2sp.org/tlog-proof@v1"
_INDEX = re.compile(r"index (0|[1-9][0-9]*)")


class ReceiptError(ValueError):
    """A proof file that does not prove what it claims; `part` names what broke:

    - "format": not a C2SP tlog-proof file;
    - "signature": its checkpoint is not one the log's key signed (edited, or another key's);
    - "witnesses": fewer than the quorum of the trusted witnesses cosigned the checkpoint;
    - "leaf": no leaf was given and the file carries none;
    - "inclusion": the proof does not put the leaf at its index in the checkpoint's tree."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class Receipt:
    index: int
    proof: tuple[bytes, ...]
    checkpoint: str
    """The signed checkpoint note, verbatim."""
    extra: bytes | None = None
    """Opaque, unauthenticated application data (the mesh's receipts carry the event's leaf
    bytes, which the inclusion proof then authenticates)."""

    @property
    def text(self) -> str:
        lines = [HEADER]
        if self.extra is not None:
            lines.append(f"extra {b64encode(self.extra)}")
        lines.append(f"index {self.index}")
        lines.extend(b64encode(h) for h in self.proof)
        return "\n".join(lines) + "\n\n" + self.checkpoint

    @classmethod
    def parse(cls, text: str) -> Receipt:
        head, blank, checkpoint = text.partition("\n\n")
        lines = head.split("\n")
        if not blank or lines[0] != HEADER:
            raise NoteError(f"a proof file starts with {HEADER} and has a blank line")
        extra = None
        rest = lines[1:]
        if rest and rest[0].startswith("extra "):
            extra = b64decode(rest.pop(0).removeprefix("extra "), "extra data")
        index = _INDEX.fullmatch(rest[0]) if rest else None
        if index is None:
            raise NoteError("a proof file needs an 'index N' line")
        proof = tuple(b64decode(line, "a proof hash") for line in rest[1:])
        if any(len(h) != HASH_SIZE for h in proof):
            raise NoteError("a proof hash is not a SHA-256 hash")
        return cls(int(index.group(1)), proof, checkpoint, extra)


@dataclass(frozen=True)
class VerifiedReceipt:
    """What a proof file proved: `leaf` (exact bytes) is leaf `index` of `signed`'s tree."""

    index: int
    leaf: bytes
    signed: SignedCheckpoint

    @property
    def checkpoint(self) -> Checkpoint:
        return self.signed.checkpoint


def verify_receipt(
    text: str,
    leaf: bytes | None,
    log: Verifier,
    witnesses: Sequence[Verifier] = (),
    quorum: int = 0,
) -> VerifiedReceipt:
    """That the proof file `text` proves `leaf` (its exact bytes; None: the file's extra data,
    where the mesh's receipts carry their event's leaf) is in the log whose key is `log`, in a
    checkpoint cosigned by at least `quorum` of `witnesses`. Needs nothing but the keys.
    Raises ReceiptError (a ValueError) whose `part` names what broke."""
    try:
        receipt = Receipt.parse(text)
    except NoteError as exc:
        raise ReceiptError("format", f"not a proof file: {exc}") from None
    try:
        open_checkpoint(receipt.checkpoint, log)
    except NoteError as exc:
        raise ReceiptError("signature", f"the checkpoint is not the log's: {exc}") from None
    try:
        signed = open_checkpoint(receipt.checkpoint, log, witnesses, quorum)
    except NoteError as exc:
        raise ReceiptError("witnesses", f"the checkpoint is not witnessed: {exc}") from None
    if leaf is None:
        if receipt.extra is None:
            raise ReceiptError("leaf", "the proof file carries no leaf: give the leaf's bytes")
        leaf = receipt.extra
    tree = signed.checkpoint
    try:
        verify_inclusion(leaf_hash(leaf), receipt.index, tree.size, receipt.proof, tree.root)
    except ProofError as exc:
        raise ReceiptError(
            "inclusion", f"the leaf is not at index {receipt.index} of the checkpoint's tree: {exc}"
        ) from None
    return VerifiedReceipt(receipt.index, leaf, signed)
