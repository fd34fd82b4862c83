"""Key wrapping (envelope encryption) and AES-256-GCM.

A `KeyWrapper` protects data keys under a key-encryption key (KEK): a local key file by default,
AWS KMS in production. Data is encrypted locally with the unwrapped data key, so a KMS call is
needed only to unwrap, not per record.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mixip.runtime.files import private_dir

NONCE_BYTES = 12


class SealError(Exception):
    """A key could not be unwrapped or a ciphertext does not authenticate."""


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: nonce || ciphertext+tag, authenticated together with `aad`."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError) as exc:
        raise SealError("ciphertext does not authenticate (wrong key or tampered data)") from exc


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys under a key-encryption key."""

    description: str

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...


class LocalKeyWrapper:
    """KEK in a local file (32 random bytes, mode 0600), created on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"local key file {path}"
        self._kek = self._load_or_create(path)

    @staticmethod
    def _load_or_create(path: Path) -> bytes:
        if not path.parent.exists():
            private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes()
            if len(key) != 32:
                raise SealError(f"{path} must hold exactly 32 bytes") from None
            return key
        key = os.urandom(32)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        return key

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        return b"L1" + seal(self._kek, data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        if not wrapped.startswith(b"L1"):
            raise SealError("not wrapped by a local key file")
        return open_sealed(self._kek, wrapped[2:], context)


class KmsKeyWrapper:
    """KEK in AWS KMS; the client is passed in (boto3 `kms`), never created here."""

    def __init__(self, kms_client, key_id: str) -> None:
        self.kms = kms_client
        self.key_id = key_id
        self.description = f"AWS KMS key {key_id}"

    @staticmethod
    def _context(context: bytes) -> dict[str, str]:
        return {"mixip": base64.b64encode(context).decode()}

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        try:
            response = self.kms.encrypt(
                KeyId=self.key_id, Plaintext=data_key, EncryptionContext=self._context(context)
            )
        except (ClientError, BotoCoreError) as exc:
            raise SealError(f"AWS KMS refused to encrypt: {_aws_code(exc)}") from exc
        return b"K1" + response["CiphertextBlob"]

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        if not wrapped.startswith(b"K1"):
            raise SealError("not wrapped by AWS KMS")
        try:
            response = self.kms.decrypt(
                CiphertextBlob=wrapped[2:],
                KeyId=self.key_id,
                EncryptionContext=self._context(context),
            )
        except (ClientError, BotoCoreError) as exc:
            raise SealError(f"AWS KMS refused to decrypt: {_aws_code(exc)}") from exc
        return response["Plaintext"]


def _aws_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "error")
    return type(exc).__name__
