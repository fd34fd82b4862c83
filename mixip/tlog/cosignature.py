"""C2SP tlog-cosignature `cosignature/v1` (https://c2sp.org/tlog-cosignature): a witness's
Ed25519 signature, as a note signature line on a checkpoint, over

    cosignature/v1
    time <POSIX seconds>
    <the checkpoint's note text>

The signature bytes are the 8-byte big-endian timestamp then the 64-byte Ed25519 signature; the
key ID uses signature type 0x04, so a witness key never verifies as a log key or the reverse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mixip.tlog.note import (
    Ed25519Signer,
    NoteError,
    Signature,
    format_key,
    key_id,
    parse_key,
    valid_name,
)

COSIGNATURE_V1 = 0x04
"""The signature type byte of timestamped Ed25519 checkpoint cosignatures."""
MAX_TIMESTAMP = 2**63 - 1


def signed_message(text: bytes, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: the header line, the time line, the checkpoint text."""
    return b"cosignature/v1\ntime %d\n" % timestamp + text


@dataclass(frozen=True)
class CosignatureVerifier:
    """A witness's public key, verifying cosignature/v1 signature lines."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        if not valid_name(self.name) or len(self.public_key) != 32:
            raise NoteError("a witness key needs a valid name and a 32-byte Ed25519 public key")

    @property
    def key_id(self) -> int:
        return key_id(self.name, COSIGNATURE_V1, self.public_key)

    @property
    def vkey(self) -> str:
        """`<name>+<hex key ID>+base64(0x04 || public key)`."""
        return format_key(self.name, self.key_id, COSIGNATURE_V1, self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        name, identifier, public_key = parse_key(vkey, COSIGNATURE_V1, "witness key")
        verifier = cls(name, public_key)
        if verifier.key_id != identifier:
            raise NoteError("witness key: the key ID does not match the key")
        return verifier

    def verify(self, text: bytes, signature: bytes) -> bool:
        if len(signature) != 8 + 64:
            return False
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                signature[8:], signed_message(text, timestamp)
            )
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Cosigner:
    """A witness's signing key: cosigns checkpoint texts at the clock's time."""

    name: str
    seed: bytes = field(repr=False)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        Ed25519Signer(self.name, self.seed)  # the same name and seed rules

    @property
    def public_key(self) -> bytes:
        return Ed25519Signer(self.name, self.seed).public_key

    @property
    def key_id(self) -> int:
        return key_id(self.name, COSIGNATURE_V1, self.public_key)

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.public_key)

    def sign(self, text: bytes) -> bytes:
        timestamp = int(self.clock())
        signature = Ed25519PrivateKey.from_private_bytes(self.seed).sign(
            signed_message(text, timestamp)
        )
        return timestamp.to_bytes(8, "big") + signature


def timestamp(signature: Signature) -> int:
    """The time a cosignature/v1 line says it was made (meaningful once verified)."""
    return int.from_bytes(signature.signature[:8], "big")
