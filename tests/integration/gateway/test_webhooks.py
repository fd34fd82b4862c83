"""Webhooks end to end: a real receiver on a loopback port (the development setting allows it)
verifies every delivery with the `standardwebhooks` library and deduplicates by webhook-id.

The gateway's clock starts at the real time here: a receiver refuses signatures more than five
minutes off its own clock, and tests move the gateway's clock forward through the retry
schedule."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook as Signer

from gateway.store import WebhookDeliveryRow
from gateway.webhook_delivery import RETRY_DELAYS, WebhookDeliverer
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from tests.conftest import FakeClock
from tests.support.gateway_calls import consent
from tests.support.status import expect_error
from tests.support.webhooks import receiving


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def gateway_overrides() -> dict:
    return {"webhooks_allow_private": True, "webhooks_timeout_seconds": 5.0}


@pytest.fixture
def receiver():
    with receiving() as receiver:
        yield receiver


@pytest.fixture
def account(gateway, clock):
    """An account that knows the astronaut (one consent), so that erasing her is an erasure."""
    account_id, meta = gateway.new_account("studio")
    consent(gateway, meta, clock, "astronaut", cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    return account_id, meta


def add(gateway, meta, url, *events, **fields) -> pb.AddWebhookResponse:
    request = pb.AddWebhookRequest(url=url, event_types=events, **fields)
    return gateway.stub.AddWebhook(request, metadata=meta)


def deliveries(gateway, webhook_id: str) -> list[WebhookDeliveryRow]:
    with gateway.app.db.read() as session:
        return list(
            session.scalars(
                select(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.webhook_id == webhook_id)
                .order_by(WebhookDeliveryRow.id)
            )
        )


@pytest.fixture
def by_hand(gateway):
    """The gateway's own deliverer stopped: the test runs its passes (`run_once`)."""
    deliverer = gateway.app.webhook_deliverer
    deliverer.stop()
    return deliverer


def test_an_erasure_is_seen_once_after_dedup_though_the_first_attempt_got_a_500(
    gateway, clock, account, receiver
):
    account_id, meta = account
    added = add(gateway, meta, receiver.url, "erasure.completed")
    assert added.secret.startswith("whsec_")
    receiver.statuses = [500]
    erased = gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta)
    [first] = receiver.wait_for(1)  # the erasure's commit woke the deliverer
    deliverer = gateway.app.webhook_deliverer
    deliverer.stop()  # once its pass has recorded the 500, the test runs the next passes
    assert deliverer.run_once() == 0  # the retry waits for its 5 s
    clock.advance(seconds=5)
    assert deliverer.run_once() == 1
    first, second = receiver.wait_for(2)
    assert first.message_id == second.message_id
    assert first.body == second.body  # the same event, signed again at its attempt's time
    events = receiver.events(added.secret)  # every attempt verifies
    [event] = events.values()
    assert event["type"] == "erasure.completed"
    assert event["data"] == {"account_id": account_id, "erasure_id": erased.receipt_id}
    # thin: ids only, never the talent
    assert b"astronaut" not in first.body and b"talent" not in first.body
    [row] = deliveries(gateway, added.webhook.webhook_id)
    assert (row.state, row.attempts, row.last_outcome) == ("delivered", 2, "HTTP 200")
    assert "astronaut" not in row.payload


def test_a_410_disables_the_endpoint_and_nothing_more_is_sent(gateway, account, receiver):
    _, meta = account
    webhook_id = add(gateway, meta, receiver.url).webhook.webhook_id
    receiver.statuses = [410]
    gateway.stub.TestWebhook(pb.TestWebhookRequest(webhook_id=webhook_id), metadata=meta)
    receiver.wait_for(1)
    gateway.app.webhook_deliverer.stop()  # its pass has finished: the endpoint is disabled
    [listed] = gateway.stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=meta).webhooks
    assert listed.HasField("disabled_at")
    disabled = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        gateway.stub.TestWebhook,
        pb.TestWebhookRequest(webhook_id=webhook_id),
        metadata=meta,
    )
    assert disabled.reason == "WEBHOOK_DISABLED"
    gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id="astronaut"), metadata=meta)
    assert [r.state for r in deliveries(gateway, webhook_id)] == ["disabled"]
    assert gateway.app.webhook_deliverer.run_once() == 0
    assert len(receiver.requests) == 1


