"""Gaps a review of the erasure found, each closed and pinned here: a consent write racing an
erasure, an enrollment whose consent re-check fails, a record after a shred, and a purge whose
last calls only delete idle salts."""

from __future__ import annotations

import grpc
from sqlalchemy import func, select

from mixip.audit.v1 import audit_pb2 as apb
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.retention.v1 import retention_pb2 as rpb
from mixip.runtime.times import to_timestamp
from services.audit.store import SaltActivity, SaltRow
from services.matcher.store import FaceRow
from tests.support import faces
from tests.support.checkpoints import Checkpoints, Outcome
from tests.support.gateway_calls import consent, enroll, upload
from tests.support.status import expect_error

TALENT = "astronaut"


def test_a_consent_write_racing_an_erasure_is_erased_with_the_rest(gateway, clock):
    _, meta = gateway.new_account("studio")
    consent(gateway, meta, clock, TALENT, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    hooks = Checkpoints()
    gateway.app.rights.checkpoint = hooks
    checked = hooks.pause_at("consent.checked")  # after the erasure check, before the write
    write = Outcome(
        lambda: consent(
            gateway, meta, clock, TALENT, cpb.CONSENT_SCOPE_FACE_USAGE, project="film-1"
        ),
        signals=checked,
    )
    checked.reached()
    erasure = Outcome(
        lambda: gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=TALENT), metadata=meta)
    )
    # The erasure cannot begin while the write holds the fence (without it, it would finish
    # here and the write below would outlive it).
    assert not erasure.finishes_within(3)
    checked.release()
    assert write.join().error is None
    assert erasure.join().error is None
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.ExportTalentData,
        pb.ExportTalentDataRequest(talent_id=TALENT),
        metadata=meta,
    )


def test_an_enrollment_whose_consent_recheck_fails_keeps_no_vector(gateway, clock):
    account, meta = gateway.new_account("studio")
    consent(gateway, meta, clock, TALENT, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    hooks = Checkpoints()
    matcher = gateway.mesh.matcher.app
    matcher.matcher.checkpoint = hooks
    inserted = hooks.pause_at("enroll.inserted")
    enrollment = Outcome(lambda: enroll(gateway, meta, TALENT, faces.astronaut()), inserted)
    inserted.reached()
    gateway.mesh.consent.running.stop(0)  # the re-check cannot reach consent
    inserted.release()
    assert isinstance(enrollment.join().error, grpc.RpcError)
    with matcher.db.read() as session:
        left = session.scalar(select(func.count()).where(FaceRow.account_id == account))
    assert left == 0


def test_events_recorded_after_a_shred_leave_no_activity_row_for_the_talent(gateway, clock):
    account, meta = gateway.new_account("studio")
    consent(gateway, meta, clock, TALENT, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    enroll(gateway, meta, TALENT, faces.astronaut())
    upload(gateway, meta, faces.encode(faces.astronaut()), request_id="before")
    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=TALENT), metadata=meta)
    audit = gateway.audit.app
    with audit.db.read() as session:
        assert session.scalar(select(func.count()).select_from(SaltActivity)) == 0
    # An event about the erased talent recorded late (as an upload in flight would).
    gateway.audit.stub.RecordMatchEvents(
        apb.RecordMatchEventsRequest(
            account_id=account,
            events=[
                apb.MatchEventInput(
                    idempotency_key="late:0",
                    project_id="film-1",
                    media_id="late",
                    label=1,
                    reason=1,
                    similarity=0.9,
                    talent_id=TALENT,
                    actor="key",
                    occurred_at=to_timestamp(clock()),
                )
            ],
        )
    )
    with audit.db.read() as session:
        assert session.scalar(select(func.count()).select_from(SaltActivity)) == 0
        assert session.scalar(select(func.count()).select_from(SaltRow)) == 0


def test_a_purge_whose_last_calls_only_delete_idle_salts_succeeds(
    audit_service, retention_factory, retention_peers, clock
):
    for n in range(5):  # five talents: their salts outlast the events by a few batches of 2
        audit_service.stub.RecordMatchEvents(
            apb.RecordMatchEventsRequest(
                account_id="acct",
                events=[
                    apb.MatchEventInput(
                        idempotency_key=f"m{n}:0",
                        project_id="p",
                        media_id=f"m{n}",
                        label=1,
                        reason=1,
                        similarity=0.9,
                        talent_id=f"t-{n}",
                        actor="key",
                        occurred_at=to_timestamp(clock()),
                    )
                ],
            )
        )
    clock.advance(days=400)
    retention = retention_factory(**retention_peers, env={"MIXIP_RETENTION_PURGE_BATCH": "2"})
    report = retention.stub.RunNow(rpb.RunNowRequest(job=rpb.RETENTION_JOB_PURGE)).report
    assert (report.outcome, report.events_purged) == (rpb.RUN_OUTCOME_SUCCEEDED, 5), report.error
    with audit_service.app.db.read() as session:
        assert session.scalar(select(func.count()).select_from(SaltRow)) == 0
