"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys, in the text formats of Go's
golang.org/x/mod/sumdb/note: signature lines `— <name> base64(key ID || signature)`, verifier
keys `<name>+<hex key ID>+base64(0x01 || public key)`, signer keys
`PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || seed)`.

Parsing is strict: UTF-8 without control characters but newline, canonical base64, names
without spaces or `+`. Signatures from unknown keys are kept aside, never trusted; every
signature from a known key is verified and one that fails rejects the whole note; a note with
no verified signature is rejected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519 = 0x01
"""The signature type byte of Ed25519 note signatures."""
MAX_SIGNATURES = 100
"""Signature lines accepted in one note (the spec asks for at least 16; Go allows 100)."""
_HEX_ID = re.compile(r"[0-9a-f]{8}")
_SIGNATURE_PREFIX = "— "


class NoteError(ValueError):
    """A malformed note or key."""


class UnverifiedNoteError(NoteError):
    """No signature from a known key: the text must not be trusted."""


class InvalidSignatureError(NoteError):
    """A known key's signature does not verify."""


def b64decode(text: str, what: str) -> bytes:
    """Standard base64 (RFC 4648 section 4) in its one canonical spelling, or NoteError."""
    try:
        value = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise NoteError(f"{what} is not base64") from None
    if base64.b64encode(value).decode() != text:
        raise NoteError(f"{what} is not canonical base64")
    return value


