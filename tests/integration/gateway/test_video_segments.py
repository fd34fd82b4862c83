"""A video job by segments over two real matcher replicas (docs/jobs.md#segments): the same
labelled tracks and time ranges as one whole-video match, a replica stopped mid-segment has
its segment redone by the other, the matcher holds a bounded read-ahead of the video, and a
cancelled job leaves no segment row."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from gateway.store import JobSegmentRow
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.config import free_port
from services.matcher.settings import MatcherSettings
from tests.conftest import Mesh
from tests.support import faces
from tests.support.checkpoints import Checkpoints
from tests.support.gateway_calls import finished_job, start_job, upload

REPLICAS = ("matcher-1", "matcher-2")


class _Replicas:
    """Two matcher replicas on one database, reached as one round-robin target."""

    def __init__(self, handles) -> None:
        self.handles = handles

    @property
    def address(self) -> str:
        return "ipv4:" + ",".join(h.address for h in self.handles)

    def named(self, instance: str):
        return next(h for h in self.handles if h.app.instance == instance)


@pytest.fixture
def mesh(matcher_factory, consent_factory) -> Mesh:
    """The `gateway` fixture's mesh with two matcher replicas instead of one."""
    consent_port = free_port()
    handles = [
        matcher_factory(f"127.0.0.1:{consent_port}", replace(MatcherSettings(), instance=name))
        for name in REPLICAS
    ]
    consent = consent_factory(handles[0].address, port=consent_port)
    return Mesh(consent, _Replicas(handles))  # type: ignore[arg-type]


@pytest.fixture
def gateway_overrides() -> dict:
    # mp4v writes a keyframe every 1.2 s at 10 fps: segments cut at 2.4, 4.8, 7.2.
    return {"segment_seconds": 2.0, "segment_overlap_seconds": 2.0}


@pytest.fixture(scope="module")
def clip() -> bytes:
    """8 s: the astronaut, Grace Hopper, the astronaut again (each cut crossed by someone)."""
    return faces.make_video(
        None,
        [(faces.astronaut(), 3.0), (faces.grace_hopper(), 2.0), (faces.astronaut(), 3.0)],
    )


def _tracks(faces_) -> list[tuple]:
    return [
        (
            f.label,
            f.talent_id,
            tuple((round(r.start_seconds, 3), round(r.end_seconds, 3)) for r in f.ranges),
        )
        for f in faces_
    ]


def _segment_rows(gateway, job_id: str) -> int:
    with gateway.app.db.read() as session:
        return int(session.scalar(select(func.count()).where(JobSegmentRow.job_id == job_id)) or 0)


def _results(gateway, meta, media_id: str):
    return gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media_id), metadata=meta
    ).media


def test_segments_over_two_replicas_give_the_tracks_of_one_whole_match(gateway, studio, clip, cli):
    _, meta = studio
    whole = upload(gateway, meta, clip)  # MatchMedia: one matcher, the whole video

    started = start_job(gateway, meta, clip)
    job = finished_job(gateway, meta, started.job_id)

    assert job.state == pb.JOB_STATE_DONE
    shown = gateway.stub.GetJob(pb.GetJobRequest(job_id=started.job_id), metadata=meta).job
    assert [(s.index, s.state) for s in shown.segments] == [
        (i, pb.JOB_STATE_DONE) for i in range(4)
    ]
    assert [(round(s.start_seconds, 3), round(s.end_seconds, 3)) for s in shown.segments] == [
        (0.0, 2.4),
        (2.4, 4.8),
        (4.8, 7.2),
        (7.2, 8.0),
    ]
    assert {s.replica for s in shown.segments} == set(REPLICAS)  # spread over both
    assert sum(s.frames_done for s in shown.segments) == shown.frames_done > 0
    results = _results(gateway, meta, started.media_id)
    assert _tracks(results.faces) == _tracks(whole.faces)
    # One person is one track with several ranges: the astronaut before and after Hopper.
    astronaut = [f for f in results.faces if f.talent_id == "astronaut"]
    assert len(astronaut) == 1 and len(astronaut[0].ranges) == 2
    code, out, _ = cli("jobs", "show", started.job_id, "--json")
    assert code == 0
    listed = json.loads(out)["segments"]
    assert [(g["index"], g["state"], g["replica"]) for g in listed] == [
        (s.index, "done", s.replica) for s in shown.segments
    ]


