"""The audit outbox (gateway/audit_outbox.py): an upload's audit events are queued in its own
commit and delivered by a background deliverer, at least once and recorded once; a reader's
drain delivers the caller's queued events first. How an erasure drains it is proven with the
erasure (test_erasure_fence.py)."""

from __future__ import annotations

import json

import grpc
import pytest
from sqlalchemy import select

from mixip.gateway.v1 import gateway_pb2 as pb
from services.audit.store import EventRow
from tests.integration.gateway.test_erasure_fence import (
    TALENT,
    _owed,
    _recorded_events,
    _talent_account,
)
from tests.integration.gateway.test_gateway import media_rows
from tests.support.checkpoints import Checkpoints, Outcome
from tests.support.gateway_calls import group_photo, upload


@pytest.fixture
def hooks(gateway) -> Checkpoints:
    """Pauses the deliverer at its steps ("outbox.claimed", "outbox.draining")."""
    hooks = Checkpoints()
    gateway.app.audit_outbox.checkpoint = hooks
    return hooks


def test_audit_down_the_upload_succeeds_and_its_events_wait_in_the_outbox(
    gateway, studio, serve, clock
):
    """The contract: results are returned only with their audit events durably queued in the
    same commit; while audit is down the queue grows (the gauges say so), and the events are
    delivered once it is back."""
    account, meta = studio
    outbox = gateway.app.audit_outbox
    outbox.stop()  # this test delivers by hand
    gateway.audit.running.stop(0)
    reply = upload(gateway, meta, group_photo())
    assert len(reply.faces) == 2 and media_rows(gateway) == (1, 2)
    assert outbox.run_once() == 0  # audit is down: nothing delivered, nothing lost
    clock.advance(minutes=1)
    depth, age = outbox.backlog()
    assert depth == 2 and age >= 60
    assert _gauges(gateway)["mixip_gateway_audit_outbox_depth"] == 2
    assert _gauges(gateway)["mixip_gateway_audit_outbox_oldest_age_seconds"] >= 60

    serve(gateway.audit.app, listen=gateway.audit.address)  # audit comes back
    grpc.channel_ready_future(gateway.app.channels["audit"]).result(timeout=15)
    clock.advance(minutes=1)  # past the retry backoff
    assert outbox.run_once() == 2
    assert outbox.backlog() == (0, 0.0)
    with gateway.audit.app.db.read() as session:
        recorded = session.scalars(
            select(EventRow.idempotency_key).where(EventRow.account_id == account)
        ).all()
    assert sorted(recorded) == [f"{reply.media_id}:{f.face_index}" for f in reply.faces]


def _gauges(gateway) -> dict[str, float]:
    from prometheus_client import REGISTRY

    return {
        name: REGISTRY.get_sample_value(name) or 0.0
        for name in (
            "mixip_gateway_audit_outbox_depth",
            "mixip_gateway_audit_outbox_oldest_age_seconds",
        )
    }


def test_two_deliverers_share_the_queue_and_a_double_delivery_is_recorded_once(
    gateway, clock, hooks
):
    """Another replica's deliverer skips rows claimed by this one; a drain while the claim is
    in flight delivers them twice, and the audit log holds each event once."""
    from gateway.audit_outbox import AuditOutbox

    outbox = gateway.app.audit_outbox
    outbox.stop()
    outbox.checkpoint = hooks
    other = AuditOutbox(gateway.app.db, outbox.audit, clock, outbox.seals)
    account, meta = gateway.new_account("replicas")
    reply = upload(gateway, meta, group_photo())
    claimed = hooks.pause_at("outbox.claimed")
    delivering = Outcome(outbox.run_once, claimed)
    claimed.reached()
    assert other.run_once() == 0  # claimed by the first replica
    assert other.drain(account) == len(reply.faces)  # a reader's drain ignores claims
    claimed.release()
    delivering.join()
    assert delivering.error is None and delivering.result == len(reply.faces)
    events = _recorded_events(gateway, account, reply.media_id)
    assert len(events) == len(reply.faces)
    assert _owed(gateway, account) == 0


def test_reading_verifying_and_exporting_deliver_the_callers_queued_events_first(gateway, clock):
    outbox = gateway.app.audit_outbox
    outbox.stop()
    account, meta = _talent_account(gateway, clock, "reads")
    other, other_meta = _talent_account(gateway, clock, "others")
    upload(gateway, meta, group_photo())
    upload(gateway, other_meta, group_photo())
    listed = gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=meta)
    assert len(listed.events) == 2
    assert _owed(gateway, account) == 0 and _owed(gateway, other) == 2  # only the caller's
    upload(gateway, meta, group_photo())
    verdict = gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta)
    assert verdict.ok and verdict.events_checked == 4
    upload(gateway, meta, group_photo())
    exported = gateway.stub.ExportTalentData(
        pb.ExportTalentDataRequest(talent_id=TALENT), metadata=meta
    )
    assert len(json.loads(exported.document_json)["audit_events"]) == 3
    assert _owed(gateway, account) == 0 and _owed(gateway, other) == 2


def test_a_drain_delivers_what_was_queued_when_it_began(gateway, clock, hooks):
    """Uploads that commit while a reader's drain runs are left to the deliverer: a steady
    stream of uploads cannot keep the reader waiting."""
    outbox = gateway.app.audit_outbox
    outbox.stop()
    outbox.checkpoint = hooks
    account, meta = gateway.new_account("stream")
    first = upload(gateway, meta, group_photo())
    began = hooks.pause_at("outbox.draining")
    draining = Outcome(lambda: outbox.drain(account), began)
    began.reached()
    second = upload(gateway, meta, group_photo())
    began.release()
    draining.join()
    assert draining.error is None and draining.result == len(first.faces)
    assert _owed(gateway, account) == len(second.faces)
    assert len(_recorded_events(gateway, account, first.media_id)) == len(first.faces)
    assert _recorded_events(gateway, account, second.media_id) == []


def test_an_uploads_commit_wakes_the_deliverer_which_delivers_without_a_reader(gateway, clock):
    """The deliverer polls only once an hour here: what delivers the upload's events is the
    wake of its commit (then the linger, then one pass), not a poll and not a reader's drain."""
    outbox = gateway.app.audit_outbox
    outbox.stop()
    outbox.worker.poll_seconds = 3600.0
    steps = Checkpoints()
    outbox.worker.checkpoint = steps
    idle = steps.pause_at("worker.waiting")
    outbox.start()
    idle.reached()  # the first pass found nothing; the hour's wait is next
    delivered = steps.pause_at("worker.waiting")
    idle.release()
    account, meta = gateway.new_account("woken")
    reply = upload(gateway, meta, group_photo())
    delivered.reached()
    try:
        assert len(_recorded_events(gateway, account, reply.media_id)) == len(reply.faces)
        assert _owed(gateway, account) == 0
        assert steps.passed.count("worker.running") == 2
    finally:
        delivered.release()
        outbox.stop()
