"""Resumable upload sessions through the gateway, on both media stores: the encrypted directory
(64 KiB STREAM segments, the `gateway_media_store` fixture) and S3 with SSE-KMS (moto, 64 KiB
parts: moto's 5 MiB floor on parts is lowered for the test's small photo). The stored bytes are
read back through the store's streaming reader."""

from __future__ import annotations

import hashlib

import boto3
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from moto import mock_aws
from sqlalchemy import func, select

from gateway.media_store import LocalEncryptedStore, S3Store
from gateway.store import MediaRow, UploadSessionRow
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.gateway.v1 import internal_pb2, internal_pb2_grpc
from mixip.runtime.client import open_channel
from mixip.runtime.keys import LocalKeyWrapper
from tests.support.gateway_calls import PROJECT, finished_job, group_photo, upload
from tests.support.status import expect_error, expect_invalid

PART = 64 * 1024
PHOTO = group_photo()  # 228 KB: three whole parts and a short last one
SIZE = len(PHOTO)
SHA = hashlib.sha256(PHOTO).hexdigest()


@pytest.fixture(params=["local", "s3"])
def gateway_media_store(request, tmp_path, monkeypatch):
    if request.param == "local":
        yield LocalEncryptedStore(
            tmp_path / "media", LocalKeyWrapper(tmp_path / "keys" / "gw.key"), segment_bytes=PART
        )
        return
    request.getfixturevalue("aws_credentials")
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 1024)
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        key_id = boto3.client("kms", region_name="eu-west-1").create_key()["KeyMetadata"]["KeyId"]
        s3.create_bucket(
            Bucket="mixip-media", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        yield S3Store(s3, "mixip-media", key_id, part_bytes=PART)


def create(gw, meta, size=SIZE, project=PROJECT) -> pb.UploadSession:
    request = pb.CreateUploadSessionRequest(
        project_id=project, filename="group.jpg", declared_size=size
    )
    return gw.stub.CreateUploadSession(request, metadata=meta).session


def append(gw, meta, session_id, start, end, chunk=50_000, data=PHOTO) -> pb.UploadSession:
    requests = (
        pb.AppendUploadChunksRequest(
            session_id=session_id, offset=offset, data=data[offset : min(offset + chunk, end)]
        )
        for offset in range(start, end, chunk)
    )
    return gw.stub.AppendUploadChunks(requests, metadata=meta).session


def finish(gw, meta, session_id, sha=SHA, as_job=False) -> pb.UploadMediaResponse:
    request = pb.FinishUploadSessionRequest(session_id=session_id, sha256=sha, as_job=as_job)
    return gw.stub.FinishUploadSession(request, metadata=meta).media


def offset_of(gw, meta, session_id) -> int:
    request = pb.GetUploadSessionRequest(session_id=session_id)
    return gw.stub.GetUploadSession(request, metadata=meta).session.durable_offset


def count(gw, model) -> int:
    with gw.app.db.read() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_a_session_resumes_at_the_durable_offset_and_finishes_as_an_upload_does(gateway):
    account, meta = gateway.new_account()
    session = create(gateway, meta)
    assert session.durable_offset == 0 and session.declared_size == len(PHOTO)

    # A stream that stops after 100,000 bytes: one whole part is durable, the rest is not.
    assert append(gateway, meta, session.session_id, 0, 100_000).durable_offset == PART
    assert offset_of(gateway, meta, session.session_id) == PART
    done = append(gateway, meta, session.session_id, PART, len(PHOTO))
    assert done.durable_offset == len(PHOTO)
    media = finish(gateway, meta, session.session_id)

    direct = upload(gateway, meta, PHOTO)  # the same photo through UploadMedia
    assert media.size_bytes == direct.size_bytes == len(PHOTO)
    assert [(f.label, f.talent_id) for f in media.faces] == [
        (f.label, f.talent_id) for f in direct.faces
    ]
    assert media.audit_events_recorded == len(media.faces) == 2
    stored = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media.media_id), metadata=meta
    ).media
    assert stored.media_id == media.media_id and stored.project_id == PROJECT
    assert count(gateway, UploadSessionRow) == 0  # ended in the upload's commit

    with gateway.app.db.read() as db:
        key = db.get(MediaRow, media.media_id).storage_key
    with gateway.app.media_store.open(account, key) as handle:
        assert handle.read(10) == PHOTO[:10]
        handle.seek(3 * PART - 5)  # across a part boundary
        assert handle.read(10) == PHOTO[3 * PART - 5 : 3 * PART + 5]
        handle.seek(0)
        assert handle.read() == PHOTO
    # A retried finish returns the stored media.
    assert finish(gateway, meta, session.session_id).media_id == media.media_id


