"""C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint): the note text

    <origin>
    <tree size in decimal, no leading zeroes>
    <base64 root hash>

signed by the log's key (named as the origin) and possibly cosigned by witnesses. Our logs write
no extension lines, so parsing refuses them along with anything else not in that exact form.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mixip.tlog.merkle import HASH_SIZE
from mixip.tlog.note import (
    Note,
    NoteError,
    Signer,
    UnverifiedNoteError,
    Verifier,
    b64decode,
    b64encode,
    open_note,
    sign,
)

_SIZE = re.compile(r"0|[1-9][0-9]*")
MAX_SIZE = 2**63 - 1


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size, and the RFC 9162 root hash at that size."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not self.origin or self.origin != self.origin.strip() or "\n" in self.origin:
            raise NoteError("checkpoint origin must be one non-empty line without outer spaces")
        if not 0 <= self.size <= MAX_SIZE:
            raise NoteError("checkpoint tree size is out of range")
        if len(self.root) != HASH_SIZE:
            raise NoteError("checkpoint root is not a SHA-256 hash")

    @property
    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{b64encode(self.root)}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint in a note text, which must be exactly its three lines."""
        lines = text.split("\n")
        if len(lines) != 4 or lines[3] != "":
            raise NoteError("checkpoint text is not exactly three lines")
        origin, size, root = lines[:3]
        if not _SIZE.fullmatch(size):
            raise NoteError("checkpoint tree size is not a decimal without leading zeroes")
        return cls(origin, int(size), b64decode(root, "checkpoint root"))


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint opened from a verified note, with the note's text kept verbatim."""

    checkpoint: Checkpoint
    note: Note
    witnesses: tuple[str, ...]
    """The names of the witnesses whose cosignatures verified."""


def sign_checkpoint(checkpoint: Checkpoint, log: Signer, *cosigners: Signer) -> str:
    """The checkpoint as a signed note: the log's signature first, then any cosignatures."""
    return sign(checkpoint.text, [log, *cosigners])


def open_checkpoint(
    note: str | bytes,
    log: Verifier,
    witnesses: Sequence[Verifier] = (),
    quorum: int = 0,
) -> SignedCheckpoint:
    """The checkpoint in `note` if the log signed it for its own origin (the log key's name) and
    at least `quorum` of `witnesses` cosigned it; NoteError naming what failed otherwise."""
    opened = open_note(note, [log, *witnesses])
    checkpoint = Checkpoint.parse(opened.text)
    if checkpoint.origin != log.name:
        raise NoteError(f"checkpoint is for log {checkpoint.origin!r}, not {log.name!r}")
    signed = {(s.name, s.key_id) for s in opened.signatures}
    if (log.name, log.key_id) not in signed:
        raise UnverifiedNoteError(f"checkpoint is not signed by the log's key {log.name}")
    cosigned = tuple(w.name for w in witnesses if (w.name, w.key_id) in signed)
    if len(cosigned) < quorum:
        raise UnverifiedNoteError(
            f"checkpoint has {len(cosigned)} witness cosignatures, {quorum} required"
        )
    return SignedCheckpoint(checkpoint, opened, cosigned)
