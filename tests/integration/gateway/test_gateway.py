"""The gateway in front of the real services: authentication, chunked uploads, audit before
reply, export, erasure, tenant isolation, limits and dropped streams."""

from __future__ import annotations

import json
import logging
import struct
import threading

import cv2
import grpc
import numpy as np
import pytest
from sqlalchemy import event, func, select

from gateway.store import MediaFaceRow, MediaRow
from mixip.common.v1 import common_pb2 as common
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import admin_pb2
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.checkpoints import no_checkpoint
from tests.support import faces
from tests.support.gateway_calls import (
    CHUNK,
    PROJECT,
    consent,
    enroll,
    group_photo,
    upload,
    upload_requests,
)
from tests.support.status import expect_error, expect_invalid


def media_rows(gw) -> tuple[int, int]:
    with gw.app.db.read() as session:
        return (
            session.scalar(select(func.count()).select_from(MediaRow)),
            session.scalar(select(func.count()).select_from(MediaFaceRow)),
        )


def stored_objects(tmp_path) -> list:
    return [p for p in (tmp_path / "media").rglob("*") if p.is_file()]


def test_a_chunked_upload_is_matched_audited_and_stored_encrypted(gateway, studio, tmp_path):
    _, meta = studio
    photo = group_photo()
    reply = upload(gateway, meta, photo, request_id="up-1")
    assert len(photo) > 3 * CHUNK  # really more than one message
    assert reply.kind == common.MEDIA_KIND_IMAGE and reply.content_type == "image/jpeg"
    labels = sorted((f.label, f.talent_id) for f in reply.faces)
    assert labels == [(common.FACE_LABEL_CLEARED, "astronaut"), (common.FACE_LABEL_UNKNOWN, "")]
    assert reply.audit_events_recorded == 2

    events = gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=meta).events
    assert sorted(e.face_index for e in events) == [0, 1]
    assert {e.media_id for e in events} == {reply.media_id}
    linked = gateway.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(talent_id="astronaut"), metadata=meta
    ).events
    assert len(linked) == 1 and linked[0].label == common.FACE_LABEL_CLEARED
    assert gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok

    [stored] = stored_objects(tmp_path)
    blob = stored.read_bytes()
    assert photo[:64] not in blob and photo[5000:5064] not in blob  # encrypted at rest
    assert stored.name not in (reply.media_id, "a.jpg")
    again = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=reply.media_id), metadata=meta
    )
    assert [f.label for f in again.media.faces] == [f.label for f in reply.faces]


def test_a_retried_upload_returns_the_first_results_and_no_duplicate_events(gateway, studio):
    _, meta = studio
    first = upload(gateway, meta, group_photo(), request_id="same")
    second = upload(gateway, meta, group_photo(), request_id="same")
    assert first.media_id == second.media_id
    events = gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=meta).events
    assert len(events) == 2
    assert media_rows(gateway) == (1, 2)


def test_an_upload_reads_its_key_project_and_retry_at_once_and_commits_once(gateway, studio):
    """The upload path's fixed cost (issue 18): the API key, the project's scope and what a
    retry's first call stored are one read transaction; the results are one commit. (Counted
    on the thread that handled the upload; other threads of the gateway write meanwhile.)"""
    _, meta = studio
    begun: list[int] = []
    handler: list[int] = []

    def on_begin(_connection) -> None:
        begun.append(threading.get_ident())

    def at(step: str) -> None:
        if step == "upload.started":
            handler.append(threading.get_ident())

    event.listen(gateway.app.db.engine, "begin", on_begin)
    gateway.app.uploads.checkpoint = at
    try:
        upload(gateway, meta, group_photo(), request_id="counted")
    finally:
        event.remove(gateway.app.db.engine, "begin", on_begin)
        gateway.app.uploads.checkpoint = no_checkpoint
    assert len(handler) == 1 and begun.count(handler[0]) == 2  # one read, one commit


def test_a_video_upload_gives_tracks_with_ranges(gateway, studio):
    _, meta = studio
    video = faces.make_video(None, [(faces.astronaut(), 1.5), (faces.grace_hopper(), 1.5)])
    reply = upload(gateway, meta, video, chunk=16 * 1024)
    assert reply.kind == common.MEDIA_KIND_VIDEO and len(reply.faces) == 2
    assert all(f.ranges for f in reply.faces)
    assert reply.faces[0].talent_id == "astronaut"


