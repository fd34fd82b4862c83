"""Erasure is linearizable with uploads and enrollments about the talent (docs/erasure.md).

Deterministic interleavings: an upload and an enrollment are paused at a step boundary
(checkpoint hooks in the real in-process gateway and matcher), the erasure runs up to one of
its own step boundaries (or to the end), then the paused writers finish inside that gap, then
the erasure finishes. Whatever the interleaving, no link to the talent is left."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import func, select

from gateway.store import ErasureIntentRow, ErasureReceiptRow, MediaFaceRow
from mixip.audit.v1 import audit_pb2
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.matcher.v1 import matcher_pb2
from services.audit.store import EventRow, SaltRow, ShredMarkerRow
from tests.support import faces
from tests.support.checkpoints import Checkpoints, Outcome
from tests.support.gateway_calls import PROJECT, consent, enroll, group_photo, upload
from tests.support.status import expect_error

TALENT = "astronaut"
UPLOAD_POINTS = ["upload.started", "upload.matched", "upload.rechecked", "upload.audited"]
ENROLL_POINTS = ["enroll.consented", "enroll.embedded", "enroll.inserted", "enroll.rechecked"]
# Where the erasure waits while the paused writers finish; None: it runs to the end first.
ERASE_GAPS = ["erase.intent", "erase.consent", "erase.matcher", "erase.audit", None]


@pytest.fixture
def hooks(gateway) -> Checkpoints:
    hooks = Checkpoints()
    gateway.app.gateway.checkpoint = hooks
    gateway.mesh.matcher.app.matcher.checkpoint = hooks
    return hooks


def _talent_account(gateway, clock, name: str):
    account, meta = gateway.new_account(name)
    consent(gateway, meta, clock, TALENT, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, meta, clock, TALENT, cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
    enroll(gateway, meta, TALENT, faces.astronaut())
    return account, meta


def assert_no_link_left(gateway, account: str, meta) -> None:
    """Export NOT_FOUND; no audit event links to the talent (by the talent filter, and no salt
    of the account is left to derive a hash from); no face vector; no stored talent id."""
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.ExportTalentData,
        pb.ExportTalentDataRequest(talent_id=TALENT),
        metadata=meta,
    )
    linked = gateway.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(talent_id=TALENT), metadata=meta
    )
    assert list(linked.events) == []
    audit = gateway.audit.app
    with audit.db.read() as session:
        assert audit.log.vault.salts(session, account, [TALENT], create=False) == {}
        # the talent is the account's only one: no salt at all, so no stored hash is derivable
        assert session.scalar(select(func.count()).where(SaltRow.account_id == account)) == 0
        assert session.scalar(select(func.count()).where(ShredMarkerRow.account_id == account)) == 1
    matcher = gateway.mesh.matcher
    assert matcher.app.matcher.stats(account)[0] == 0
    listed = matcher.stub.ListTalentFaces(
        matcher_pb2.ListTalentFacesRequest(account_id=account, talent_id=TALENT)
    )
    assert list(listed.faces) == []
    with gateway.app.db.read() as session:
        stored = session.scalars(select(MediaFaceRow).where(MediaFaceRow.account_id == account))
        assert all(row.talent_id is None for row in stored)
        intents = session.scalars(
            select(ErasureIntentRow).where(ErasureIntentRow.account_id == account)
        ).all()
        assert intents and all(i.completed_at and i.talent_id is None for i in intents)
    assert gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok


def test_no_interleaving_of_an_upload_and_an_enrollment_with_an_erasure_leaves_a_link(
    gateway, clock, hooks
):
    cases = [
        (gap, upload_at, enroll_at)
        for gap in ERASE_GAPS
        for upload_at, enroll_at in zip(UPLOAD_POINTS, ENROLL_POINTS, strict=True)
    ]
    photo = group_photo()
    second_face = faces.scaled(faces.astronaut(), 0.9)
    for n, (gap, upload_at, enroll_at) in enumerate(cases):
        case = f"erasure paused at {gap}, upload at {upload_at}, enrollment at {enroll_at}"
        account, meta = _talent_account(gateway, clock, f"studio-{n}")
        upload_paused, enroll_paused = hooks.pause_at(upload_at), hooks.pause_at(enroll_at)
        uploading = Outcome(lambda meta=meta: upload(gateway, meta, photo))
        upload_paused.reached()
        enrolling = Outcome(lambda meta=meta: enroll(gateway, meta, TALENT, second_face))
        enroll_paused.reached()

        erase_paused = hooks.pause_at(gap) if gap else None
        erasing = Outcome(
            lambda meta=meta: gateway.stub.EraseTalent(
                pb.EraseTalentRequest(talent_id=TALENT), metadata=meta
            )
        )
        if erase_paused:
            erase_paused.reached()
        else:
            erasing.join()
        enroll_paused.release()
        enrolling.join()
        upload_paused.release()
        uploading.join()
        if erase_paused:
            erase_paused.release()
            erasing.join()

        assert erasing.error is None, case
        assert uploading.error is None, case
        if enrolling.error is not None:  # refused by its post-insert consent check
            assert enrolling.error.code() == grpc.StatusCode.FAILED_PRECONDITION, case
        reply = uploading.result
        assert all(f.talent_id == "" for f in reply.faces), case
        assert all(f.label == common_pb2.FACE_LABEL_UNKNOWN for f in reply.faces), case
        # The match saw the talent unless it ran after consent was erased (then: NO_MATCH).
        saw_talent = upload_at != "upload.started" or gap == "erase.intent"
        stored = gateway.stub.GetMediaResults(
            pb.GetMediaResultsRequest(media_id=reply.media_id), metadata=meta
        ).media.faces
        erased = [f for f in stored if f.reason == common_pb2.LABEL_REASON_TALENT_ERASED]
        assert len(erased) == (1 if saw_talent else 0), case
        assert all(f.label == common_pb2.FACE_LABEL_UNKNOWN and not f.talent_id for f in stored)
        try:
            assert_no_link_left(gateway, account, meta)
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from exc


def test_an_erasure_abandoned_after_a_failed_step_is_finished_by_the_resumer(gateway, clock, serve):
    account, meta = _talent_account(gateway, clock, "studio")
    upload(gateway, meta, group_photo())
    gateway.audit.running.stop(0)
    expect_error(
        grpc.StatusCode.UNAVAILABLE,
        gateway.stub.EraseTalent,
        pb.EraseTalentRequest(talent_id=TALENT, request_id="erase-1"),
        metadata=meta,
    )
    with gateway.app.db.read() as session:  # journaled: the talent id is kept to finish it
        (intent,) = session.scalars(select(ErasureIntentRow)).all()
        assert intent.talent_id == TALENT and intent.completed_at is None
    # meanwhile, no consent for the talent may be recorded: it would survive the erasure
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        consent,
        gateway,
        meta,
        clock,
        TALENT,
        cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
    )
    serve(gateway.audit.app, listen=gateway.audit.address)
    grpc.channel_ready_future(gateway.app.channels["audit"]).result(timeout=15)

    assert gateway.app.gateway.erasures.resume() == 1  # the caller never retried
    assert gateway.app.gateway.erasures.resume() == 0
    with gateway.app.db.read() as session:
        intent = session.get(ErasureIntentRow, intent.intent_id)
        assert intent.talent_id is None and intent.completed_at is not None
        receipt = session.get(ErasureReceiptRow, intent.receipt_id)
        assert receipt.request_id == "erase-1" and TALENT not in receipt.steps
    assert_no_link_left(gateway, account, meta)
    # the caller's late retry gets the receipt the resumer wrote
    retried = gateway.stub.EraseTalent(
        pb.EraseTalentRequest(talent_id=TALENT, request_id="erase-1"), metadata=meta
    )
    assert retried.receipt_id == intent.receipt_id


def test_the_resumer_forgets_the_fence_key_after_the_window(gateway, clock):
    _, meta = _talent_account(gateway, clock, "studio")
    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=TALENT), metadata=meta)
    erasures = gateway.app.gateway.erasures
    erasures.resume()
    with gateway.app.db.read() as session:
        assert session.scalars(select(ErasureIntentRow.talent_key)).one() is not None
    clock.advance(hours=1, seconds=1)
    erasures.resume()
    with gateway.app.db.read() as session:
        assert session.scalars(select(ErasureIntentRow.talent_key)).one() is None


def test_a_biometric_consent_after_the_erasure_starts_a_new_unlinked_life(gateway, clock):
    account, meta = _talent_account(gateway, clock, "studio")
    first = upload(gateway, meta, group_photo(), request_id="before")
    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=TALENT), metadata=meta)
    audit = gateway.audit
    # an event about the erased talent arriving late is recorded unlinkable, no salt is made
    late = audit_pb2.MatchEventInput(
        idempotency_key="late:0",
        project_id=PROJECT,
        media_id="late",
        label=common_pb2.FACE_LABEL_CLEARED,
        reason=common_pb2.LABEL_REASON_CONSENTED_MATCH,
        similarity=0.9,
        talent_id=TALENT,
        actor="k",
        occurred_at=first.created_at,
    )
    audit.stub.RecordMatchEvents(
        audit_pb2.RecordMatchEventsRequest(account_id=account, events=[late])
    )
    with audit.app.db.read() as session:
        row = session.scalars(select(EventRow).where(EventRow.media_id == "late")).one()
        assert row.talent_hash is None
        assert session.scalar(select(func.count()).where(SaltRow.account_id == account)) == 0

    clock.advance(seconds=1)  # a new life: consent, enrollment, uploads link again
    consent(gateway, meta, clock, TALENT, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, meta, clock, TALENT, cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
    enroll(gateway, meta, TALENT, faces.astronaut())
    after = upload(gateway, meta, group_photo(), request_id="after")
    assert TALENT in {f.talent_id for f in after.faces}
    linked = gateway.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(talent_id=TALENT), metadata=meta
    )
    assert [e.media_id for e in linked.events] == [after.media_id]  # nothing from before


def test_a_gateway_starting_up_finishes_an_abandoned_erasure(gateway, clock, serve, tmp_path):
    from gateway.app import GatewayApp, GatewaySettings

    account, meta = _talent_account(gateway, clock, "studio")
    gateway.mesh.matcher.running.stop(0)
    expect_error(
        grpc.StatusCode.UNAVAILABLE,
        gateway.stub.EraseTalent,
        pb.EraseTalentRequest(talent_id=TALENT),
        metadata=meta,
    )
    matcher = gateway.mesh.matcher
    serve(matcher.app, listen=matcher.address)
    grpc.channel_ready_future(gateway.app.channels["matcher"]).result(timeout=15)

    restarted = GatewayApp(  # another replica (or this one restarted) on the same database
        gateway.app.db,
        gateway.app.channels,
        gateway.app.gateway.media_store,
        GatewaySettings(admin_key_file=tmp_path / "gateway-admin.key", erasure_resume_seconds=0),
        clock,
    )
    restarted.start()
    restarted._resumer.join(60)  # with no period, it stops after its start-up pass
    assert not restarted._resumer.is_alive()
    assert_no_link_left(gateway, account, meta)