def test_a_session_finished_as_a_job_hands_its_object_to_the_job(gateway):
    _, meta = gateway.new_account()
    wrong = create(gateway, meta).session_id
    append(gateway, meta, wrong, 0, len(PHOTO))
    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, finish, gateway, meta, wrong, "0" * 64, True
    )
    assert error.reason == "SHA256_MISMATCH" and stored_objects(gateway) == 0
    session_id = create(gateway, meta).session_id
    append(gateway, meta, session_id, 0, len(PHOTO))

    started = finish(gateway, meta, session_id, as_job=True)

    assert started.job_id and started.media_id and not started.faces
    assert count(gateway, UploadSessionRow) == 0  # ended in the commit that queued the job
    assert finish(gateway, meta, session_id, as_job=True).job_id == started.job_id  # a retry
    job = finished_job(gateway, meta, started.job_id)
    assert job.state == pb.JOB_STATE_DONE and job.media_id == started.media_id
    media = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=started.media_id), metadata=meta
    ).media
    direct = upload(gateway, meta, PHOTO)
    assert media.size_bytes == len(PHOTO)
    assert [(f.label, f.talent_id) for f in media.faces] == [
        (f.label, f.talent_id) for f in direct.faces
    ]
    assert stored_objects(gateway) == 2  # the session's object is the media's, not a copy


def test_a_chunk_at_the_wrong_offset_is_refused_with_the_durable_offset(gateway):
    _, meta = gateway.new_account()
    session_id = create(gateway, meta).session_id
    append(gateway, meta, session_id, 0, PART)

    for wrong in (0, PART + 1, 2 * PART):
        error = expect_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            append,
            gateway,
            meta,
            session_id,
            wrong,
            len(PHOTO),
        )
        assert error.reason == "WRONG_OFFSET"
        assert error.metadata == {"durable_offset": str(PART)}
    assert offset_of(gateway, meta, session_id) == PART  # nothing written


def test_a_gap_inside_a_stream_is_refused_where_the_store_stands(gateway):
    _, meta = gateway.new_account()
    session_id = create(gateway, meta).session_id
    requests = [
        pb.AppendUploadChunksRequest(session_id=session_id, offset=0, data=PHOTO[:PART]),
        pb.AppendUploadChunksRequest(session_id=session_id, offset=PART + 10, data=PHOTO[:10]),
    ]
    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        gateway.stub.AppendUploadChunks,
        iter(requests),
        metadata=meta,
    )
    assert error.metadata == {"durable_offset": str(PART)}  # the first part was kept


def test_a_wrong_sha256_keeps_nothing(gateway):
    _, meta = gateway.new_account()
    session_id = create(gateway, meta).session_id
    append(gateway, meta, session_id, 0, len(PHOTO))

    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, finish, gateway, meta, session_id, sha="0" * 64
    )

    assert error.reason == "SHA256_MISMATCH"
    assert count(gateway, UploadSessionRow) == count(gateway, MediaRow) == 0
    expect_error(grpc.StatusCode.NOT_FOUND, offset_of, gateway, meta, session_id)
    assert stored_objects(gateway) == 0


def test_an_unfinished_session_cannot_be_finished(gateway):
    _, meta = gateway.new_account()
    session_id = create(gateway, meta).session_id
    append(gateway, meta, session_id, 0, 2 * PART)
    error = expect_error(grpc.StatusCode.FAILED_PRECONDITION, finish, gateway, meta, session_id)
    assert error.reason == "UPLOAD_INCOMPLETE"
    assert error.metadata == {"durable_offset": str(2 * PART)}
    assert count(gateway, MediaRow) == 0


def test_sizes_past_the_limits_are_refused_and_write_nothing(gateway):
    _, meta = gateway.new_account()
    limit = gateway.app.sessions.max_session_bytes
    for size, reason in (
        (limit + 1, "UPLOAD_TOO_LARGE"),
        (0, "EMPTY_UPLOAD"),
        (-1, "EMPTY_UPLOAD"),
    ):
        error = expect_invalid(create, gateway, meta, size=size, fields={"declared_size"})
        assert error.reason == reason
    assert count(gateway, UploadSessionRow) == 0

    session_id = create(gateway, meta, size=PART).session_id
    bigger = PHOTO[: PART + 1]
    expect_invalid(
        append, gateway, meta, session_id, 0, PART + 1, data=bigger, fields={"message[1].data"}
    )
    assert offset_of(gateway, meta, session_id) == 0


def test_an_append_message_is_bounded_by_the_chunk_limit_before_it_is_parsed(gateway):
    _, meta = gateway.new_account()
    session_id = create(gateway, meta, size=400 * 1024).session_id
    big = pb.AppendUploadChunksRequest(session_id=session_id, offset=0, data=b"\0" * 400 * 1024)
    error = expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        gateway.stub.AppendUploadChunks,
        iter([big]),
        metadata=meta,
    )
    assert error.reason == "REQUEST_TOO_LARGE"  # 256 KiB chunks + 64 KiB: not the 1 MiB default
    assert offset_of(gateway, meta, session_id) == 0


