"""Streaming authenticated encryption: the STREAM construction over AES-256-GCM.

STREAM (Hoang, Reyhanitabar, Rogaway and Vizár, "Online Authenticated-Encryption and its
Nonce-Reuse Misuse-Resistance", CRYPTO 2015; the construction Tink's AES-GCM-HKDF streaming
AEAD and age's payload use) cuts a plaintext into segments and seals each one on its own with
the nonce

    nonce prefix (7 bytes, random per object) || segment counter (4 bytes) || last flag (1 byte)

so that a segment moved to another position (reordering), a segment of another object, or a
stream cut at a segment boundary (truncation: the new last segment was sealed without the last
flag) fails to authenticate. Every segment but the last holds exactly `segment_bytes` of
plaintext; the last holds 0 to `segment_bytes`. A stream can therefore be written a segment at a
time and read (and sought) a segment at a time, with one segment in memory.

Why written here: none of the libraries in requirements/*.lock ships a streaming AEAD. Tink
(`tink` on PyPI) has one, but it is not in the locks and brings protobuf and a native extension
of its own; `cryptography` offers AES-GCM and nothing streaming. The construction is a few lines
over `cryptography`'s AESGCM, and the tests pin its properties (tampering, truncation,
reordering and extension are refused).

A segment number must never be sealed twice with different plaintexts under one key (GCM's
nonce rule): writers append each segment once and resume after the last complete one.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_PREFIX_BYTES = 7
TAG_BYTES = 16
MAX_SEGMENTS = 2**32


class StreamError(Exception):
    """A segment does not authenticate: tampered, truncated, reordered, or another key."""


class Stream:
    """The segments of one object: its data key, nonce prefix, segment size and AAD."""

    def __init__(self, key: bytes, nonce_prefix: bytes, segment_bytes: int, aad: bytes) -> None:
        if len(nonce_prefix) != NONCE_PREFIX_BYTES or segment_bytes < 1:
            raise ValueError("a nonce prefix of 7 bytes and a positive segment size")
        self.aead = AESGCM(key)
        self.prefix = nonce_prefix
        self.segment_bytes = segment_bytes
        self.aad = aad

    def _nonce(self, index: int, last: bool) -> bytes:
        if not 0 <= index < MAX_SEGMENTS:
            raise ValueError("segment counter out of range")
        return self.prefix + struct.pack(">IB", index, 1 if last else 0)

    def seal(self, index: int, plaintext: bytes, last: bool) -> bytes:
        if len(plaintext) > self.segment_bytes or (
            not last and len(plaintext) != self.segment_bytes
        ):
            raise ValueError("every segment but the last holds exactly segment_bytes")
        return self.aead.encrypt(self._nonce(index, last), plaintext, self.aad)

    def open(self, index: int, ciphertext: bytes, last: bool) -> bytes:
        try:
            return self.aead.decrypt(self._nonce(index, last), ciphertext, self.aad)
        except (InvalidTag, ValueError) as exc:
            raise StreamError(f"segment {index} does not authenticate") from exc

    # -- the layout of a sealed stream: segments back to back ------------------------------

    @property
    def sealed_segment_bytes(self) -> int:
        return self.segment_bytes + TAG_BYTES

    def segments(self, sealed_length: int) -> int:
        """How many segments a complete sealed stream of `sealed_length` bytes has (at least
        one: an empty plaintext is one empty last segment)."""
        if sealed_length < TAG_BYTES:
            raise StreamError("truncated: not even one segment")
        return -(-sealed_length // self.sealed_segment_bytes)

    def plaintext_length(self, sealed_length: int) -> int:
        return sealed_length - self.segments(sealed_length) * TAG_BYTES

    def sealed_length(self, plaintext_length: int) -> int:
        """The sealed length of a complete stream of `plaintext_length` bytes."""
        return plaintext_length + self.segment_count(plaintext_length) * TAG_BYTES

    def segment_count(self, plaintext_length: int) -> int:
        return max(1, -(-plaintext_length // self.segment_bytes))
