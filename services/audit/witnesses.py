"""Witness cosignatures before a checkpoint is published (docs/audit-log.md#witnesses).

The audit service asks each configured witness (C2SP tlog-witness, e.g. `mixip witness serve`)
to cosign a checkpoint it signed, proving consistency from the size the witness last cosigned,
and publishes the checkpoint only with at least `quorum` verified cosignatures. A witness that
answers 409 names the size it holds; the request is made once more from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mixip.runtime.config import ConfigError
from mixip.tlog.checkpoint import open_checkpoint
from mixip.tlog.cosignature import CosignatureVerifier
from mixip.tlog.note import NoteError, Verifier
from mixip.tlog.witness import WitnessRefused, add_checkpoint

Prove = Callable[[int], Sequence[bytes]]
"""The consistency proof from a tree size to the checkpoint's."""


@dataclass(frozen=True)
class WitnessPeer:
    url: str
    key: CosignatureVerifier


@dataclass(frozen=True)
class Witnessing:
    peers: tuple[WitnessPeer, ...]
    quorum: int
    timeout_seconds: float = 10.0

    @classmethod
    def parse(cls, text: str, quorum: int | None) -> Witnessing:
        """`URL VKEY` pairs separated by commas (MIXIP_AUDIT_WITNESSES) and the quorum
        (MIXIP_AUDIT_WITNESS_QUORUM, default 1 when there are witnesses)."""
        peers = []
        for entry in filter(None, (part.strip() for part in text.split(","))):
            url, _, vkey = entry.partition(" ")
            if not url.startswith(("https://", "http://")) or not vkey.strip():
                raise ConfigError(f"MIXIP_AUDIT_WITNESSES: {entry!r} is not 'URL VKEY'")
            try:
                peers.append(WitnessPeer(url, CosignatureVerifier.from_vkey(vkey.strip())))
            except NoteError as exc:
                raise ConfigError(f"MIXIP_AUDIT_WITNESSES: {entry!r}: {exc}") from None
        needed = (1 if peers else 0) if quorum is None else quorum
        if not 0 <= needed <= len(peers):
            raise ConfigError(
                f"MIXIP_AUDIT_WITNESS_QUORUM={needed} needs 0 to {len(peers)} (the witnesses)"
            )
        return cls(tuple(peers), needed)

    def cosign(
        self, note: str, log: Verifier, old_size: int, prove: Prove
    ) -> tuple[list[str], list[str]]:
        """(the verified cosignature lines of the witnesses that cosigned `note`, asked from
        `old_size`, the last published checkpoint's; why each other witness did not)."""
        lines, refusals = [], []
        for peer in self.peers:
            try:
                lines.append(self._cosign_one(peer, note, log, old_size, prove))
            except (WitnessRefused, OSError, NoteError) as exc:
                refusals.append(f"{peer.url}: {exc}")
        return lines, refusals

    def _cosign_one(
        self, peer: WitnessPeer, note: str, log: Verifier, old_size: int, prove: Prove
    ) -> str:
        for attempt in range(2):
            try:
                answer = add_checkpoint(
                    peer.url, old_size, prove(old_size), note, self.timeout_seconds
                )
            except WitnessRefused as refused:
                known = refused.known_size
                if attempt or known is None or known == old_size:
                    raise
                old_size = known  # the witness holds another size: prove from there
                continue
            opened = open_checkpoint(note + answer, log, [peer.key], quorum=1)
            [line] = [
                s.line
                for s in opened.note.signatures
                if (s.name, s.key_id) == (peer.key.name, peer.key.key_id)
            ]
            return line
        raise AssertionError("unreachable")