def test_a_finished_session_that_is_not_media_keeps_nothing(gateway):
    _, meta = gateway.new_account()
    text = b"not a photo at all " * 5000
    session_id = create(gateway, meta, size=len(text)).session_id
    append(gateway, meta, session_id, 0, len(text), data=text)
    error = expect_invalid(
        finish, gateway, meta, session_id, sha=hashlib.sha256(text).hexdigest(), fields={"chunk"}
    )
    assert error.reason == "BAD_MEDIA"
    assert count(gateway, UploadSessionRow) == count(gateway, MediaRow) == 0
    assert stored_objects(gateway) == 0


def test_a_session_whose_parts_are_gone_says_so(gateway):
    """A bucket rule aborting incomplete multipart uploads takes a session's parts away (the
    local store's parts, deleted, are simply none: the session starts again at 0)."""
    _, meta = gateway.new_account()
    session_id = create(gateway, meta).session_id
    append(gateway, meta, session_id, 0, 2 * PART)
    with gateway.app.db.read() as db:
        row = db.get(UploadSessionRow, session_id)
    gateway.app.media_store.abort(row.account_id, row.storage_key, row.upload_id)
    if isinstance(gateway.app.media_store, LocalEncryptedStore):
        assert offset_of(gateway, meta, session_id) == 0
        return
    error = expect_error(grpc.StatusCode.FAILED_PRECONDITION, offset_of, gateway, meta, session_id)
    assert error.reason == "SESSION_LOST"


def test_bad_and_foreign_session_ids(gateway):
    _, meta = gateway.new_account()
    _, other = gateway.new_account("other")
    session_id = create(gateway, meta).session_id
    for bad in ("", "nope", session_id.upper(), session_id + "0"):
        expect_invalid(offset_of, gateway, meta, bad, fields={"session_id"})
        expect_invalid(finish, gateway, meta, bad, fields={"session_id"})
    expect_invalid(finish, gateway, meta, session_id, sha="xyz", fields={"sha256"})
    unknown = "ups_" + "0" * 32
    for caller, sid in ((meta, unknown), (other, session_id)):  # another account's: unknown
        expect_error(grpc.StatusCode.NOT_FOUND, offset_of, gateway, caller, sid)
        expect_error(grpc.StatusCode.NOT_FOUND, finish, gateway, caller, sid)
        expect_error(grpc.StatusCode.NOT_FOUND, append, gateway, caller, sid, 0, PART)
    assert offset_of(gateway, meta, session_id) == 0


def test_abandoned_sessions_are_purged_with_their_parts(gateway, clock):
    _, meta = gateway.new_account()
    idle = create(gateway, meta).session_id
    append(gateway, meta, idle, 0, 2 * PART)
    completed = create(gateway, meta).session_id  # completed but never finished (a failed finish)
    append(gateway, meta, completed, 0, len(PHOTO))
    with gateway.app.db.write() as db:
        row = db.get(UploadSessionRow, completed)
        gateway.app.media_store.complete(row.account_id, row.storage_key, row.upload_id, len(PHOTO))
        row.completed = True
    clock.advance(hours=23)
    fresh = create(gateway, meta).session_id
    append(gateway, meta, fresh, 0, PART)
    assert stored_objects(gateway) == 3
    clock.advance(hours=2)  # the first two are idle for 25 hours, the third for 2

    internal = open_channel(
        f"127.0.0.1:{gateway.app.internal.port}",
        ["mixip.gateway.v1.GatewayInternalService"],
        timeout_seconds=30,
    )
    as_of = Timestamp()
    as_of.FromDatetime(clock())
    reply = internal_pb2_grpc.GatewayInternalServiceStub(internal).PurgeExpiredMedia(
        internal_pb2.PurgeExpiredMediaRequest(as_of=as_of, batch_size=10)
    )
    internal.close()

    assert reply.sessions_deleted == 2 and reply.done
    for gone in (idle, completed):
        expect_error(grpc.StatusCode.NOT_FOUND, offset_of, gateway, meta, gone)
    assert offset_of(gateway, meta, fresh) == PART
    assert stored_objects(gateway) == 1


def stored_objects(gw) -> int:
    """Objects and unfinished uploads in the store, whichever it is."""
    store = gw.app.media_store
    if isinstance(store, LocalEncryptedStore):
        return sum(1 for p in store.root.rglob("*") if p.is_file())
    objects = store.s3.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    uploads = store.s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return len(objects) + len(uploads)
