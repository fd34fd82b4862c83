"""Encrypted storage of uploaded media (the customer's content).

- `LocalEncryptedStore` (embedded default): one file per object in a local directory,
  AES-256-GCM under a fresh per-object data key that is wrapped by the key-encryption key.
  Object names are random, so the directory reveals nothing about accounts or files.
- `S3Store` (production): S3 with server-side encryption under a KMS key (SSE-KMS).

Both bind each object to its account: reading it under another account fails.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from mixip.runtime.files import private_dir
from mixip.runtime.keys import KeyWrapper, SealError, open_sealed, seal

_MAGIC = b"MXM1"


class StorageError(Exception):
    """An object is missing, or does not decrypt for this account."""


class MediaStore(Protocol):
    description: str

    def put(self, account_id: str, data: bytes) -> str:
        """Stores `data`; returns the object's key (random, meaningless)."""
        ...

    def get(self, account_id: str, key: str) -> bytes: ...

    def delete(self, account_id: str, key: str) -> None:
        """Idempotent."""
        ...

    def stale_keys(self, before: datetime) -> Iterator[tuple[str, str]]:
        """(account id or "", key) of every object last written before `before`."""
        ...


def _object_key() -> str:
    return secrets.token_hex(16)


class LocalEncryptedStore:
    def __init__(self, root: Path, wrapper: KeyWrapper) -> None:
        self.root = root
        self.wrapper = wrapper
        self.description = f"encrypted directory {root} (KEK: {wrapper.description})"
        private_dir(root)

    def _path(self, key: str) -> Path:
        if len(key) != 32 or not all(c in "0123456789abcdef" for c in key):
            raise StorageError("not an object key of this store")
        return self.root / key[:2] / key

    @staticmethod
    def _aad(account_id: str, key: str) -> bytes:
        return f"mixip-media\x00{account_id}\x00{key}".encode()

    def put(self, account_id: str, data: bytes) -> str:
        key = _object_key()
        aad = self._aad(account_id, key)
        data_key = secrets.token_bytes(32)
        wrapped = self.wrapper.wrap(data_key, aad)
        blob = _MAGIC + struct.pack(">H", len(wrapped)) + wrapped + seal(data_key, data, aad)
        path = self._path(key)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        temporary = path.with_suffix(".part")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)  # readers never see half an object
        return key

    def get(self, account_id: str, key: str) -> bytes:
        try:
            blob = self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError("no such object") from None
        if not blob.startswith(_MAGIC) or len(blob) < 6:
            raise StorageError("not an object of this store")
        (length,) = struct.unpack(">H", blob[4:6])
        aad = self._aad(account_id, key)
        try:
            data_key = self.wrapper.unwrap(blob[6 : 6 + length], aad)
            return open_sealed(data_key, blob[6 + length :], aad)
        except SealError as exc:
            raise StorageError("object does not decrypt for this account") from exc

    def delete(self, account_id: str, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def stale_keys(self, before: datetime) -> Iterator[tuple[str, str]]:
        for path in self.root.glob("??/*"):
            if len(path.name) == 32 and path.stat().st_mtime < before.timestamp():
                yield "", path.name  # the file name does not say whose it is, by design


class S3Store:
    """S3 with SSE-KMS; the boto3 client is passed in, never created here."""

    def __init__(self, client: Any, bucket: str, kms_key_id: str, prefix: str = "media/") -> None:
        self.s3 = client
        self.bucket = bucket
        self.kms_key_id = kms_key_id
        self.prefix = prefix
        self.description = f"s3://{bucket}/{prefix} (SSE-KMS {kms_key_id})"

    def _key(self, account_id: str, key: str) -> str:
        # Grouped by the (opaque) account id so an account's media can be found and removed
        # together; the client's file name never appears.
        return f"{self.prefix}{account_id}/{key}"

    def put(self, account_id: str, data: bytes) -> str:
        key = _object_key()
        self.s3.put_object(
            Bucket=self.bucket,
            Key=self._key(account_id, key),
            Body=data,
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=self.kms_key_id,
        )
        return key

    def get(self, account_id: str, key: str) -> bytes:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self._key(account_id, key))
        except self.s3.exceptions.NoSuchKey:
            raise StorageError("no such object") from None
        data: bytes = response["Body"].read()
        return data

    def delete(self, account_id: str, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(account_id, key))

    def stale_keys(self, before: datetime) -> Iterator[tuple[str, str]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                account_id, _, key = item["Key"].removeprefix(self.prefix).partition("/")
                if key and item["LastModified"] < before:
                    yield account_id, key
