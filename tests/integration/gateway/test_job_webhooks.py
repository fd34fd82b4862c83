"""Job webhooks (docs/webhooks.md): every end of a job (done, failed, cancelled) is owed to the
account's endpoints in the transaction that ends it, so a job ended by a race is announced once.

A real receiver on a loopback port (the development setting allows it) verifies every delivery
with the `standardwebhooks` library and deduplicates by webhook-id. The races are interleaved
deterministically: the app's worker is paused at a checkpoint while the test cancels the job or
another worker takes it over, then released; stopping the worker joins its thread."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from gateway.jobs import Jobs
from gateway.store import WebhookDeliveryRow
from mixip.gateway.v1 import gateway_pb2 as pb
from tests.conftest import FakeClock
from tests.property.test_bad_input import _png_claiming
from tests.support import faces
from tests.support.checkpoints import Checkpoints
from tests.support.gateway_calls import PROJECT, finished_job, start_job
from tests.support.webhooks import Receiver, receiving


@pytest.fixture
def clock() -> FakeClock:
    """The real time: a receiver refuses signatures more than five minutes off its clock."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def gateway_overrides() -> dict:
    return {"webhooks_allow_private": True, "webhooks_timeout_seconds": 5.0}


@pytest.fixture
def receiver():
    with receiving() as receiver:
        yield receiver


@pytest.fixture
def hooks(gateway) -> Checkpoints:
    hooks = Checkpoints()
    gateway.app.jobs.checkpoint = hooks
    return hooks


@pytest.fixture
def endpoint(gateway, studio, receiver) -> str:
    """An endpoint of the studio's for every job event; its secret."""
    _, meta = studio
    request = pb.AddWebhookRequest(
        url=receiver.url, event_types=["job.completed", "job.failed", "job.cancelled"]
    )
    return gateway.stub.AddWebhook(request, metadata=meta).secret


def _owed(gateway) -> list[WebhookDeliveryRow]:
    with gateway.app.db.read() as session:
        return list(session.scalars(select(WebhookDeliveryRow).order_by(WebhookDeliveryRow.id)))


def _delivered(gateway, receiver: Receiver, secret: str, count: int) -> dict[str, dict]:
    """Once `count` events are owed and every one was delivered: the received events,
    verified and deduplicated (webhook-id -> payload)."""
    receiver.wait_for(count)
    gateway.app.webhook_deliverer.stop()  # its pass has finished: nothing is in flight
    owed = _owed(gateway)
    assert len(owed) == count and {r.state for r in owed} == {"delivered"}
    events = receiver.events(secret)
    assert set(events) == {r.message_id for r in owed}
    return events


def test_each_end_of_a_job_is_delivered_once_signed_and_thin(gateway, studio, endpoint, receiver):
    account, meta = studio
    done = start_job(gateway, meta, faces.encode(faces.astronaut()), filename="astronaut.jpg")
    assert finished_job(gateway, meta, done.job_id).state == pb.JOB_STATE_DONE
    refused = start_job(gateway, meta, _png_claiming(40_000, 40_000))
    assert finished_job(gateway, meta, refused.job_id).state == pb.JOB_STATE_FAILED
    events = _delivered(gateway, receiver, endpoint, 2)
    assert sorted((e["type"], e["data"]["job_id"]) for e in events.values()) == sorted(
        [("job.completed", done.job_id), ("job.failed", refused.job_id)]
    )
    completed = next(e for e in events.values() if e["type"] == "job.completed")
    assert completed["data"] == {
        "account_id": account,
        "job_id": done.job_id,
        "media_id": done.media_id,
        "project_id": PROJECT,
        "state": "done",
    }
    for request in receiver.requests:  # ids only: no talent, no file name, no face data
        assert b"astronaut" not in request.body and b"talent" not in request.body
        assert b"similarity" not in request.body and b"faces" not in request.body
    with gateway.app.db.write() as session, pytest.raises(ValueError, match="state is one of"):
        gateway.app.webhooks.emit(session, account, "job.failed", {"state": "astronaut"})


def test_a_job_cancelled_while_its_worker_commits_is_announced_cancelled_once(
    gateway, studio, endpoint, receiver, hooks
):
    _, meta = studio
    matched = hooks.pause_at("job.matched")
    started = start_job(gateway, meta, faces.encode(faces.astronaut()))
    matched.reached()
    gateway.stub.CancelJob(pb.CancelJobRequest(job_id=started.job_id), metadata=meta)
    matched.release()  # the worker's commit finds the job cancelled: it rolls back, event too
    gateway.app.jobs.stop()
    again = gateway.stub.CancelJob(pb.CancelJobRequest(job_id=started.job_id), metadata=meta)
    assert again.job.state == pb.JOB_STATE_CANCELLED  # an ended job is not ended again
    [event] = _delivered(gateway, receiver, endpoint, 1).values()
    assert event["type"] == "job.cancelled"
    assert (event["data"]["job_id"], event["data"]["state"]) == (started.job_id, "cancelled")


def test_a_cancel_after_the_commit_changes_nothing_and_sends_nothing(
    gateway, studio, endpoint, receiver
):
    _, meta = studio
    started = start_job(gateway, meta, faces.encode(faces.astronaut()))
    assert finished_job(gateway, meta, started.job_id).state == pb.JOB_STATE_DONE
    late = gateway.stub.CancelJob(pb.CancelJobRequest(job_id=started.job_id), metadata=meta)
    assert late.job.state == pb.JOB_STATE_DONE
    [event] = _delivered(gateway, receiver, endpoint, 1).values()
    assert event["type"] == "job.completed"


def test_a_job_taken_over_from_a_stalled_worker_is_announced_completed_once(
    gateway, studio, endpoint, receiver, hooks, clock
):
    _, meta = studio
    app = gateway.app
    stalled = hooks.pause_at("job.matched")  # the app's worker stops here and never renews
    started = start_job(gateway, meta, faces.encode(faces.astronaut()))
    stalled.reached()
    other = Jobs(app.db, app.uploads, app.media_store, app.projects, clock, app.webhooks)
    clock.advance(seconds=61)  # past the stalled worker's lease
    assert other.run_once()
    stalled.release()  # it wakes up: its commit finds the job not its own and keeps nothing
    app.jobs.stop()
    [event] = _delivered(gateway, receiver, endpoint, 1).values()
    assert (event["type"], event["data"]["job_id"]) == ("job.completed", started.job_id)