def test_calls_without_a_valid_key_are_unauthenticated(gateway, studio):
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED, gateway.stub.VerifyAuditLog, pb.VerifyAuditLogRequest()
    )
    bad = (("authorization", "Bearer mixip_0123456789abcdef_" + "A" * 43),)
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        gateway.stub.VerifyAuditLog,
        pb.VerifyAuditLogRequest(),
        metadata=bad,
    )
    expect_error(grpc.StatusCode.UNAUTHENTICATED, upload, gateway, bad, group_photo())
    # the key is said first, whatever else is wrong (an upload's header is read before it)
    no_header = iter([pb.UploadMediaRequest(chunk=b"x")])
    expect_error(grpc.StatusCode.UNAUTHENTICATED, gateway.stub.UploadMedia, no_header, metadata=bad)
    bad_header = upload_requests(group_photo(), project="bad id", request_id="\x00")
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED, gateway.stub.UploadMedia, bad_header, metadata=bad
    )
    admin = (("authorization", f"Bearer {gateway.app.admin_key}"),)
    no_header = iter([pb.UploadMediaRequest(chunk=b"x")])
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED, gateway.stub.UploadMedia, no_header, metadata=admin
    )
    _, meta = studio
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        gateway.admin.CreateAccount,
        admin_pb2.CreateAccountRequest(name="x"),
        metadata=meta,
    )
    assert media_rows(gateway) == (0, 0)


def test_tenants_never_see_each_other(gateway, studio, clock):
    _, meta_a = studio
    reply = upload(gateway, meta_a, group_photo())
    _, meta_b = gateway.new_account("rival")
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.GetMediaResults,
        pb.GetMediaResultsRequest(media_id=reply.media_id),
        metadata=meta_b,
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.ExportTalentData,
        pb.ExportTalentDataRequest(talent_id="astronaut"),
        metadata=meta_b,
    )
    b_faces = upload(gateway, meta_b, faces.encode(faces.astronaut())).faces
    assert [(f.label, f.talent_id) for f in b_faces] == [(common.FACE_LABEL_UNKNOWN, "")]
    assert gateway.stub.ListConsents(pb.ListConsentsRequest(), metadata=meta_b).records == []
    b_events = gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=meta_b).events
    assert {e.media_id for e in b_events} != {reply.media_id}
    expect_error(  # B knows no astronaut: nothing of A's is erased, nor even journaled
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.EraseTalent,
        pb.EraseTalentRequest(talent_id="astronaut"),
        metadata=meta_b,
    )
    assert gateway.stub.ExportTalentData(
        pb.ExportTalentDataRequest(talent_id="astronaut"), metadata=meta_a
    ).document_json


def test_export_then_erase_then_nothing_links(gateway, studio, tmp_path):
    _, meta = studio
    upload(gateway, meta, group_photo())
    exported = gateway.stub.ExportTalentData(
        pb.ExportTalentDataRequest(talent_id="astronaut"), metadata=meta
    )
    document = json.loads(exported.document_json)
    assert document["schema_version"] == exported.schema_version == "mixip.talent-export/1"
    assert len(document["consent_records"]) == 2 and len(document["face_records"]) == 1
    assert len(document["audit_events"]) == 1 and len(document["media_results"]) == 1
    assert "vector" not in exported.document_json

    receipt = gateway.stub.EraseTalent(
        pb.EraseTalentRequest(talent_id="astronaut", request_id="erase-1"), metadata=meta
    )
    steps = {s.name: s.count for s in receipt.steps}
    assert steps == {
        "matcher.delete_faces": 1,
        "consent.erase_ledger": 2,
        "gateway.deliver_audit_events": 0,  # the export delivered them (reads its writes)
        "audit.shred_salt": 1,
        "gateway.scrub_results": 1,
    }

    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.ExportTalentData,
        pb.ExportTalentDataRequest(talent_id="astronaut"),
        metadata=meta,
    )
    again = upload(gateway, meta, faces.encode(faces.astronaut()))
    assert [(f.label, f.talent_id) for f in again.faces] == [(common.FACE_LABEL_UNKNOWN, "")]
    assert (
        gateway.stub.ListAuditEvents(
            pb.ListAuditEventsRequest(talent_id="astronaut"), metadata=meta
        ).events
        == []
    )
    verdict = gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta)
    assert verdict.ok and verdict.events_checked == 3
    replay = gateway.stub.EraseTalent(
        pb.EraseTalentRequest(talent_id="astronaut", request_id="erase-1"), metadata=meta
    )
    assert replay.receipt_id == receipt.receipt_id


def test_an_upload_over_the_limit_is_refused_and_nothing_is_stored(gateway, studio, tmp_path):
    _, meta = studio
    too_big = b"\xff\xd8\xff" + b"\x00" * (8 * 1024 * 1024)
    details = expect_invalid(upload, gateway, meta, too_big, chunk=256 * 1024, fields={"chunk"})
    assert details.reason == "UPLOAD_TOO_LARGE"
    assert media_rows(gateway) == (0, 0) and stored_objects(tmp_path) == []


