"""Erasure is linearizable with uploads and enrollments about the talent (docs/erasure.md).

Deterministic interleavings: an upload and an enrollment are paused at a step boundary
(checkpoint hooks in the real in-process gateway and matcher), the erasure runs up to one of
its own step boundaries (or to the end), then the paused writers finish inside that gap, then
the erasure finishes. Whatever the interleaving, no link to the talent is left."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import func, select

from gateway.seals import ACCOUNT_SUBJECT, OUTBOX_CONTEXT
from gateway.store import AuditOutboxRow, ErasureIntentRow, ErasureReceiptRow, MediaFaceRow
from mixip.audit.v1 import audit_pb2
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.matcher.v1 import matcher_pb2
from mixip.runtime.config import ADMIN_KEY_FILE
from services.audit.store import EventRow, SaltRow, ShredMarkerRow
from tests.support import faces
from tests.support.checkpoints import Checkpoints, Outcome
from tests.support.gateway_calls import (
    PROJECT,
    consent,
    enroll,
    gateway_vault,
    group_photo,
    upload,
)
from tests.support.status import expect_error

TALENT = "astronaut"
# An upload's last boundary is before its one commit (results and queued audit events).
UPLOAD_POINTS = ["upload.started", "upload.matched"]
ENROLL_POINTS = ["enroll.consented", "enroll.embedded", "enroll.inserted", "enroll.rechecked"]
ERASE_POINTS = ["erase.intent", "erase.consent", "erase.matcher", "erase.delivered", "erase.audit"]


def _writer_pairs() -> list[tuple[str, str]]:
    """Each upload boundary with an enrollment boundary (every one of both is used)."""
    n = max(len(UPLOAD_POINTS), len(ENROLL_POINTS))
    return [
        (UPLOAD_POINTS[i % len(UPLOAD_POINTS)], ENROLL_POINTS[i % len(ENROLL_POINTS)])
        for i in range(n)
    ]


@pytest.fixture
def hooks(gateway) -> Checkpoints:
    hooks = Checkpoints()
    gateway.app.uploads.checkpoint = hooks
    gateway.app.erasures.checkpoint = hooks
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
        assert all(row.talent_ref is None and row.sealed_talent_id is None for row in stored)
        intents = session.scalars(
            select(ErasureIntentRow).where(ErasureIntentRow.account_id == account)
        ).all()
        assert intents and all(
            i.completed_at and i.legacy_talent_id is None and i.sealed_talent_id is None
            for i in intents
        )
    assert gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok


class Interleaving:
    """One case: an upload and an enrollment of the talent, and its erasure, each on its own
    thread, paused and released in the order the test says. The clock moves between actions,
    so every step has its own time (as in production)."""

    def __init__(self, gateway, clock, hooks: Checkpoints, name: str) -> None:
        self.gateway, self.clock, self.hooks, self.name = gateway, clock, hooks, name
        self.account, self.meta = _talent_account(gateway, clock, name)

    def _tick(self) -> None:
        self.clock.advance(seconds=1)

    def start_writers(self, upload_at: str | None, enroll_at: str | None) -> None:
        """Starts the upload and the enrollment, each paused at its point (None: runs on)."""
        gw, meta = self.gateway, self.meta
        self._tick()
        self.upload_pause = self.hooks.pause_at(upload_at) if upload_at else None
        self.uploading = Outcome(lambda: upload(gw, meta, group_photo()), self.upload_pause)
        if self.upload_pause:
            self.upload_pause.reached()
        else:
            self.uploading.join()
        self._tick()
        self.enroll_pause = self.hooks.pause_at(enroll_at) if enroll_at else None
        second_face = faces.scaled(faces.astronaut(), 0.9)
        self.enrolling = Outcome(lambda: enroll(gw, meta, TALENT, second_face), self.enroll_pause)
        if self.enroll_pause:
            self.enroll_pause.reached()
        else:
            self.enrolling.join()

    def finish_writers(self) -> None:
        self._tick()
        if self.enroll_pause:
            self.enroll_pause.release()
        self.enrolling.join()
        self._tick()
        if self.upload_pause:
            self.upload_pause.release()
        self.uploading.join()

    def start_erasure(self, pause_at: str | None) -> None:
        """Starts the erasure, paused at `pause_at` (None: it runs to the end here)."""
        self._tick()
        self.erase_pause = self.hooks.pause_at(pause_at) if pause_at else None
        self.erasing = Outcome(
            lambda: self.gateway.stub.EraseTalent(
                pb.EraseTalentRequest(talent_id=TALENT), metadata=self.meta
            ),
            self.erase_pause,
        )
        if self.erase_pause:
            self.erase_pause.reached()
        else:
            self.erasing.join()

    def finish_erasure(self) -> None:
        self._tick()
        if self.erase_pause:
            self.erase_pause.release()
        self.erasing.join()

    def check(self, *, saw_talent: bool) -> None:
        assert self.erasing.error is None, self.erasing.error
        assert self.uploading.error is None, self.uploading.error
        if self.enrolling.error is not None:  # refused by a consent check
            assert self.enrolling.error.code() == grpc.StatusCode.FAILED_PRECONDITION
        reply = self.uploading.result
        assert all(f.talent_id == "" for f in reply.faces)
        assert all(f.label == common_pb2.FACE_LABEL_UNKNOWN for f in reply.faces)
        stored = self.gateway.stub.GetMediaResults(
            pb.GetMediaResultsRequest(media_id=reply.media_id), metadata=self.meta
        ).media.faces
        erased = [f for f in stored if f.reason == common_pb2.LABEL_REASON_TALENT_ERASED]
        assert len(erased) == (1 if saw_talent else 0)
        assert all(f.similarity == 0 for f in erased)  # fenced or scrubbed: one erased face
        assert all(f.label == common_pb2.FACE_LABEL_UNKNOWN and not f.talent_id for f in stored)
        assert_no_link_left(self.gateway, self.account, self.meta)


def _run(cases, play) -> None:
    for n, case in enumerate(cases):
        try:
            play(n, *case)
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from exc


def test_an_erasure_in_any_gap_of_an_upload_and_an_enrollment_leaves_no_link(gateway, clock, hooks):
    """Writers first: paused at a boundary, the erasure runs to one of its own boundaries (or
    to the end), the writers finish inside that gap, then the erasure finishes."""

    def play(n, erase_at, upload_at, enroll_at):
        case = Interleaving(gateway, clock, hooks, f"writers-first-{n}")
        case.start_writers(upload_at, enroll_at)
        case.start_erasure(erase_at)
        case.finish_writers()
        case.finish_erasure()
        # the match saw the talent unless it ran after consent was erased (then: NO_MATCH)
        case.check(saw_talent=upload_at != "upload.started" or erase_at == "erase.intent")

    _run([(e, u, k) for e in [*ERASE_POINTS, None] for u, k in _writer_pairs()], play)


def test_an_upload_and_an_enrollment_in_any_gap_of_an_erasure_leave_no_link(gateway, clock, hooks):
    """Erasure first: paused at a boundary, the writers start and run to one of their own
    boundaries (or to the end), the erasure finishes, then the writers finish."""

    def play(n, erase_at, upload_at, enroll_at):
        case = Interleaving(gateway, clock, hooks, f"erasure-first-{n}")
        case.start_erasure(erase_at)
        case.start_writers(upload_at, enroll_at)
        case.finish_erasure()
        case.finish_writers()
        # only before the consent step may the match still see the talent
        case.check(saw_talent=erase_at == "erase.intent" and upload_at != "upload.started")

    pairs = [*_writer_pairs(), (None, None)]
    _run([(e, u, k) for e in ERASE_POINTS for u, k in pairs], play)


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
        assert intent.completed_at is None and intent.legacy_talent_id is None
    assert gateway.app.erasures.talent_of(intent) == TALENT  # sealed under the talent's key
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

    assert gateway.app.erasures.resume() == 1  # the caller never retried
    assert gateway.app.erasures.resume() == 0
    with gateway.app.db.read() as session:
        intent = session.get(ErasureIntentRow, intent.intent_id)
        assert intent.sealed_talent_id is None and intent.completed_at is not None
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
    erasures = gateway.app.erasures
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
        gateway.app.media_store,
        GatewaySettings(
            admin_key_file=tmp_path / ADMIN_KEY_FILE,
            erasure_resume_seconds=0,
            vault=gateway_vault(tmp_path),
        ),
        clock,
    )
    restarted.start()
    try:
        # with no period, it stops after its start-up pass
        assert restarted.erasure_resumer.worker.join(60)
        assert_no_link_left(gateway, account, meta)
    finally:  # its workers stop with the test (its channels and database are the fixture's)
        restarted.jobs.stop()
        restarted.audit_outbox.stop()
        restarted.webhook_deliverer.stop()


# -- the audit outbox: queued events and erasures ---------------------------------------------


def _recorded_events(gateway, account: str, media_id: str) -> list[EventRow]:
    with gateway.audit.app.db.read() as session:
        return list(
            session.scalars(
                select(EventRow).where(
                    EventRow.account_id == account, EventRow.media_id == media_id
                )
            )
        )


def _owed(gateway, account: str) -> int:
    with gateway.app.db.read() as session:
        return session.scalar(select(func.count()).where(AuditOutboxRow.account_id == account))


def _check_delivered_before_the_shred(gateway, account: str, meta, reply) -> None:
    """Each of the upload's events recorded once; the talent's hashed (with the salt the
    erasure then destroyed: none is left); no link left; nothing owed."""
    events = _recorded_events(gateway, account, reply.media_id)
    assert sorted(e.face_index for e in events) == sorted(f.face_index for f in reply.faces)
    assert sum(e.talent_hash is not None for e in events) == 1
    assert_no_link_left(gateway, account, meta)  # its reads deliver what is still owed
    assert _owed(gateway, account) == 0


def test_an_erasure_delivers_the_queued_events_before_it_shreds_in_any_gap(gateway, clock, hooks):
    """An upload's events wait in the outbox (the deliverer is stopped); the erasure pauses at
    each of its boundaries and the deliverer runs a full pass inside that gap (or never): the
    events are recorded once, hashed with the salt that then dies."""
    outbox = gateway.app.audit_outbox
    outbox.stop()
    for n, erase_at in enumerate([*ERASE_POINTS, None]):
        account, meta = _talent_account(gateway, clock, f"queued-{n}")
        reply = upload(gateway, meta, group_photo())
        assert TALENT in {f.talent_id for f in reply.faces}
        assert _owed(gateway, account) == len(reply.faces)
        assert _recorded_events(gateway, account, reply.media_id) == []
        clock.advance(seconds=1)
        pause = hooks.pause_at(erase_at) if erase_at else None
        erasing = Outcome(
            lambda meta=meta: gateway.stub.EraseTalent(
                pb.EraseTalentRequest(talent_id=TALENT), metadata=meta
            ),
            pause,
        )
        drained_by_erasure = erase_at in (None, "erase.delivered", "erase.audit")
        if pause:
            pause.reached()
            clock.advance(seconds=1)
            in_gap = outbox.run_once()  # the background deliverer, inside the gap
            assert in_gap == (0 if drained_by_erasure else len(reply.faces))
            pause.release()
        erasing.join()
        assert erasing.error is None, (erase_at, erasing.error)
        steps = {s.name: s.count for s in erasing.result.steps}
        delivered = steps["gateway.deliver_audit_events"]
        assert delivered == (len(reply.faces) if drained_by_erasure else 0), erase_at
        assert _owed(gateway, account) == 0
        _check_delivered_before_the_shred(gateway, account, meta, reply)


def test_a_claim_in_flight_does_not_hold_back_the_erasure(gateway, clock, hooks):
    """The deliverer has claimed the rows and is paused before its call; the erasure delivers
    them anyway (leases do not bind it), then shreds; the late call changes nothing."""
    outbox = gateway.app.audit_outbox
    outbox.stop()
    outbox.checkpoint = hooks
    account, meta = _talent_account(gateway, clock, "in-flight")
    reply = upload(gateway, meta, group_photo())
    claimed = hooks.pause_at("outbox.claimed")
    delivering = Outcome(outbox.run_once, claimed)
    claimed.reached()
    clock.advance(seconds=1)
    receipt = gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=TALENT), metadata=meta)
    steps = {s.name: s.count for s in receipt.steps}
    assert steps["gateway.deliver_audit_events"] == len(reply.faces)
    claimed.release()
    delivering.join()
    assert delivering.error is None
    assert delivering.result == 0  # a repeat the audit service refuses: its rows are gone
    _check_delivered_before_the_shred(gateway, account, meta, reply)
    assert outbox.run_once() == 0


def test_an_upload_committing_after_the_drain_queues_no_event_about_the_talent(
    gateway, clock, hooks
):
    """An upload matched the talent before the erasure, and commits between the drain and the
    shred: the fence (in the same transaction) keeps the talent out of its results and of its
    queued events."""
    outbox = gateway.app.audit_outbox
    outbox.stop()
    account, meta = _talent_account(gateway, clock, "after-drain")
    first = upload(gateway, meta, group_photo())
    matched = hooks.pause_at("upload.matched")
    late = Outcome(lambda: upload(gateway, meta, group_photo()), matched)
    matched.reached()
    clock.advance(seconds=1)
    drained = hooks.pause_at("erase.delivered")
    erasing = Outcome(
        lambda: gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=TALENT), metadata=meta),
        drained,
    )
    drained.reached()
    clock.advance(seconds=1)
    matched.release()
    late.join()
    try:
        assert late.error is None
        assert all(not f.talent_id for f in late.result.faces)
        with gateway.app.db.read() as session:
            keys = gateway.app.vault.talent_keys(session, account, [ACCOUNT_SUBJECT], create=False)
            key = keys[ACCOUNT_SUBJECT]
            queued = [
                audit_pb2.MatchEventInput.FromString(key.open(e, OUTBOX_CONTEXT))
                for e in session.scalars(
                    select(AuditOutboxRow.sealed_event).where(AuditOutboxRow.account_id == account)
                )
            ]
        assert len(queued) == len(late.result.faces) and all(not e.talent_id for e in queued)
        assert any(e.reason == common_pb2.LABEL_REASON_TALENT_ERASED for e in queued)
    finally:
        drained.release()
    erasing.join()
    assert erasing.error is None
    _check_delivered_before_the_shred(gateway, account, meta, first)
    late_events = _recorded_events(gateway, account, late.result.media_id)
    assert len(late_events) == len(late.result.faces)  # delivered by the check's reads
    assert all(e.talent_hash is None for e in late_events)
