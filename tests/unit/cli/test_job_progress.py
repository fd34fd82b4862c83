"""What `mixip match` and `mixip jobs wait` show while a job runs: state, frames with their
rate, and the time left once the gateway knows it."""

from __future__ import annotations

from mixip.cli.jobs import progress_label
from mixip.gateway.v1 import gateway_pb2 as pb


def test_the_label_has_frames_their_rate_and_the_eta_once_known():
    running = pb.Job(job_id="job_1", state=pb.JOB_STATE_RUNNING, frames_done=12, frames_total=48)
    assert progress_label(running, 2.0) == "job job_1 running 12/48 frames, 6.0 frames/s"
    running.eta_seconds = 6.4
    assert progress_label(running, 2.0).endswith(", ETA 6 s")


def test_the_label_of_a_job_not_started_says_only_its_state():
    queued = pb.Job(job_id="job_1", state=pb.JOB_STATE_QUEUED)
    assert progress_label(queued, 0.0) == "job job_1 queued"
