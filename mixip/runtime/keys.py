"""Key wrapping (envelope encryption) and AES-256-GCM.

A `KeyWrapper` protects data keys under a key-encryption key (KEK): a local key file by default,
AWS KMS in production. Data is encrypted locally with the unwrapped data key, so a KMS call is
needed only to unwrap, not per record.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any, Protocol, cast

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mixip.runtime.files import private_dir

NONCE_BYTES = 12


class SealError(Exception):
    """A key could not be unwrapped or a ciphertext does not authenticate."""


class KeyGone(SealError):
    """The KEK itself no longer exists (its file was unlinked, its KMS key is deleted, pending
    deletion or disabled): what it wrapped can never be opened again. Not raised for a key that
    exists and does not fit (a wrong key directory) nor for a KMS that does not answer."""


# AWS KMS's answers for a key that is gone (deleted, scheduled for deletion, disabled).
_KMS_GONE = frozenset({"NotFoundException", "KMSInvalidStateException", "DisabledException"})


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

    def __init__(self, kms_client: Any, key_id: str) -> None:
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
        return b"K1" + bytes(response["CiphertextBlob"])

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
            gone = _aws_code(exc) in _KMS_GONE
            raise (KeyGone if gone else SealError)(
                f"AWS KMS refused to decrypt: {_aws_code(exc)}"
            ) from exc
        return bytes(response["Plaintext"])


def _aws_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "error"))
    return type(exc).__name__


# -- versioned key-encryption keys ------------------------------------------------------------
# A `KeyRing` makes, opens and destroys KEKs named by a `ref` (a string safe to store: a file
# name, a KMS key ARN). The audit vault wraps each version of its secrets under a KEK of its
# own, so destroying that KEK makes every copy of those wrapped secrets (backups, WAL, replicas)
# unopenable.


class KeyRing(Protocol):
    """Versioned key-encryption keys: one per vault key version."""

    description: str

    def initial_ref(self) -> str:
        """The KEK a vault starts with (the configured key file or KMS key)."""
        ...

    def open(self, ref: str) -> KeyWrapper:
        """The wrapper of an existing KEK; SealError if it is gone."""
        ...

    def create(self, version: int) -> str:
        """Makes a new KEK for `version`, durable before this returns; returns its ref."""
        ...

    def destroy(self, ref: str) -> None:
        """Destroys a KEK (idempotent: destroying a destroyed KEK is no error)."""
        ...

    def sweep(self, keep: str) -> list[str]:
        """Destroys every KEK of this ring it can find except `keep`; returns their refs."""
        ...


class LocalKeyRing:
    """KEK files next to the configured one: `audit-kek.key` (the first), then
    `audit-kek.v2.key`, `audit-kek.v3.key`, ... A file is written and fsynced (file and
    directory) before the version that uses it commits, and unlinked once it is retired."""

    def __init__(self, path: Path) -> None:
        self.directory = path.parent
        self.first = path.name
        stem, dot, suffix = path.name.partition(".")
        self._pattern = re.compile(
            re.escape(stem) + r"(\.v[0-9]+)?" + (re.escape(dot + suffix) if dot else "")
        )
        self._stem, self._suffix = stem, dot + suffix
        self.description = f"local key files {self.directory / self.first} (and versions)"

    def initial_ref(self) -> str:
        LocalKeyWrapper(self.directory / self.first)  # created on first use
        return self.first

    def _path(self, ref: str) -> Path:
        if not self._pattern.fullmatch(ref):
            raise SealError(f"{ref!r} is not a key file of this ring")
        return self.directory / ref

    def open(self, ref: str) -> KeyWrapper:
        path = self._path(ref)
        if not path.exists():
            raise KeyGone(f"key file {path} does not exist")
        return LocalKeyWrapper(path)

    def create(self, version: int) -> str:
        ref = f"{self._stem}.v{version}{self._suffix}"
        path = self._path(ref)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{ref}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)  # a stale file of a crashed attempt is replaced
        self._sync_directory()
        return ref

    def destroy(self, ref: str) -> None:
        self._path(ref).unlink(missing_ok=True)
        self._sync_directory()

    def sweep(self, keep: str) -> list[str]:
        if not self.directory.is_dir():
            return []
        stale = sorted(
            entry.name
            for entry in self.directory.iterdir()
            if entry.name != keep and self._ours(entry.name)
        )
        for name in stale:
            (self.directory / name).unlink(missing_ok=True)
        if stale:
            self._sync_directory()
        return stale

    def _ours(self, name: str) -> bool:
        """A key file of this ring, or the temporary file of one being written."""
        if name.startswith(".") and name.endswith(".tmp"):
            name = name[1:-4]
        return self._pattern.fullmatch(name) is not None

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Tags on the KMS keys a KmsKeyRing creates: what they are for, so an operator can find them.
KMS_PURPOSE_TAG = "mixip:purpose"
KMS_PURPOSE = "audit-vault"


class KmsKeyRing:
    """One AWS KMS key per vault key version. The first is the configured key (which must be
    dedicated to the vault: the first rotation schedules its deletion); each rotation creates a
    new symmetric key and schedules the retired one for deletion after `deletion_window_days`
    (7-30, AWS's limits). KMS keeps a key pending deletion until the window ends; it refuses to
    use it meanwhile, and an administrator can cancel the deletion (see docs/vault.md)."""

    def __init__(
        self,
        kms_client: Any,
        key_id: str,
        *,
        deletion_window_days: int = 7,
        purpose: str = KMS_PURPOSE,
    ) -> None:
        """`purpose`: the vault the keys are for (`<service>-vault`; the audit's is
        `audit-vault`), tagged on every key a rotation creates."""
        if not 7 <= deletion_window_days <= 30:
            raise ValueError("the KMS deletion window is 7-30 days")
        self.kms = kms_client
        self.key_id = key_id
        self.deletion_window_days = deletion_window_days
        self.purpose = purpose
        self.description = f"AWS KMS keys (first {key_id})"

    def initial_ref(self) -> str:
        """The configured key by its ARN: an alias or a bare id names it too, but only the key
        itself can be scheduled for deletion when a rotation retires it."""
        try:
            return str(self.kms.describe_key(KeyId=self.key_id)["KeyMetadata"]["Arn"])
        except (ClientError, BotoCoreError) as exc:
            raise SealError(f"AWS KMS cannot describe {self.key_id}: {_aws_code(exc)}") from exc

    def open(self, ref: str) -> KeyWrapper:
        return KmsKeyWrapper(self.kms, ref)

    def create(self, version: int) -> str:
        try:
            response = self.kms.create_key(
                Description=f"mixip {self.purpose} key-encryption key, version {version}",
                KeyUsage="ENCRYPT_DECRYPT",
                Tags=[
                    {"TagKey": KMS_PURPOSE_TAG, "TagValue": self.purpose},
                    {"TagKey": "mixip:vault-version", "TagValue": str(version)},
                ],
            )
        except (ClientError, BotoCoreError) as exc:
            raise SealError(f"AWS KMS refused to create a key: {_aws_code(exc)}") from exc
        return str(response["KeyMetadata"]["Arn"])

    def destroy(self, ref: str) -> None:
        key_id = ref.split(":key/", 1)[-1]  # the key's id in its ARN (refs are ARNs or ids)
        try:
            self.kms.schedule_key_deletion(
                KeyId=key_id, PendingWindowInDays=self.deletion_window_days
            )
        except ClientError as exc:
            # already pending deletion, or already deleted: destroyed either way
            if _aws_code(exc) not in {"KMSInvalidStateException", "NotFoundException"}:
                raise SealError(f"AWS KMS refused to schedule deletion: {_aws_code(exc)}") from exc
        except BotoCoreError as exc:
            raise SealError(f"AWS KMS refused to schedule deletion: {_aws_code(exc)}") from exc

    def sweep(self, keep: str) -> list[str]:
        # KMS keys are not listed cheaply by purpose; the vault destroys the keys it retires
        # through its own record of them (`retired_kek_ref`), which is what matters. A key made
        # by a rotation that crashed before its commit wrapped nothing that was ever stored.
        return []


def as_key_ring(keys: KeyRing | KeyWrapper) -> KeyRing:
    """A key ring from a ring or from a single-KEK wrapper (the ring's first KEK)."""
    if isinstance(keys, LocalKeyWrapper):
        return LocalKeyRing(keys.path)
    if isinstance(keys, KmsKeyWrapper):
        return KmsKeyRing(keys.kms, keys.key_id)
    return cast(KeyRing, keys)  # not one of the single-KEK wrappers: a ring