def b64encode(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def valid_name(name: str) -> bool:
    """A key name: non-empty, no Unicode space, no `+`."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def key_id(name: str, algorithm: int, public_key: bytes) -> int:
    """SHA-256(name || 0x0A || algorithm || public key)[:4], big-endian."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([algorithm]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def parse_key(text: str, algorithm: int, what: str) -> tuple[str, int, bytes]:
    """`<name>+<hex key ID>+base64(algorithm || 32-byte key)`: name, key ID and key."""
    name, _, rest = text.partition("+")
    hex_id, _, encoded = rest.partition("+")
    if not valid_name(name) or not _HEX_ID.fullmatch(hex_id):
        raise NoteError(f"{what} is not <name>+<8 hex digits>+<base64>")
    material = b64decode(encoded, what)
    if len(material) != 33 or material[0] != algorithm:
        raise NoteError(f"{what} is not a type {algorithm:#04x} Ed25519 key")
    return name, int(hex_id, 16), material[1:]


def format_key(name: str, identifier: int, algorithm: int, key: bytes) -> str:
    return f"{name}+{identifier:08x}+{b64encode(bytes([algorithm]) + key)}"


class Verifier(Protocol):
    """A key that verifies note signatures (a log's, or a witness's cosignatures)."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether `signature` (without its key ID) signs the note text `text`."""
        ...


class Signer(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def sign(self, text: bytes) -> bytes:
        """The signature of the note text `text` (without the key ID)."""
        ...


@dataclass(frozen=True)
class Ed25519Verifier:
    """An Ed25519 note verifier key."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        if not valid_name(self.name) or len(self.public_key) != 32:
            raise NoteError("a verifier needs a valid name and a 32-byte Ed25519 public key")

    @property
    def key_id(self) -> int:
        return key_id(self.name, ED25519, self.public_key)

    @property
    def vkey(self) -> str:
        """The verifier key text, `<name>+<hex key ID>+base64(0x01 || public key)`."""
        return format_key(self.name, self.key_id, ED25519, self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Ed25519Verifier:
        name, identifier, public_key = parse_key(vkey, ED25519, "verifier key")
        verifier = cls(name, public_key)
        if verifier.key_id != identifier:
            raise NoteError("verifier key: the key ID does not match the key")
        return verifier

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Ed25519Signer:
    """An Ed25519 note signer key (the seed is secret)."""

    name: str
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not valid_name(self.name) or len(self.seed) != 32:
            raise NoteError("a signer needs a valid name and a 32-byte Ed25519 seed")

    @classmethod
    def generate(cls, name: str) -> Ed25519Signer:
        private = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return cls(name, private)

    @classmethod
    def from_skey(cls, skey: str) -> Ed25519Signer:
        """Parses `PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || seed)`."""
        if not skey.startswith("PRIVATE+KEY+"):
            raise NoteError("signer key does not start with PRIVATE+KEY+")
        name, identifier, seed = parse_key(skey.removeprefix("PRIVATE+KEY+"), ED25519, "signer key")
        signer = cls(name, seed)
        if signer.key_id != identifier:
            raise NoteError("signer key: the key ID does not match the key")
        return signer

    @property
    def public_key(self) -> bytes:
        return (
            self._private()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    @property
    def key_id(self) -> int:
        return key_id(self.name, ED25519, self.public_key)

    @property
    def skey(self) -> str:
        return "PRIVATE+KEY+" + format_key(self.name, self.key_id, ED25519, self.seed)

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier(self.name, self.public_key)

    def sign(self, text: bytes) -> bytes:
        return self._private().sign(text)

    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)


@dataclass(frozen=True)
class Signature:
    """One signature line: the key's name and ID and the signature bytes after the ID."""

    name: str
    key_id: int
    signature: bytes

    @property
    def line(self) -> str:
        raw = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_SIGNATURE_PREFIX}{self.name} {b64encode(raw)}\n"


@dataclass(frozen=True)
class Note:
    """An opened note: its text (ending in a newline), the signatures that verified with a known
    key, and those from unknown keys (kept, never trusted)."""

    text: str
    signatures: tuple[Signature, ...]
    unverified: tuple[Signature, ...]


def sign(text: str, signers: Sequence[Signer], keep: Iterable[Signature] = ()) -> str:
    """The signed note: `text`, a blank line, the `keep` signatures (a note's existing ones),
    then one line per signer."""
    if not text.endswith("\n"):
        raise NoteError("note text must end in a newline")
    _check_characters(text)
    if not signers and not keep:
        raise NoteError("a note needs at least one signature")
    lines = [s.line for s in keep]
    for signer in signers:
        if not valid_name(signer.name):
            raise NoteError(f"invalid key name {signer.name!r}")
        signature = Signature(signer.name, signer.key_id, signer.sign(text.encode()))
        lines.append(signature.line)
    return text + "\n" + "".join(lines)


def open_note(note: str | bytes, known: Iterable[Verifier]) -> Note:
    """Parses and verifies a signed note against the `known` verifiers; NoteError (or its
    UnverifiedNoteError, InvalidSignatureError) if it is malformed or not to be trusted."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not UTF-8") from None
    _check_characters(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("note does not end in a signature line and a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    keys: dict[tuple[str, int], list[Verifier]] = {}
    for verifier in known:
        keys.setdefault((verifier.name, verifier.key_id), []).append(verifier)
    verified: list[Signature] = []
    unverified: list[Signature] = []
    for line in lines:
        signature = _parse_signature_line(line)
        candidates = keys.get((signature.name, signature.key_id), [])
        if not candidates:
            if signature not in unverified:
                unverified.append(signature)
            continue
        if len(candidates) > 1:
            raise NoteError(f"ambiguous key {signature.name}+{signature.key_id:08x}")
        if not candidates[0].verify(text.encode(), signature.signature):
            raise InvalidSignatureError(
                f"invalid signature for key {signature.name}+{signature.key_id:08x}"
            )
        if signature not in verified:
            verified.append(signature)
    if not verified:
        raise UnverifiedNoteError("note has no signature from a known key")
    return Note(text, tuple(verified), tuple(unverified))


def _parse_signature_line(line: str) -> Signature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError("a signature line does not start with '— '")
    name, _, encoded = line.removeprefix(_SIGNATURE_PREFIX).partition(" ")
    if not valid_name(name):
        raise NoteError("a signature line has an invalid key name")
    raw = b64decode(encoded, "a signature")
    if len(raw) < 5:
        raise NoteError("a signature is shorter than its key ID and one byte")
    return Signature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def _check_characters(text: str) -> None:
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("note contains a control character")
