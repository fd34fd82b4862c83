"""Encrypted storage of uploaded media (the customer's content).

- `LocalEncryptedStore` (embedded default): one file per object in a local directory, sealed
  with the STREAM construction over AES-256-GCM (mixip/runtime/streaming_aead.py) under a fresh
  per-object data key that is wrapped by the key-encryption key. Object names are random, so the
  directory reveals nothing about accounts or files. Objects written before streaming (format
  MXM1: one AES-GCM blob) stay readable.
- `S3Store` (production): S3 with server-side encryption under a KMS key (SSE-KMS).

Both bind each object to its account: reading it under another account fails. Both write an
object either at once (`put`) or a part at a time (`begin`, `writer`, `complete`: a resumable
upload session, gateway/upload_sessions.py), each part durable when `write` returns, and both
read an object as a stream (`open`: a seekable file-like object holding one segment or one
network buffer, never the whole media).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from mixip.runtime.files import private_dir
from mixip.runtime.keys import KeyWrapper, SealError, open_sealed
from mixip.runtime.limits import MiB
from mixip.runtime.streaming_aead import NONCE_PREFIX_BYTES, Stream, StreamError
from mixip.runtime.telemetry import step

_MAGIC = b"MXM1"  # before streaming: magic, wrapped key, one AES-GCM blob (read only)
_STREAM_MAGIC = b"MXM2"  # magic, wrapped key, nonce prefix, segment size, STREAM segments
SEGMENT_BYTES = 1 * MiB
S3_PART_BYTES = 8 * MiB  # S3 refuses parts under 5 MiB but the last


class StorageError(Exception):
    """An object is missing, or does not decrypt for this account."""


class StorageBusy(StorageError):
    """Another writer holds the object being uploaded."""


class PartWriter(Protocol):
    """Appends the parts of one object under upload; `parts` of them are durable."""

    parts: int
    part_bytes: int  # every part but the last holds exactly this many bytes

    def write(self, data: bytes, last: bool) -> None:
        """Appends part number `parts` (the last one when `last`); durable when it returns."""
        ...

    def close(self) -> None: ...


class MediaStore(Protocol):
    description: str

    def put(self, account_id: str, data: bytes) -> str:
        """Stores `data`; returns the object's key (random, meaningless)."""
        ...

    def get(self, account_id: str, key: str) -> bytes: ...

    def open(self, account_id: str, key: str) -> BinaryIO:
        """The object's plaintext as a seekable stream (one segment or buffer in memory); a
        tampered or truncated object raises StorageError when the bad part is read."""
        ...

    def delete(self, account_id: str, key: str) -> None:
        """Idempotent."""
        ...

    def stale_keys(self, before: datetime) -> Iterator[tuple[str, str]]:
        """(account id or "", key) of every object last written before `before`."""
        ...

    def begin(self, account_id: str) -> tuple[str, str]:
        """Starts an object written a part at a time: (its key, the store's upload id)."""
        ...

    def writer(self, account_id: str, key: str, upload_id: str, size: int) -> PartWriter:
        """A writer resuming after the last durable part of an object of `size` bytes
        (StorageBusy when another writer holds it)."""
        ...

    def durable_bytes(self, account_id: str, key: str, upload_id: str, size: int) -> int:
        """How many bytes of an object of `size` bytes its durable parts hold (`size` once
        completed)."""
        ...

    def complete(self, account_id: str, key: str, upload_id: str, size: int) -> None:
        """Makes every part one readable object under `key`. Idempotent."""
        ...

    def abort(self, account_id: str, key: str, upload_id: str) -> None:
        """Deletes the parts of an object never completed. Idempotent."""
        ...


def _object_key() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class _Header:
    length: int
    stream: Stream