def test_during_a_rotation_the_old_secret_and_the_new_one_both_verify(
    gateway, clock, account, receiver, by_hand
):
    _, meta = account
    added = add(gateway, meta, receiver.url)
    webhook_id, old = added.webhook.webhook_id, added.secret
    request = pb.RotateWebhookSecretRequest(webhook_id=webhook_id, request_id="rot-1")
    rotated = gateway.stub.RotateWebhookSecret(request, metadata=meta)
    new = rotated.secret
    assert new != old and new.startswith("whsec_")
    assert gateway.stub.RotateWebhookSecret(request, metadata=meta).secret == new  # a retry
    expires = rotated.webhook.previous_secret_expires_at.ToDatetime(tzinfo=UTC)
    assert expires == clock.now.replace(microsecond=0) + gateway.app.webhooks.overlap
    gateway.stub.TestWebhook(pb.TestWebhookRequest(webhook_id=webhook_id), metadata=meta)
    assert by_hand.run_once() == 1
    [during] = receiver.wait_for(1)
    assert len(during.signatures) == 2
    for secret in (old, new):  # a receiver that has either secret verifies
        assert during.verified_by(secret)["type"] == "webhook.test"
    clock.advance(hours=24, seconds=1)  # the overlap is over: the new secret alone signs
    gateway.stub.TestWebhook(pb.TestWebhookRequest(webhook_id=webhook_id), metadata=meta)
    assert by_hand.run_once() == 1
    after = receiver.wait_for(2)[1]
    signed_at = datetime.fromtimestamp(int(after.headers["webhook-timestamp"]), UTC)
    assert signed_at == clock.now
    assert after.signatures == [Signer(new).sign(after.message_id, signed_at, after.body)]
    assert Signer(old).sign(after.message_id, signed_at, after.body) not in after.signatures


def test_failures_are_retried_on_the_standard_schedule_then_given_up(
    gateway, clock, account, receiver, by_hand
):
    _, meta = account
    webhook_id = add(gateway, meta, receiver.url).webhook.webhook_id
    receiver.statuses = [500] * 3 + [302] * 2 + [404] * 3  # a redirect is not followed
    gateway.stub.TestWebhook(pb.TestWebhookRequest(webhook_id=webhook_id), metadata=meta)
    for attempt, delay in enumerate(RETRY_DELAYS, start=1):
        assert by_hand.run_once() == 1
        [row] = deliveries(gateway, webhook_id)
        assert (row.state, row.attempts) == ("pending", attempt)
        assert row.due_at == clock.now + delay
        clock.advance(seconds=delay.total_seconds() - 1)
        assert by_hand.run_once() == 0  # not yet due
        clock.advance(seconds=1)
    assert by_hand.run_once() == 1  # the 8th attempt, the last
    [row] = deliveries(gateway, webhook_id)
    assert (row.state, row.attempts, row.last_outcome) == ("failed", 8, "HTTP 404")
    assert len({r.message_id for r in receiver.wait_for(8)}) == 1
    assert [r.path for r in receiver.requests] == ["/hooks"] * 8


def test_a_closed_port_and_a_timeout_are_retried(gateway, clock, account, receiver, by_hand):
    _, meta = account
    closed = add(gateway, meta, "http://127.0.0.1:9/nothing-listens").webhook.webhook_id
    gateway.stub.TestWebhook(pb.TestWebhookRequest(webhook_id=closed), metadata=meta)
    assert by_hand.run_once() == 1
    [row] = deliveries(gateway, closed)
    assert (row.state, row.attempts, row.last_outcome) == ("pending", 1, "connection failed")
    gateway.stub.RemoveWebhook(pb.RemoveWebhookRequest(webhook_id=closed), metadata=meta)
    assert deliveries(gateway, closed) == []  # its deliveries went with it
    slow = add(gateway, meta, receiver.url).webhook.webhook_id
    gateway.stub.TestWebhook(pb.TestWebhookRequest(webhook_id=slow), metadata=meta)
    receiver.hold = threading.Event()  # the receiver takes the request and does not answer
    impatient = WebhookDeliverer(
        gateway.app.db, clock, by_hand.seals, timeout_seconds=0.2, allow_private=True
    )
    try:
        assert impatient.run_once() == 1
    finally:
        receiver.hold.set()
    assert len(receiver.wait_for(1)) == 1
    [row] = deliveries(gateway, slow)
    assert (row.state, row.attempts, row.last_outcome) == ("pending", 1, "timeout")