def test_bad_uploads_are_refused_and_nothing_is_stored(gateway, studio, tmp_path):
    _, meta = studio
    expect_invalid(upload, gateway, meta, b"hello, this is text", fields={"chunk"})
    expect_invalid(
        upload, gateway, meta, faces.encode(faces.astronaut())[:3000], fields={"chunk"}
    )  # truncated
    bomb = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    bomb = bomb[:16] + struct.pack(">II", 40_000, 40_000) + bomb[24:]  # header claims 1.6 GP
    expect_invalid(upload, gateway, meta, bomb, fields={"media"})  # refused by the matcher
    expect_invalid(upload, gateway, meta, group_photo(), project="", fields={"header.project_id"})
    headless = iter([pb.UploadMediaRequest(chunk=b"\xff\xd8\xff")])
    expect_invalid(gateway.stub.UploadMedia, headless, metadata=meta, fields={"header"})
    assert media_rows(gateway) == (0, 0) and stored_objects(tmp_path) == []


def test_a_dropped_stream_stores_nothing(gateway, studio, tmp_path):
    _, meta = studio
    sent_some = threading.Event()
    release = threading.Event()

    def stalled():
        yield from list(upload_requests(group_photo()))[:3]
        sent_some.set()
        release.wait(10)  # the client goes away before finishing

    call = gateway.stub.UploadMedia.future(stalled(), metadata=meta)
    assert sent_some.wait(10)
    call.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    assert media_rows(gateway) == (0, 0) and stored_objects(tmp_path) == []


def test_enrollment_and_consent_errors_pass_through_with_their_fields(gateway, clock):
    _, meta = gateway.new_account()
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, enroll, gateway, meta, "nobody", faces.astronaut()
    )
    assert details.reason == "BIOMETRIC_CONSENT_REQUIRED"
    expect_invalid(
        gateway.stub.RecordConsent,
        pb.RecordConsentRequest(talent_id="x", scope=99, decision=1),
        metadata=meta,
        fields={"scope", "evidence"},
    )


def test_the_admin_creates_accounts_and_keys(gateway):
    meta = gateway.admin_metadata()
    created = gateway.admin.CreateAccount(admin_pb2.CreateAccountRequest(name="a"), metadata=meta)
    key = gateway.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(account_id=created.account.account_id), metadata=meta
    )
    assert key.api_key != created.api_key and key.api_key.startswith("mixip_")
    listed = gateway.admin.ListAccounts(admin_pb2.ListAccountsRequest(), metadata=meta)
    assert [a.account_id for a in listed.accounts] == [created.account.account_id]
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.admin.CreateApiKey,
        admin_pb2.CreateApiKeyRequest(account_id="acct_nope"),
        metadata=meta,
    )


def test_no_talent_id_reaches_any_log_line(gateway, clock, caplog):
    """Every service in this process logs through the root logger: none may name a talent."""
    talent = "talent-zq9x-unique"
    with caplog.at_level(logging.DEBUG):
        _, meta = gateway.new_account()
        consent(gateway, meta, clock, talent, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
        consent(gateway, meta, clock, talent, cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
        enroll(gateway, meta, talent, faces.astronaut())
        upload(gateway, meta, group_photo())
        gateway.stub.ExportTalentData(pb.ExportTalentDataRequest(talent_id=talent), metadata=meta)
        consent(
            gateway,
            meta,
            clock,
            talent,
            cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
            decision=cpb.CONSENT_DECISION_REVOKED,
        )
        gateway.mesh.consent.app.outbox.run_once()
        gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=talent), metadata=meta)
        expect_invalid(
            gateway.stub.RecordConsent,
            pb.RecordConsentRequest(talent_id=talent, scope=99),
            metadata=meta,
            fields={"scope"},
        )
    assert len(caplog.records) > 20  # the flow did log
    for record in caplog.records:
        line = caplog.handler.format(record) + repr(getattr(record, "fields", {}))
        assert talent not in line, line


def test_configuring_a_new_admin_key_revokes_the_old_one(gateway, clock, tmp_path):
    from gateway.accounts import Accounts

    old_meta = gateway.admin_metadata()
    new_key = Accounts(gateway.app.db, clock, gateway.app.accounts.seals).ensure_admin_key(
        tmp_path / "unused.key", "mixip_00112233445566ff_" + "B" * 43
    )
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        gateway.admin.ListAccounts,
        admin_pb2.ListAccountsRequest(),
        metadata=old_meta,
    )
    listed = gateway.admin.ListAccounts(
        admin_pb2.ListAccountsRequest(), metadata=(("authorization", f"Bearer {new_key}"),)
    )
    assert list(listed.accounts) == []
