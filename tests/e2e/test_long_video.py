"""Issue 19's long video end to end, with real processes (`mixip up --replicas matcher=2`'s
launcher): a 20-minute video with two known people at known times is uploaded by `mixip match`
through a resumable session, the client SIGKILLed mid-upload and the command run again (it
resumes at the durable offset), and the job is analysed by segments over two matcher replicas,
one of which is SIGKILLed while a segment runs on it. The job completes once, each person's
time ranges are within 1 s of the truth, and the results equal those of the same video
analysed again with the one replica left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mixip.cli.dev_mesh import ensure_dev_account
from mixip.cli.launcher import Mesh
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.config import SERVICES, variable
from mixip.runtime.connection import Connection
from mixip.runtime.limits import MiB
from mixip.runtime.times import utcnow
from tests.support import faces
from tests.support.databases import fresh_schema_url
from tests.support.gateway_calls import consent, enroll
from tests.support.relay import StallingRelay

pytestmark = pytest.mark.slow

PROJECT = "episode-1"
SEGMENT_SECONDS = 200  # a 20-minute video: six segments
CYCLE = (("", 40.0), ("astronaut", 30.0), ("", 20.0), ("hopper", 20.0), ("", 10.0))
CYCLES = 10  # 10 x 120 s, cut at 201, 402, ... s: the astronaut crosses the cuts at 402 and 1005
TOLERANCE = 1.0  # seconds


def _script() -> list[tuple[str, float, float]]:
    """(who, start, end) of every shot, "" for an empty frame."""
    shots, at = [], 0.0
    for _ in range(CYCLES):
        for who, seconds in CYCLE:
            shots.append((who, at, at + seconds))
            at += seconds
    return shots


def _truth() -> dict[str, list[tuple[float, float]]]:
    truth: dict[str, list[tuple[float, float]]] = {}
    for who, start, end in _script():
        if who:
            truth.setdefault(who, []).append((start, end))
    return truth


@pytest.fixture(scope="module")
def episode(tmp_path_factory) -> Path:
    """320x240 at 4 fps (mp4v, a keyframe every 3 s): about 3 MB for 20 minutes."""
    people = {"": np.zeros((240, 320, 3), np.uint8), "astronaut": faces.astronaut()}
    people["hopper"] = faces.grace_hopper()
    path = tmp_path_factory.mktemp("episode") / "episode.mp4"
    shots = [(people[who], end - start) for who, start, end in _script()]
    faces.make_video(path, shots, fps=4, size=(320, 240))
    return path


@pytest.fixture
def mesh(tmp_path, backend, pg_test_database):
    env = {"MIXIP_GATEWAY_SEGMENT_SECONDS": str(SEGMENT_SECONDS)}
    if backend == "postgresql":
        env |= {
            variable(s, "DATABASE_URL"): fresh_schema_url(pg_test_database, s) for s in SERVICES
        }
    mesh = Mesh(tmp_path / "data", extra_env=env, replicas={"matcher": 2})
    mesh.start()
    yield mesh
    mesh.stop()


@pytest.fixture
def client(mesh):
    conn = Connection(mesh.data_dir, mesh.addresses["gateway"])
    ensure_dev_account(conn)
    stub, meta = conn.gateway()
    calls = type("Calls", (), {"stub": stub})()  # what tests.support.gateway_calls expects
    request = pb.CreateProjectRequest(project_id=PROJECT, display_name="Episode 1")
    stub.CreateProject(request, metadata=meta)  # `mixip match` refuses an unknown project
    for talent, image in (("astronaut", faces.astronaut()), ("hopper", faces.grace_hopper())):
        consent(calls, meta, utcnow, talent, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
        consent(calls, meta, utcnow, talent, cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
        enroll(calls, meta, talent, image)
    return stub, meta


def _match(mesh: Mesh, gateway: str, video: Path, state: Path, *extra: str) -> subprocess.Popen:
    command = [
        *(sys.executable, "-m", "mixip.cli.main", "--json", "--data-dir", str(mesh.data_dir)),
        *("--gateway", gateway, "match", str(video), "--project", PROJECT, *extra),
    ]
    env = os.environ | {"XDG_STATE_HOME": str(state)}
    return subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _until(condition, seconds: float = 120.0, what: str = "condition"):
    """Polls a condition on the mesh (bounded); its first true value."""
    wait = threading.Event()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        wait.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _first_job(stub, meta) -> str | None:
    listed = stub.ListJobs(pb.ListJobsRequest(project_id=PROJECT), metadata=meta)
    return listed.jobs[0].job_id if listed.jobs else None


def _tracks(media: pb.UploadMediaResponse) -> list[tuple]:
    return [
        (
            f.label,
            f.talent_id,
            tuple((round(r.start_seconds, 3), round(r.end_seconds, 3)) for r in f.ranges),
        )
        for f in media.faces
    ]


def _ranges_by_talent(media: pb.UploadMediaResponse) -> dict[str, list[tuple[float, float]]]:
    found: dict[str, list[tuple[float, float]]] = {}
    for face in media.faces:
        found.setdefault(face.talent_id, []).extend(
            (r.start_seconds, r.end_seconds) for r in face.ranges
        )
    return {talent: sorted(ranges) for talent, ranges in found.items()}


def test_a_long_video_resumed_and_analysed_over_two_replicas_one_killed(
    mesh, client, episode, tmp_path
):
    stub, meta = client
    size = episode.stat().st_size
    state = tmp_path / "state"
    relay = StallingRelay(mesh.listen["gateway"], budget=2 * MiB)
    try:
        # 1. The client stalls after 2 MiB on the wire; once 1 MiB is durable, it is killed.
        first = _match(mesh, relay.address, episode, state, "--resumable-above", "0")

        def state_file() -> Path | None:
            assert first.poll() is None, first.communicate()[1]  # the CLI is still uploading
            return next(iter((state / "mixip" / "uploads").glob("*.json")), None)

        saved = _until(state_file, what="the CLI's session state file")
        session_id = json.loads(saved.read_text())["session_id"]

        def durable() -> int:
            request = pb.GetUploadSessionRequest(session_id=session_id)
            return stub.GetUploadSession(request, metadata=meta).session.durable_offset

        _until(lambda: durable() >= MiB, what="1 MiB durable")
        first.kill()
        first.communicate(timeout=30)
        relay.cut()  # less than 2 MiB of media got through: 1 MiB is durable, and stays so
        held = durable()
        assert held == MiB < size

        # 2. The same command again resumes there, and waits for the job.
        rerun = _match(mesh, relay.address, episode, state, "--resumable-above", "0")
        job_id = _until(lambda: _first_job(stub, meta), what="the job")

        # 3. A replica is SIGKILLed while a segment runs on it.
        def running_on() -> str:
            job = stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=meta).job
            running = [s for s in job.segments if s.state == pb.JOB_STATE_RUNNING]
            return next((s.replica for s in running if s.replica), "")

        victim = _until(running_on, seconds=300, what="a segment running on a replica")
        mesh.processes[victim].kill()
        out, err = rerun.communicate(timeout=600)
    finally:
        relay.close()

    assert rerun.returncode == 0, err
    document = json.loads(out)
    assert document["upload"] == {"bytes": size - held, "resumed_from": held}
    assert document["job_id"] == job_id
    job = stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=meta).job
    assert job.state == pb.JOB_STATE_DONE and job.attempts == 1  # completed once
    assert len(job.segments) == 6
    assert all(s.state == pb.JOB_STATE_DONE for s in job.segments)
    assert any(s.attempts >= 2 for s in job.segments)  # the killed replica's, redone
    survivor = "matcher" if victim == "matcher-2" else "matcher-2"
    assert {s.replica for s in job.segments if s.attempts >= 2} == {survivor}
    media = stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=document["media_id"]), metadata=meta
    ).media
    events = stub.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1000), metadata=meta)
    indexes = sorted(e.face_index for e in events.events if e.media_id == media.media_id)
    assert indexes == list(range(len(media.faces)))  # one event per face, never twice

    # Each person's ranges are the truth's, within a second.
    found = _ranges_by_talent(media)
    truth = _truth()
    assert len(media.faces) == len(truth)  # one person is one track, stitched over segments
    assert set(found) == set(truth), _tracks(media)
    for talent, ranges in truth.items():
        assert len(found[talent]) == len(ranges), (talent, found[talent])
        for (start, end), (true_start, true_end) in zip(found[talent], ranges, strict=True):
            assert abs(start - true_start) <= TOLERANCE, (talent, start, true_start)
            assert abs(end - true_end) <= TOLERANCE, (talent, end, true_end)

    # 4. The same video again, on the one replica left: the same tracks and ranges.
    alone = _match(mesh, mesh.listen["gateway"], episode, tmp_path / "state-2")
    out, err = alone.communicate(timeout=600)
    assert alone.returncode == 0, err
    again = json.loads(out)
    single = stub.GetJob(pb.GetJobRequest(job_id=again["job_id"]), metadata=meta).job
    assert {s.replica for s in single.segments} == {survivor}
    media_again = stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=again["media_id"]), metadata=meta
    ).media
    assert _tracks(media_again) == _tracks(media)
