"""Analysis as jobs (docs/jobs.md): an upload made `as_job` answers with a job that the
gateway's worker runs; watched, cancelled, listed, taken over by another worker when its
worker dies, fenced by erasures, purged after the retention period.

Interleavings are deterministic: the app's worker is paused at a checkpoint ("job.claimed",
"job.matched"), the test acts, then releases it; stopping the worker joins its thread, so what
the attempt left is there to check."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import func, select

from gateway.jobs import Jobs
from gateway.store import AuditOutboxRow, JobRow, MediaFaceRow, MediaRow
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2 as pb
from tests.integration.gateway.test_erasure_fence import _talent_account, assert_no_link_left
from tests.property.test_bad_input import _png_claiming
from tests.support import faces
from tests.support.checkpoints import Checkpoints, Outcome
from tests.support.gateway_calls import PROJECT, finished_job, invite, start_job, upload
from tests.support.status import expect_error

TALENT = "astronaut"
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


@pytest.fixture
def hooks(gateway) -> Checkpoints:
    hooks = Checkpoints()
    gateway.app.jobs.checkpoint = hooks
    return hooks


def _stored_keys(gateway) -> set[str]:
    return {key for _, key in gateway.app.media_store.stale_keys(FAR_FUTURE)}


def _rows(gateway, model, account: str) -> int:
    with gateway.app.db.read() as session:
        return int(session.scalar(select(func.count()).where(model.account_id == account)) or 0)


def _get(gateway, meta, job_id: str) -> pb.Job:
    return gateway.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=meta).job


def test_a_job_is_watched_from_its_start_to_done_and_its_results_are_the_medias(
    gateway, studio, hooks
):
    _, meta = studio
    claimed = hooks.pause_at("job.claimed")
    started = start_job(gateway, meta, faces.encode(faces.astronaut()), filename="take-1.jpg")
    assert started.job_id and started.media_id and not started.faces
    claimed.reached()
    watch = gateway.stub.WatchJob(pb.WatchJobRequest(job_id=started.job_id), metadata=meta)
    first = next(watch).job  # at once, while the worker is paused
    assert first.state == pb.JOB_STATE_RUNNING and first.attempts == 1
    assert (first.frames_done, first.percent, first.eta_seconds) == (0, 0.0, 0.0)
    expect_error(  # no results before the job is done
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.GetMediaResults,
        pb.GetMediaResultsRequest(media_id=started.media_id),
        metadata=meta,
    )
    claimed.release()
    rest = [event for event in watch]
    last = rest[-1].job
    assert last.state == pb.JOB_STATE_DONE and last.finished_at.seconds
    assert (last.frames_done, last.frames_total, last.percent) == (1, 1, 100.0)
    for event in [first, *(e.job for e in rest)]:  # progress names no talent
        assert TALENT.encode() not in event.SerializeToString()
    results = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=started.media_id), metadata=meta
    ).media
    assert [f.talent_id for f in results.faces] == [TALENT]
    assert results.project_id == PROJECT
    assert _get(gateway, meta, started.job_id) == last
    listed = gateway.stub.ListMedia(pb.ListMediaRequest(project_id=PROJECT), metadata=meta).media
    assert [(m.media_id, m.filename) for m in listed] == [(started.media_id, "take-1.jpg")]
    with gateway.app.db.read() as session:  # the job row kept no file name
        ended = session.get(JobRow, started.job_id)
        assert (ended.filename_ref, ended.sealed_filename) == (None, None)


def test_a_retried_start_returns_the_first_job_and_jobs_are_listed_newest_first(
    gateway, studio, clock
):
    _, meta = studio
    first = start_job(gateway, meta, faces.encode(faces.astronaut()), request_id="r-1")
    again = start_job(gateway, meta, faces.encode(faces.astronaut()), request_id="r-1")
    assert again.job_id == first.job_id
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,  # the request id names other content
        start_job,
        gateway,
        meta,
        faces.encode(faces.grace_hopper()),
        request_id="r-1",
    )
    clock.advance(seconds=1)
    second = start_job(gateway, meta, faces.encode(faces.grace_hopper()))
    page = gateway.stub.ListJobs(pb.ListJobsRequest(project_id=PROJECT, page_size=1), metadata=meta)
    assert [j.job_id for j in page.jobs] == [second.job_id]
    rest = gateway.stub.ListJobs(
        pb.ListJobsRequest(project_id=PROJECT, page_size=1, page_token=page.next_page_token),
        metadata=meta,
    )
    assert [j.job_id for j in rest.jobs] == [first.job_id] and not rest.next_page_token


def test_a_job_cancelled_mid_match_leaves_no_media_result_event_or_bytes(gateway, studio, hooks):
    account, meta = studio
    matched = hooks.pause_at("job.matched")
    started = start_job(gateway, meta, faces.encode(faces.astronaut()))
    matched.reached()
    assert len(_stored_keys(gateway)) == 1
    cancelled = gateway.stub.CancelJob(pb.CancelJobRequest(job_id=started.job_id), metadata=meta)
    assert cancelled.job.state == pb.JOB_STATE_CANCELLED
    matched.release()
    gateway.app.jobs.stop()  # the attempt ends: it found the job cancelled at its commit
    assert _get(gateway, meta, started.job_id).state == pb.JOB_STATE_CANCELLED
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.GetMediaResults,
        pb.GetMediaResultsRequest(media_id=started.media_id),
        metadata=meta,
    )
    for model in (MediaRow, MediaFaceRow, AuditOutboxRow):
        assert _rows(gateway, model, account) == 0, model.__tablename__
    events = gateway.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(project_id=PROJECT), metadata=meta
    )
    assert list(events.events) == []
    assert _stored_keys(gateway) == set()
    again = gateway.stub.CancelJob(pb.CancelJobRequest(job_id=started.job_id), metadata=meta)
    assert again.job == cancelled.job  # an ended job is returned as it is


def test_a_worker_that_dies_mid_job_loses_its_lease_and_another_completes_it_exactly_once(
    gateway, studio, hooks, clock
):
    account, meta = studio
    app = gateway.app
    dying = hooks.pause_at("job.matched")  # the app's worker stops here and never renews
    started = start_job(gateway, meta, faces.encode(faces.astronaut()))
    dying.reached()
    other = Jobs(app.db, app.uploads, app.media_store, app.projects, clock, app.webhooks)
    assert not other.run_once(), "the lease still holds"
    clock.advance(seconds=61)  # past the dead worker's lease
    assert other.run_once()
    done = _get(gateway, meta, started.job_id)
    assert (done.state, done.attempts) == (pb.JOB_STATE_DONE, 2)
    dying.release()  # the first worker wakes up: its commit finds the job is not its own
    app.jobs.stop()
    assert _get(gateway, meta, started.job_id) == done
    assert _rows(gateway, MediaRow, account) == 1
    assert _rows(gateway, MediaFaceRow, account) == 1
    app.audit_outbox.drain(account)
    events = gateway.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(project_id=PROJECT), metadata=meta
    ).events
    assert [e.media_id for e in events] == [started.media_id]  # one face, one event
    assert len(_stored_keys(gateway)) == 1


def test_a_job_that_finishes_after_an_erasure_of_its_talent_links_nothing(gateway, clock, hooks):
    account, meta = _talent_account(gateway, clock, "studio")
    matched = hooks.pause_at("job.matched")
    started = start_job(gateway, meta, faces.encode(faces.astronaut()), filename="astronaut.jpg")
    matched.reached()  # the match named the talent
    clock.advance(seconds=1)
    erased = Outcome(
        lambda: gateway.stub.EraseTalent(pb.EraseTalentRequest(talent_id=TALENT), metadata=meta)
    ).join()
    assert erased.error is None
    clock.advance(seconds=1)
    matched.release()
    gateway.app.jobs.stop()
    assert _get(gateway, meta, started.job_id).state == pb.JOB_STATE_DONE
    media = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=started.media_id), metadata=meta
    ).media
    assert [(f.label, f.reason, f.talent_id) for f in media.faces] == [
        (common_pb2.FACE_LABEL_UNKNOWN, common_pb2.LABEL_REASON_TALENT_ERASED, "")
    ]
    listed = gateway.stub.ListMedia(pb.ListMediaRequest(project_id=PROJECT), metadata=meta).media
    assert [m.filename for m in listed] == [""]  # the file name may name the talent
    assert_no_link_left(gateway, account, meta)


def test_a_job_the_matcher_refuses_fails_and_leaves_nothing(gateway, studio):
    account, meta = studio
    started = start_job(gateway, meta, _png_claiming(40_000, 40_000))
    failed = finished_job(gateway, meta, started.job_id)
    assert (failed.state, failed.error, failed.attempts) == (
        pb.JOB_STATE_FAILED,
        "INVALID_ARGUMENT",
        1,
    )
    assert _rows(gateway, MediaRow, account) == 0
    assert _stored_keys(gateway) == set()


def test_a_queued_jobs_bytes_are_not_orphans_and_ended_jobs_are_purged_after_30_days(
    gateway, studio, clock
):
    _, meta = studio
    gateway.app.jobs.stop()  # nothing runs the job: it stays queued
    queued = start_job(gateway, meta, faces.encode(faces.astronaut()))
    clock.advance(days=60)  # the sweep looks at objects older than any upload can take
    assert gateway.app.orphans.sweep() == 0
    assert len(_stored_keys(gateway)) == 1
    gateway.app.jobs.start_worker()
    done = finished_job(gateway, meta, queued.job_id)
    assert done.state == pb.JOB_STATE_DONE
    ended = done.finished_at.ToDatetime(UTC)
    kept = gateway.app.retention.purge_expired(ended + timedelta(days=29), 100)
    assert kept.jobs_deleted == 0
    purged = gateway.app.retention.purge_expired(ended + timedelta(days=31), 100)
    assert purged.jobs_deleted == 1 and purged.done
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.GetJob,
        pb.GetJobRequest(job_id=queued.job_id),
        metadata=meta,
    )
    # the media stays: it has its own retention period
    assert gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=queued.media_id), metadata=meta
    ).media.faces


def test_an_upload_without_as_job_still_answers_with_its_results(gateway, studio):
    _, meta = studio
    reply = upload(gateway, meta, faces.encode(faces.astronaut()))
    assert reply.job_id == "" and [f.talent_id for f in reply.faces] == [TALENT]


def test_a_job_whose_workers_die_on_every_attempt_ends_failed_and_leaves_nothing(
    gateway, studio, clock
):
    account, meta = studio
    app = gateway.app
    app.jobs.stop()
    started = start_job(gateway, meta, faces.encode(faces.astronaut()))
    dying = Jobs(app.db, app.uploads, app.media_store, app.projects, clock, app.webhooks)

    def killed(name: str) -> None:
        if name == "job.claimed":
            raise RuntimeError("the replica is killed holding its lease")

    dying.checkpoint = killed
    for _ in range(3):
        with pytest.raises(RuntimeError):
            dying.run_once()
        clock.advance(seconds=61)
    assert dying.run_once()
    failed = _get(gateway, meta, started.job_id)
    assert (failed.state, failed.error, failed.attempts) == (
        pb.JOB_STATE_FAILED,
        "LEASE_EXPIRED",
        3,
    )
    assert _rows(gateway, MediaRow, account) == 0
    assert _stored_keys(gateway) == set()
    assert not dying.run_once()


def test_an_uploader_cancels_its_own_job_and_a_reviewer_may_not(gateway, studio, clock):
    _, owner = studio
    uploader, uploader_meta = gateway.new_account("crew")
    reviewer, reviewer_meta = gateway.new_account("reviewer")
    gateway.stub.CreateProject(
        pb.CreateProjectRequest(project_id=PROJECT, display_name="Film"), metadata=owner
    )
    invite(gateway, owner, uploader, pb.PROJECT_ROLE_UPLOADER)
    invite(gateway, owner, reviewer, pb.PROJECT_ROLE_REVIEWER)
    gateway.app.jobs.stop()
    started = start_job(gateway, uploader_meta, faces.encode(faces.astronaut()))
    denied = expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        gateway.stub.CancelJob,
        pb.CancelJobRequest(job_id=started.job_id),
        metadata=reviewer_meta,
    )
    assert denied.reason == "ROLE_NOT_ALLOWED"
    assert _get(gateway, reviewer_meta, started.job_id).state == pb.JOB_STATE_QUEUED
    cancelled = gateway.stub.CancelJob(
        pb.CancelJobRequest(job_id=started.job_id), metadata=uploader_meta
    )
    assert cancelled.job.state == pb.JOB_STATE_CANCELLED
    assert _stored_keys(gateway) == set()


def test_watches_beyond_the_limit_are_refused_until_one_ends(gateway, studio):
    """A watch holds a server thread while it lasts: a replica serves a bounded number."""
    _, meta = studio
    gateway.app.jobs.stop()
    gateway.app.jobs.watch_slots = threading.BoundedSemaphore(1)
    started = start_job(gateway, meta, faces.encode(faces.astronaut()))
    request = pb.WatchJobRequest(job_id=started.job_id)
    first = gateway.stub.WatchJob(request, metadata=meta)
    assert next(first).job.state == pb.JOB_STATE_QUEUED
    refused = expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        lambda: list(gateway.stub.WatchJob(request, metadata=meta)),
    )
    assert refused.reason == "TOO_MANY_WATCHES"
    gateway.stub.CancelJob(pb.CancelJobRequest(job_id=started.job_id), metadata=meta)
    assert [e.job.state for e in first] == [pb.JOB_STATE_CANCELLED]  # it ended: its slot too
    again = list(gateway.stub.WatchJob(request, metadata=meta))
    assert [e.job.state for e in again] == [pb.JOB_STATE_CANCELLED]