def test_a_name_resolving_into_the_mesh_is_refused_at_delivery(
    gateway, clock, account, receiver, by_hand
):
    """The URL passed AddWebhook's checks (a name is not resolved there); at delivery the name
    resolves to loopback and a deliverer without the development setting sends nothing."""
    account_id, _ = account
    url = receiver.url.replace("127.0.0.1", "localhost")
    webhook, _ = gateway.app.webhooks.add(account_id, url, [], "")
    gateway.app.webhooks.test(account_id, webhook.webhook_id)
    strict = WebhookDeliverer(gateway.app.db, clock, by_hand.seals)
    assert strict.run_once() == 1
    [row] = deliveries(gateway, webhook.webhook_id)
    assert (row.state, row.last_outcome) == ("pending", "address refused")
    assert receiver.requests == []


def test_replicas_never_send_a_leased_delivery_and_a_dead_ones_is_sent_again(
    gateway, clock, account, receiver, by_hand
):
    """At least once, never twice in the normal case: a claimed delivery is leased (another
    replica skips it); a replica that dies after its claim leaves the lease to expire, and the
    next sends the delivery with the same webhook-id."""
    _, meta = account
    added = add(gateway, meta, receiver.url)
    gateway.stub.TestWebhook(
        pb.TestWebhookRequest(webhook_id=added.webhook.webhook_id), metadata=meta
    )
    other = WebhookDeliverer(gateway.app.db, clock, by_hand.seals, allow_private=True)
    claimed, go_on = threading.Event(), threading.Event()

    def pause(name: str) -> None:
        claimed.set()
        assert go_on.wait(30)

    by_hand.checkpoint = pause
    first = threading.Thread(target=by_hand.run_once)
    first.start()
    assert claimed.wait(30)
    assert other.run_once() == 0  # leased by the first replica
    go_on.set()
    first.join()
    [sent] = receiver.wait_for(1)

    def die(name: str) -> None:
        raise SystemExit("the replica dies after its claim")

    gateway.stub.TestWebhook(
        pb.TestWebhookRequest(webhook_id=added.webhook.webhook_id), metadata=meta
    )
    by_hand.checkpoint = die
    with pytest.raises(SystemExit):
        by_hand.run_once()
    assert other.run_once() == 0
    clock.advance(seconds=by_hand.lease.total_seconds())
    assert other.run_once() == 1
    again = receiver.wait_for(2)[1]
    assert again.message_id != sent.message_id and len(receiver.events(added.secret)) == 2
    assert [r.state for r in deliveries(gateway, added.webhook.webhook_id)] == ["delivered"] * 2


def test_finished_deliveries_are_purged_after_the_retention_period(
    gateway, clock, account, receiver, by_hand
):
    _, meta = account
    webhook_id = add(gateway, meta, receiver.url).webhook.webhook_id
    gateway.stub.TestWebhook(pb.TestWebhookRequest(webhook_id=webhook_id), metadata=meta)
    assert by_hand.run_once() == 1  # delivered
    receiver.statuses = [500]
    gateway.stub.TestWebhook(pb.TestWebhookRequest(webhook_id=webhook_id), metadata=meta)
    assert by_hand.run_once() == 1  # owed still
    clock.advance(days=30)
    assert by_hand.purge(clock.now) == 0  # finished exactly 30 days ago: kept
    clock.advance(seconds=1)
    assert by_hand.purge(clock.now) == 1
    assert [r.state for r in deliveries(gateway, webhook_id)] == ["pending"]


def test_a_webhook_is_the_accounts_own_and_its_payloads_are_ids_only(gateway, account):
    account_id, meta = account
    _, other_meta = gateway.new_account("other")
    url = "http://127.0.0.1:9/hooks"
    first = add(gateway, meta, url, "erasure.completed", request_id="add-1")
    again = add(gateway, meta, url, "erasure.completed", request_id="add-1")
    assert (again.webhook, again.secret) == (first.webhook, first.secret)
    reused = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, add, gateway, meta, url + "/x", request_id="add-1"
    )
    assert reused.reason == "IDEMPOTENCY_KEY_REUSED"
    listed = gateway.stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=other_meta).webhooks
    assert list(listed) == []
    for call, request in (
        (gateway.stub.TestWebhook, pb.TestWebhookRequest(webhook_id=first.webhook.webhook_id)),
        (gateway.stub.RemoveWebhook, pb.RemoveWebhookRequest(webhook_id=first.webhook.webhook_id)),
    ):
        expect_error(grpc.StatusCode.NOT_FOUND, call, request, metadata=other_meta)
    with gateway.app.db.write() as session, pytest.raises(ValueError, match="ids only"):
        gateway.app.webhooks.emit(session, account_id, "job.completed", {"talent_id": "x"})