class LocalEncryptedStore:
    def __init__(
        self, root: Path, wrapper: KeyWrapper, *, segment_bytes: int = SEGMENT_BYTES
    ) -> None:
        self.root = root
        self.wrapper = wrapper
        self.segment_bytes = segment_bytes
        self.description = f"encrypted directory {root} (KEK: {wrapper.description})"
        private_dir(root)

    def _path(self, key: str) -> Path:
        if len(key) != 32 or not all(c in "0123456789abcdef" for c in key):
            raise StorageError("not an object key of this store")
        return self.root / key[:2] / key

    def _upload_path(self, key: str) -> Path:
        """Where an object is written until it is complete (never read as an object)."""
        return self._path(key).with_suffix(".upload")

    @staticmethod
    def _aad(account_id: str, key: str) -> bytes:
        return f"mixip-media\x00{account_id}\x00{key}".encode()

    def put(self, account_id: str, data: bytes) -> str:
        key, upload_id = self.begin(account_id)
        writer = self._writer(account_id, key, len(data))
        writer.sync_each = False  # one fsync at the end: nobody resumes a put
        try:
            step = writer.part_bytes
            for start in range(0, max(len(data), 1), step):
                writer.write(data[start : start + step], last=start + step >= len(data))
        finally:
            writer.close()
        self.complete(account_id, key, upload_id, len(data))
        return key

    def get(self, account_id: str, key: str) -> bytes:
        with self.open(account_id, key) as handle:
            return handle.read()

    def open(self, account_id: str, key: str) -> BinaryIO:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError:
            raise StorageError("no such object") from None
        aad = self._aad(account_id, key)
        magic = handle.read(4)
        if magic == _MAGIC:
            with handle:
                return io.BytesIO(self._legacy(handle.read(), aad))
        header = self._header(handle, aad) if magic == _STREAM_MAGIC else None
        if header is None:
            handle.close()
            raise StorageError("not an object of this store")
        return io.BufferedReader(_SegmentReader(handle, header), header.stream.segment_bytes)

    def _legacy(self, blob: bytes, aad: bytes) -> bytes:
        """An MXM1 object's plaintext (at most the old 64 MiB upload limit)."""
        if len(blob) < 2:
            raise StorageError("not an object of this store")
        (length,) = struct.unpack(">H", blob[:2])
        try:
            data_key = self.wrapper.unwrap(blob[2 : 2 + length], aad)
            return open_sealed(data_key, blob[2 + length :], aad)
        except SealError as exc:
            raise StorageError("object does not decrypt for this account") from exc

    def _header(self, handle: IO[bytes], aad: bytes) -> _Header | None:
        """The header after the magic (None when incomplete: a crash while writing it)."""
        raw = handle.read(2)
        if len(raw) < 2:
            return None
        (length,) = struct.unpack(">H", raw)
        rest = handle.read(length + NONCE_PREFIX_BYTES + 4)
        if len(rest) < length + NONCE_PREFIX_BYTES + 4:
            return None
        try:
            data_key = self.wrapper.unwrap(rest[:length], aad)
        except SealError as exc:
            raise StorageError("object does not decrypt for this account") from exc
        prefix = rest[length : length + NONCE_PREFIX_BYTES]
        (segment_bytes,) = struct.unpack(">I", rest[length + NONCE_PREFIX_BYTES :])
        return _Header(6 + len(rest), Stream(data_key, prefix, segment_bytes, aad))

    def delete(self, account_id: str, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def stale_keys(self, before: datetime) -> Iterator[tuple[str, str]]:
        for path in self.root.glob("??/*"):
            if len(path.name) == 32 and path.stat().st_mtime < before.timestamp():
                yield "", path.name  # the file name does not say whose it is, by design

    # -- written a part at a time -----------------------------------------------------------

    def begin(self, account_id: str) -> tuple[str, str]:
        return _object_key(), ""  # the first write creates the file

    def writer(self, account_id: str, key: str, upload_id: str, size: int) -> PartWriter:
        return self._writer(account_id, key, size)

    def _writer(self, account_id: str, key: str, size: int) -> _LocalWriter:
        path = self._upload_path(key)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageBusy("another writer holds this upload") from None
        handle = os.fdopen(fd, "r+b")
        try:
            return _LocalWriter(handle, self._open_or_start(handle, account_id, key), size)
        except BaseException:
            handle.close()
            raise

    def _open_or_start(self, handle: IO[bytes], account_id: str, key: str) -> _Header:
        aad = self._aad(account_id, key)
        header = self._header(handle, aad) if handle.read(4) == _STREAM_MAGIC else None
        if header is not None:
            return header
        data_key, prefix = secrets.token_bytes(32), secrets.token_bytes(NONCE_PREFIX_BYTES)
        wrapped = self.wrapper.wrap(data_key, aad)
        handle.seek(0)
        handle.truncate()
        handle.write(
            _STREAM_MAGIC
            + struct.pack(">H", len(wrapped))
            + wrapped
            + prefix
            + struct.pack(">I", self.segment_bytes)
        )
        _sync(handle)
        return _Header(handle.tell(), Stream(data_key, prefix, self.segment_bytes, aad))

    def durable_bytes(self, account_id: str, key: str, upload_id: str, size: int) -> int:
        try:
            with self._upload_path(key).open("rb") as handle:
                aad = self._aad(account_id, key)
                header = self._header(handle, aad) if handle.read(4) == _STREAM_MAGIC else None
                length = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            return size if self._path(key).exists() else 0  # completed, or nothing written
        if header is None:
            return 0
        return min(size, _complete_segments(header, length, size) * header.stream.segment_bytes)

    def complete(self, account_id: str, key: str, upload_id: str, size: int) -> None:
        path = self._upload_path(key)
        if not path.exists() and self._path(key).exists():
            return  # completed before
        writer = self._writer(account_id, key, size)
        try:
            if writer.parts < writer.stream.segment_count(size):
                raise StorageError("the object's parts are not all written")
            os.replace(path, self._path(key))  # readers never see half an object
            _sync_dir(path.parent)
        finally:
            writer.close()

    def abort(self, account_id: str, key: str, upload_id: str) -> None:
        self._upload_path(key).unlink(missing_ok=True)


def _complete_segments(header: _Header, length: int, size: int) -> int:
    """How many segments of an object of `size` bytes are whole in a file of `length` bytes
    (a segment cut by a crash while it was written does not count)."""
    stream = header.stream
    sealed = max(0, length - header.length)
    whole = min(sealed // stream.sealed_segment_bytes, stream.segment_count(size))
    last = stream.segment_count(size) - 1
    if whole == last and sealed - whole * stream.sealed_segment_bytes >= (
        stream.sealed_length(size) - last * stream.sealed_segment_bytes
    ):
        return last + 1  # the last segment, shorter than the others, is whole too
    return whole


class _LocalWriter:
    def __init__(self, handle: IO[bytes], header: _Header, size: int) -> None:
        self.handle = handle
        self.header = header
        self.stream = header.stream
        self.part_bytes = header.stream.segment_bytes
        self.size = size
        self.parts = _complete_segments(header, os.fstat(handle.fileno()).st_size, size)
        if self.parts == self.stream.segment_count(size):
            end = header.length + self.stream.sealed_length(size)
        else:
            end = header.length + self.parts * self.stream.sealed_segment_bytes
        handle.seek(end)
        handle.truncate()  # a segment cut by a crash is written again, whole
        self.sync_each = True  # each part durable when `write` returns (else: at `close`)

    def write(self, data: bytes, last: bool) -> None:
        if self.parts >= self.stream.segment_count(self.size):
            raise StorageError("every part of this object is written")
        sealed = self.stream.seal(self.parts, data, last)
        self.handle.write(sealed)
        if self.sync_each:
            _sync(self.handle)
        self.parts += 1

    def close(self) -> None:
        try:
            if not self.sync_each:
                _sync(self.handle)
        finally:
            self.handle.close()  # releases the lock


class _Seekable(io.RawIOBase):
    """A readable stream of `size` bytes that seeks (the two readers below)."""

    size: int
    position: int

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def _target(self, offset: int, whence: int) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        return base + offset


class _SegmentReader(_Seekable):
    """The plaintext of an MXM2 object, decrypted a segment at a time."""

    def __init__(self, handle: IO[bytes], header: _Header) -> None:
        self.handle = handle
        self.header = header
        self.stream = header.stream
        sealed = os.fstat(handle.fileno()).st_size - header.length
        try:
            self.count = self.stream.segments(sealed)
            self.size = self.stream.plaintext_length(sealed)
        except StreamError as exc:
            raise StorageError(str(exc)) from exc
        self.position = 0
        self._cached: tuple[int, bytes] | None = None

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = self._target(offset, whence)
        return self.position

    def _segment(self, index: int) -> bytes:
        if self._cached is None or self._cached[0] != index:
            sealed = self.stream.sealed_segment_bytes
            self.handle.seek(self.header.length + index * sealed)
            try:
                plain = self.stream.open(
                    index, self.handle.read(sealed), last=index == self.count - 1
                )
            except StreamError as exc:
                raise StorageError(f"stored object refused: {exc}") from exc
            self._cached = (index, plain)
        return self._cached[1]

    def readall(self) -> bytes:
        """The rest of the object, a whole segment at a time (not in small reads)."""
        blocks = []
        while self.position < self.size or (self.size == 0 and self.position == 0):
            index, within = divmod(self.position, self.stream.segment_bytes)
            block = self._segment(index)[within:]
            blocks.append(block)
            self.position += len(block)
            if not block:
                break
        return b"".join(blocks)

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.size:
            if self.size == 0 and self.position == 0:
                self._segment(0)  # an empty object still authenticates its one segment
            return 0
        index, within = divmod(self.position, self.stream.segment_bytes)
        plain = self._segment(index)[within : within + len(buffer)]
        buffer[: len(plain)] = plain
        self.position += len(plain)
        return len(plain)

    def close(self) -> None:
        self.handle.close()
        super().close()


def _sync(handle: IO[bytes]) -> None:
    with step("gateway.media_store.fsync"):
        handle.flush()
        os.fsync(handle.fileno())


def _sync_dir(path: Path) -> None:
    with step("gateway.media_store.fsync_dir"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class S3Store:
    """S3 with SSE-KMS; the boto3 client is passed in, never created here. Objects written a
    part at a time are S3 multipart uploads (every part but the last `part_bytes`, at least
    5 MiB for S3), encrypted under the same KMS key."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        kms_key_id: str,
        prefix: str = "media/",
        *,
        part_bytes: int = S3_PART_BYTES,
    ) -> None:
        self.s3 = client
        self.bucket = bucket
        self.kms_key_id = kms_key_id
        self.prefix = prefix
        self.part_bytes = part_bytes
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
        with self.open(account_id, key) as handle:
            return handle.read()

    def open(self, account_id: str, key: str) -> BinaryIO:
        name = self._key(account_id, key)
        try:
            size = self.s3.head_object(Bucket=self.bucket, Key=name)["ContentLength"]
        except self.s3.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
                raise StorageError("no such object") from None
            raise
        return io.BufferedReader(_S3Reader(self.s3, self.bucket, name, size), 1 * MiB)

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

    # -- written a part at a time: a multipart upload -----------------------------------------

    def begin(self, account_id: str) -> tuple[str, str]:
        key = _object_key()
        started = self.s3.create_multipart_upload(
            Bucket=self.bucket,
            Key=self._key(account_id, key),
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=self.kms_key_id,
        )
        return key, started["UploadId"]

    def writer(self, account_id: str, key: str, upload_id: str, size: int) -> PartWriter:
        parts = self._durable_parts(self._key(account_id, key), upload_id, size)
        return _S3Writer(self, self._key(account_id, key), upload_id, parts)

    def _parts(self, name: str, upload_id: str) -> list[dict[str, Any]]:
        """The upload's parts, in order (StorageError when the upload is gone)."""
        try:
            pages = self.s3.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=name, UploadId=upload_id
            )
            return [part for page in pages for part in page.get("Parts", [])]
        except self.s3.exceptions.NoSuchUpload:
            raise StorageError("no such upload") from None

    def durable_bytes(self, account_id: str, key: str, upload_id: str, size: int) -> int:
        name = self._key(account_id, key)
        try:
            return min(size, self._durable_parts(name, upload_id, size) * self.part_bytes)
        except StorageError:
            if self._exists(name):
                return size  # completed before
            raise

    def _durable_parts(self, name: str, upload_id: str, size: int) -> int:
        """The parts uploaded in sequence from the first, each of its full size."""
        parts = self._parts(name, upload_id)
        count = 0
        for part in parts:
            expected = min(self.part_bytes, size - count * self.part_bytes)
            if part["PartNumber"] != count + 1 or part["Size"] != expected:
                break
            count += 1
        return count

    def _exists(self, name: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=name)
        except self.s3.exceptions.ClientError:
            return False
        return True

    def complete(self, account_id: str, key: str, upload_id: str, size: int) -> None:
        name = self._key(account_id, key)
        try:
            parts = self._parts(name, upload_id)
        except StorageError:
            if self._exists(name):
                return  # completed before
            raise
        count = -(-size // self.part_bytes)
        if self._durable_parts(name, upload_id, size) < count:
            raise StorageError("the object's parts are not all written")
        self.s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=name,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts[:count]]
            },
        )

    def abort(self, account_id: str, key: str, upload_id: str) -> None:
        with contextlib.suppress(self.s3.exceptions.NoSuchUpload):  # aborted or completed
            self.s3.abort_multipart_upload(
                Bucket=self.bucket, Key=self._key(account_id, key), UploadId=upload_id
            )


class _S3Writer:
    def __init__(self, store: S3Store, name: str, upload_id: str, parts: int) -> None:
        self.store = store
        self.name = name
        self.upload_id = upload_id
        self.parts = parts
        self.part_bytes = store.part_bytes

    def write(self, data: bytes, last: bool) -> None:
        self.store.s3.upload_part(
            Bucket=self.store.bucket,
            Key=self.name,
            UploadId=self.upload_id,
            PartNumber=self.parts + 1,
            Body=data,
        )
        self.parts += 1

    def close(self) -> None:
        pass


class _S3Reader(_Seekable):
    """An S3 object read through one GET at a time; a seek starts a ranged GET."""

    def __init__(self, s3: Any, bucket: str, name: str, size: int) -> None:
        self.s3, self.bucket, self.name, self.size = s3, bucket, name, size
        self.position = 0
        self._body: Any = None

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = self._target(offset, whence)
        if target != self.position:
            self._drop()
            self.position = target
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.size:
            return 0
        if self._body is None:
            self._body = self.s3.get_object(
                Bucket=self.bucket, Key=self.name, Range=f"bytes={self.position}-"
            )["Body"]
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def _drop(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop()
        super().close()
