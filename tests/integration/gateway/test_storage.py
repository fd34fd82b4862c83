"""Media storage: encrypted local directory (embedded default) and S3 with SSE-KMS (moto)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from gateway.media_store import LocalEncryptedStore, S3Store, StorageError
from mixip.runtime.keys import LocalKeyWrapper

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