def test_a_replica_stopped_mid_segment_has_its_segment_redone_by_the_other(gateway, studio, clip):
    _, meta = studio
    whole = upload(gateway, meta, clip)
    victim = gateway.mesh.matcher.named("matcher-1")
    entered, release = threading.Event(), threading.Event()

    def pause_first_segment(name: str) -> None:
        if name == "segment.analysing" and not entered.is_set():
            entered.set()
            release.wait(30)

    victim.app.segments.checkpoint = pause_first_segment
    started = start_job(gateway, meta, clip)
    assert entered.wait(60), "no segment reached matcher-1"
    victim.running.server.stop(grace=0).wait()  # mid-call: the gateway's call fails
    release.set()

    job = finished_job(gateway, meta, started.job_id)

    assert job.state == pb.JOB_STATE_DONE and job.attempts == 1
    segments = gateway.stub.GetJob(pb.GetJobRequest(job_id=started.job_id), metadata=meta).job
    assert {s.replica for s in segments.segments} == {"matcher-2"}
    assert any(s.attempts == 2 for s in segments.segments)  # the one redone
    assert _tracks(_results(gateway, meta, started.media_id).faces) == _tracks(whole.faces)


def test_a_hung_replica_loses_its_segment_once_the_lease_passes_and_its_late_answer_is_dropped(
    gateway, studio, clip, clock
):
    _, meta = studio
    whole = upload(gateway, meta, clip)
    entered, release = threading.Event(), threading.Event()

    def hang_first_segment(name: str) -> None:
        if name == "segment.analysing" and not entered.is_set():
            entered.set()
            release.wait(60)

    for handle in gateway.mesh.matcher.handles:
        handle.app.segments.checkpoint = hang_first_segment
    started = start_job(gateway, meta, clip)
    assert entered.wait(60), "no segment reached a matcher"
    # The other thread does every other segment; the hung one is left RUNNING.
    assert _wait_for(lambda: len(_not_done(gateway, started.job_id)) == 1)
    (hung,) = _not_done(gateway, started.job_id)
    assert _segment(gateway, started.job_id, hung).replica in REPLICAS  # told by the call
    clock.advance(seconds=61)  # the hung call's lease (60 s) passes; it asks for nothing more
    redone = _wait_for(lambda: _segment(gateway, started.job_id, hung).attempts == 2)
    assert redone, "the segment was not claimed again"
    release.set()  # the hung call answers late: its claim is gone

    job = finished_job(gateway, meta, started.job_id)

    assert job.state == pb.JOB_STATE_DONE and job.attempts == 1
    assert _tracks(_results(gateway, meta, started.media_id).faces) == _tracks(whole.faces)


def _segment(gateway, job_id: str, index: int) -> JobSegmentRow:
    with gateway.app.db.read() as session:
        row = session.get(JobSegmentRow, (job_id, index))
        session.expunge(row)
        return row


def _not_done(gateway, job_id: str) -> list[int]:
    with gateway.app.db.read() as session:
        return list(
            session.scalars(
                select(JobSegmentRow.segment_index).where(
                    JobSegmentRow.job_id == job_id, JobSegmentRow.state != pb.JOB_STATE_DONE
                )
            )
        )


def _wait_for(condition, seconds: float = 60.0) -> bool:
    """Polls a database condition another thread makes true (bounded)."""
    done = threading.Event()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        done.wait(0.1)
    return False


def test_a_job_cancelled_mid_segment_leaves_no_segment_row(gateway, studio, clip):
    _, meta = studio
    hooks = Checkpoints()
    gateway.app.jobs.checkpoint = hooks
    claimed = hooks.pause_at("job.segment.claimed")
    started = start_job(gateway, meta, clip)
    claimed.reached()
    assert _segment_rows(gateway, started.job_id) == 4
    gateway.stub.CancelJob(pb.CancelJobRequest(job_id=started.job_id), metadata=meta)
    claimed.release()
    gateway.app.jobs.stop()

    job = gateway.stub.GetJob(pb.GetJobRequest(job_id=started.job_id), metadata=meta).job
    assert job.state == pb.JOB_STATE_CANCELLED and not job.segments
    assert _segment_rows(gateway, started.job_id) == 0
