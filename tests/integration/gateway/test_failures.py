"""Failure guarantees with in-process servers: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import grpc
import pytest

from gateway.uploads import ORPHANED_AFTER
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.matcher.v1 import matcher_pb2
from tests.support import faces
from tests.support.gateway_calls import consent, enroll, group_photo, upload
from tests.support.status import expect_error


def _handle(gateway, name):
    return {
        "matcher": gateway.mesh.matcher,
        "consent": gateway.mesh.consent,
        "audit": gateway.audit,
    }[name]


@pytest.mark.parametrize("down", ["matcher", "consent", "audit"])
def test_an_erasure_interrupted_at_any_step_completes_when_repeated(gateway, studio, serve, down):
    account, meta = studio
    upload(gateway, meta, group_photo())
    handle = _handle(gateway, down)
    handle.running.stop(0)
    expect_error(
        grpc.StatusCode.UNAVAILABLE,
        gateway.stub.EraseTalent,
        pb.EraseTalentRequest(talent_id="astronaut"),
        metadata=meta,
    )
    serve(handle.app, listen=handle.address)  # the service comes back on its address
    grpc.channel_ready_future(gateway.app.channels[down]).result(timeout=15)

    receipt = gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta)
    steps = {s.name: s.count for s in receipt.steps}
    assert list(steps) == [
        "consent.erase_ledger",
        "matcher.delete_faces",
        "gateway.deliver_audit_events",
        "audit.shred_salt",
        "gateway.scrub_results",
    ]
    assert steps["audit.shred_salt"] == 1  # whichever step failed, the salt goes now
    if down != "consent":  # the steps before the failure were done by the first call
        assert steps["consent.erase_ledger"] == 0
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.ExportTalentData,
        pb.ExportTalentDataRequest(talent_id="astronaut"),
        metadata=meta,
    )
    assert gateway.mesh.matcher.app.matcher.stats(account)[0] == 0
    assert gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok


def test_a_revocation_while_the_matcher_is_down_is_delivered_when_it_returns(
    gateway, studio, serve, clock
):
    account, meta = studio
    matcher = gateway.mesh.matcher
    matcher.running.stop(0)
    consent(
        gateway,
        meta,
        clock,
        "astronaut",
        cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
        decision=cpb.CONSENT_DECISION_REVOKED,
    )
    outbox = gateway.mesh.consent.app.outbox
    assert outbox.run_once() == 0 and outbox.pending() == 1  # owed, not lost

    serve(matcher.app, listen=matcher.address)
    # the consent service's channel notices the matcher is back within its reconnect backoff
    grpc.channel_ready_future(gateway.mesh.consent.app.matcher_channel).result(timeout=15)
    clock.advance(minutes=1)
    assert outbox.run_once() == 1 and outbox.pending() == 0
    assert matcher.app.matcher.stats(account)[0] == 0
    assert outbox.run_once() == 0  # exactly once in effect: nothing left to send
    faces_after = matcher.stub.ListTalentFaces(
        matcher_pb2.ListTalentFacesRequest(account_id=account, talent_id="astronaut")
    )
    assert list(faces_after.faces) == []


def test_an_orphaned_object_left_by_a_crash_is_swept_at_start_up(gateway, studio, tmp_path, clock):
    account, meta = studio
    clock.now = datetime.now(UTC)  # compared with the files' own (real) modification times
    kept = upload(gateway, meta, group_photo())
    orphan = gateway.app.media_store.put(account, b"\xff\xd8\xff half an upload")
    files = {p.name: p for p in (tmp_path / "media").rglob("*") if p.is_file()}
    assert set(files) >= {orphan}
    old = time.time() - ORPHANED_AFTER.total_seconds() - 60
    for path in files.values():
        os.utime(path, (old, old))
    clock.advance(seconds=1)
    assert gateway.app.orphans.sweep() == 1
    remaining = [p.name for p in (tmp_path / "media").rglob("*") if p.is_file()]
    assert orphan not in remaining and len(remaining) == 1
    again = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=kept.media_id), metadata=meta
    )
    assert again.media.media_id == kept.media_id


def test_an_erasure_during_matching_is_not_undone_by_the_upload(gateway, studio, monkeypatch):
    """The erasure completes while the matcher works on an upload showing the talent: the
    upload must not record events or results that link the talent again."""
    _, meta = studio
    matcher = gateway.mesh.matcher.app.matcher
    match = matcher.match

    def match_then_erase(*args):
        outcome = match(*args)  # the talent was still enrolled and consented here
        gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta)
        return outcome

    monkeypatch.setattr(matcher, "match", match_then_erase)
    reply = upload(gateway, meta, group_photo())
    assert all(f.talent_id == "" for f in reply.faces)
    assert common_pb2.LABEL_REASON_TALENT_ERASED in {f.reason for f in reply.faces}
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.ExportTalentData,
        pb.ExportTalentDataRequest(talent_id="astronaut"),
        metadata=meta,
    )
    linked = gateway.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(talent_id="astronaut"), metadata=meta
    )
    assert list(linked.events) == []
    assert gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok


def test_a_request_id_reused_for_another_talent_still_erases_that_talent(gateway, studio, clock):
    _, meta = studio
    consent(gateway, meta, clock, "hopper", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    enroll(gateway, meta, "hopper", faces.grace_hopper())
    first = gateway.stub.EraseTalent(
        pb.EraseTalentRequest(talent_id="astronaut", request_id="erase-x"), metadata=meta
    )
    second = gateway.stub.EraseTalent(
        pb.EraseTalentRequest(talent_id="hopper", request_id="erase-x"), metadata=meta
    )
    assert second.receipt_id == first.receipt_id
    assert {s.name: s.count for s in second.steps}["matcher.delete_faces"] == 1
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.ExportTalentData,
        pb.ExportTalentDataRequest(talent_id="hopper"),
        metadata=meta,
    )


def test_a_late_revocation_spares_a_face_enrolled_after_consent_returned(
    gateway, studio, serve, clock
):
    _, meta = studio  # the astronaut's first face, enrolled with consent
    matcher = gateway.mesh.matcher
    outbox = gateway.mesh.consent.app.outbox
    matcher.running.stop(0)
    clock.advance(minutes=1)
    consent(
        gateway,
        meta,
        clock,
        "astronaut",
        cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
        decision=cpb.CONSENT_DECISION_REVOKED,
    )
    assert outbox.run_once() == 0  # the matcher is down: the deletion is owed
    serve(matcher.app, listen=matcher.address)
    grpc.channel_ready_future(gateway.app.channels["matcher"]).result(timeout=15)
    clock.advance(minutes=1)
    consent(gateway, meta, clock, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    again = enroll(gateway, meta, "astronaut", faces.scaled(faces.astronaut(), 0.8))

    grpc.channel_ready_future(gateway.mesh.consent.app.matcher_channel).result(timeout=15)
    clock.advance(minutes=5)
    assert outbox.run_once() == 1  # the old revocation arrives late
    left = gateway.stub.ListTalentFaces(
        pb.ListTalentFacesRequest(talent_id="astronaut"), metadata=meta
    ).faces
    assert [f.face_id for f in left] == [again.face.face_id]


def test_a_service_down_two_hops_away_is_retried_at_its_own_hop_only(gateway, studio):
    """Consent down behind the matcher: the matcher retries consent (its channel's policy) and
    answers DEPENDENCY_UNAVAILABLE with gRPC's pushback, so the gateway does not call the
    matcher again, nor the caller the gateway: one match, not five times five."""
    _, meta = studio
    gateway.mesh.consent.running.stop(0)
    checks: list[str] = []
    gateway.mesh.matcher.app.matcher.consent.checkpoint = checks.append  # once per match
    details = expect_error(
        grpc.StatusCode.UNAVAILABLE, upload, gateway, meta, group_photo(), request_id="down"
    )
    assert details.reason == "DEPENDENCY_UNAVAILABLE"
    assert checks == ["consent.cached"]
