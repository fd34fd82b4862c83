"""Media storage: encrypted local directory (embedded default) and S3 with SSE-KMS (moto),
written at once or a part at a time, read as a stream."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from gateway.media_store import LocalEncryptedStore, S3Store, StorageBusy, StorageError
from mixip.runtime.keys import LocalKeyWrapper, seal

DATA = b"\xff\xd8\xff" + b"customer photo bytes " * 500


@pytest.fixture
def local(tmp_path) -> LocalEncryptedStore:
    return LocalEncryptedStore(tmp_path / "media", LocalKeyWrapper(tmp_path / "kek.key"))


def test_local_objects_are_encrypted_and_named_randomly(local, tmp_path):
    keys = {local.put("acct-a", DATA) for _ in range(3)}
    assert len(keys) == 3
    files = [p for p in (tmp_path / "media").rglob("*") if p.is_file()]
    assert len(files) == 3
    for path in files:
        blob = path.read_bytes()
        assert b"customer photo" not in blob and "acct-a" not in path.name
        assert path.stat().st_mode & 0o077 == 0
    assert all(local.get("acct-a", key) == DATA for key in keys)


def test_local_objects_do_not_open_for_another_account_or_when_tampered(local, tmp_path):
    key = local.put("acct-a", DATA)
    with pytest.raises(StorageError):
        local.get("acct-b", key)
    [path] = [p for p in (tmp_path / "media").rglob("*") if p.is_file()]
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(StorageError):
        local.get("acct-a", key)


def test_local_delete_is_idempotent(local):
    key = local.put("acct-a", DATA)
    local.delete("acct-a", key)
    local.delete("acct-a", key)
    with pytest.raises(StorageError):
        local.get("acct-a", key)


def test_every_s3_object_is_encrypted_with_the_kms_key(aws_credentials):
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        kms = boto3.client("kms", region_name="eu-west-1")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        s3.create_bucket(
            Bucket="mixip-media", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        store = S3Store(s3, "mixip-media", key_id)
        keys = [store.put("acct-a", DATA), store.put("acct-b", DATA[:100])]
        listed = s3.list_objects_v2(Bucket="mixip-media")["Contents"]
        assert len(listed) == 2
        for obj in listed:
            head = s3.head_object(Bucket="mixip-media", Key=obj["Key"])
            assert head["ServerSideEncryption"] == "aws:kms"
            assert head["SSEKMSKeyId"].endswith(key_id)
            assert "a.jpg" not in obj["Key"]
        assert store.get("acct-a", keys[0]) == DATA
        with pytest.raises(StorageError):
            store.get("acct-b", keys[0])
        store.delete("acct-a", keys[0])
        assert len(s3.list_objects_v2(Bucket="mixip-media")["Contents"]) == 1


# -- objects written a part at a time, read as a stream -----------------------------------------

SEGMENT = 1024
MEDIA = bytes(range(256)) * 20  # 5,120 bytes: five segments of 1 KiB (the last one full)


@pytest.fixture
def segmented(tmp_path) -> LocalEncryptedStore:
    return LocalEncryptedStore(
        tmp_path / "media", LocalKeyWrapper(tmp_path / "kek.key"), segment_bytes=SEGMENT
    )


def write_parts(store, account: str, data: bytes, parts: int | None = None) -> tuple[str, str]:
    """An object of `data` begun and written (its first `parts` parts, or all)."""
    key, upload_id = store.begin(account)
    writer = store.writer(account, key, upload_id, len(data))
    step = writer.part_bytes
    starts = list(range(0, len(data), step))[:parts]
    try:
        for start in starts:
            writer.write(data[start : start + step], last=start + step >= len(data))
    finally:
        writer.close()
    return key, upload_id


def object_file(store: LocalEncryptedStore, key: str) -> Path:
    return store.root / key[:2] / key


def test_a_segmented_object_reads_back_as_a_seekable_stream(segmented):
    for data in (MEDIA, MEDIA[:-1], b"x"):
        key, upload_id = write_parts(segmented, "acct-a", data)
        segmented.complete("acct-a", key, upload_id, len(data))
        with segmented.open("acct-a", key) as handle:
            assert handle.read() == data
            handle.seek(SEGMENT - 3)
            assert handle.read(6) == data[SEGMENT - 3 : SEGMENT + 3]
            assert handle.seek(0, io.SEEK_END) == len(data)
        assert segmented.get("acct-a", key) == data
        with pytest.raises(StorageError):
            segmented.get("acct-b", key)


def test_a_writer_resumes_after_the_last_whole_segment(segmented):
    key, upload_id = write_parts(segmented, "acct-a", MEDIA, parts=2)
    partial = object_file(segmented, key).with_suffix(".upload")
    with partial.open("ab") as handle:
        handle.write(b"\x00" * 500)  # a third segment cut by a crash
    assert segmented.durable_bytes("acct-a", key, upload_id, len(MEDIA)) == 2 * SEGMENT

    writer = segmented.writer("acct-a", key, upload_id, len(MEDIA))
    with pytest.raises(StorageBusy):  # one writer at a time
        segmented.writer("acct-a", key, upload_id, len(MEDIA))
    assert writer.parts == 2
    for start in range(2 * SEGMENT, len(MEDIA), SEGMENT):
        writer.write(MEDIA[start : start + SEGMENT], last=start + SEGMENT == len(MEDIA))
    writer.close()
    segmented.complete("acct-a", key, upload_id, len(MEDIA))
    segmented.complete("acct-a", key, upload_id, len(MEDIA))  # idempotent
    assert segmented.get("acct-a", key) == MEDIA
    assert segmented.durable_bytes("acct-a", key, upload_id, len(MEDIA)) == len(MEDIA)


def sealed_segments(store, key) -> tuple[bytes, list[bytes]]:
    """(the header, the sealed segments) of a stored object."""
    blob = object_file(store, key).read_bytes()
    sealed = SEGMENT + 16
    header = len(blob) - 5 * sealed
    return blob[:header], [blob[header + i * sealed : header + (i + 1) * sealed] for i in range(5)]


@pytest.mark.parametrize(
    "change",
    [
        "flip a bit",
        "cut at a segment",
        "cut inside a segment",
        "swap two segments",
        "repeat a segment",
        "drop a middle segment",
    ],
)
def test_a_tampered_truncated_or_reordered_object_is_refused(segmented, change):
    key, upload_id = write_parts(segmented, "acct-a", MEDIA)
    segmented.complete("acct-a", key, upload_id, len(MEDIA))
    header, parts = sealed_segments(segmented, key)
    if change == "flip a bit":
        parts[2] = parts[2][:7] + bytes([parts[2][7] ^ 1]) + parts[2][8:]
    elif change == "cut at a segment":
        parts = parts[:4]
    elif change == "cut inside a segment":
        parts[4] = parts[4][:100]
    elif change == "swap two segments":
        parts[1], parts[2] = parts[2], parts[1]
    elif change == "repeat a segment":
        parts.append(parts[4])
    else:
        del parts[2]
    object_file(segmented, key).write_bytes(header + b"".join(parts))
    with pytest.raises(StorageError):
        segmented.get("acct-a", key)


def test_objects_stored_before_streaming_stay_readable(local):
    """The MXM1 format: magic, wrapped key, one AES-GCM blob."""
    key = "0123456789abcdef0123456789abcdef"
    aad = f"mixip-media\x00acct-a\x00{key}".encode()
    data_key = bytes(range(32))
    wrapped = local.wrapper.wrap(data_key, aad)
    path = object_file(local, key)
    path.parent.mkdir(parents=True)
    path.write_bytes(
        b"MXM1" + struct.pack(">H", len(wrapped)) + wrapped + seal(data_key, DATA, aad)
    )
    assert local.get("acct-a", key) == DATA
    with local.open("acct-a", key) as handle:
        handle.seek(7)
        assert handle.read(5) == DATA[7:12]
    with pytest.raises(StorageError):
        local.get("acct-b", key)


def test_an_s3_multipart_object_resumes_completes_and_streams(aws_credentials, monkeypatch):
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", SEGMENT)
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        key_id = boto3.client("kms", region_name="eu-west-1").create_key()["KeyMetadata"]["KeyId"]
        s3.create_bucket(
            Bucket="mixip-media", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        store = S3Store(s3, "mixip-media", key_id, part_bytes=SEGMENT)
        data = MEDIA[:-100]
        key, upload_id = write_parts(store, "acct-a", data, parts=3)
        assert store.durable_bytes("acct-a", key, upload_id, len(data)) == 3 * SEGMENT
        with pytest.raises(StorageError):
            store.complete("acct-a", key, upload_id, len(data))
        writer = store.writer("acct-a", key, upload_id, len(data))
        assert writer.parts == 3
        writer.write(data[3 * SEGMENT : 4 * SEGMENT], last=False)
        writer.write(data[4 * SEGMENT :], last=True)
        store.complete("acct-a", key, upload_id, len(data))
        store.complete("acct-a", key, upload_id, len(data))  # idempotent

        head = s3.head_object(Bucket="mixip-media", Key=f"media/acct-a/{key}")
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith(key_id)
        with store.open("acct-a", key) as handle:
            handle.seek(SEGMENT - 2)
            assert handle.read(4) == data[SEGMENT - 2 : SEGMENT + 2]
            handle.seek(0)
            assert handle.read() == data
        assert store.durable_bytes("acct-a", key, upload_id, len(data)) == len(data)

        other, other_upload = store.begin("acct-a")
        store.abort("acct-a", other, other_upload)
        store.abort("acct-a", other, other_upload)  # idempotent
        assert s3.list_multipart_uploads(Bucket="mixip-media").get("Uploads", []) == []
