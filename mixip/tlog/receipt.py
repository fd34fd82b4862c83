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

from mixip.tlog.checkpoint import SignedCheckpoint, open_checkpoint
from mixip.tlog.merkle import HASH_SIZE, leaf_hash
from mixip.tlog.note import NoteError, Verifier, b64decode, b64encode
from mixip.tlog.proof import verify_inclusion

HEADER = "c2sp.org/tlog-proof@v1"
_INDEX = re.compile(r"index (0|[1-9][0-9]*)")


@dataclass(frozen=True)
class Receipt:
    index: int
    proof: tuple[bytes, ...]
    checkpoint: str
    """The signed checkpoint note, verbatim."""
    extra: bytes | None = None
    """Opaque, unauthenticated application data."""

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


def verify_receipt(
    text: str,
    leaf: bytes,
    log: Verifier,
    witnesses: Sequence[Verifier] = (),
    quorum: int = 0,
) -> SignedCheckpoint:
    """That the proof file `text` proves `leaf` (its exact bytes) is in the log whose key is
    `log`, in a checkpoint cosigned by at least `quorum` of `witnesses`. Returns the checkpoint;
    raises NoteError or ProofError (both ValueError) naming what failed."""
    receipt = Receipt.parse(text)
    signed = open_checkpoint(receipt.checkpoint, log, witnesses, quorum)
    tree = signed.checkpoint
    verify_inclusion(leaf_hash(leaf), receipt.index, tree.size, receipt.proof, tree.root)
    return signed
