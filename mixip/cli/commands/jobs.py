"""`mixip jobs list|show|wait|cancel`: the analysis jobs that `mixip match` starts
(docs/jobs.md), and the wait with a progress bar that `match` does by default."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.output import CliError, Output
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Connection, Metadata
from mixip.runtime.errors import error_details
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page

if TYPE_CHECKING:
    from mixip.gateway.v1 import gateway_pb2_grpc

ENDED = {gateway_pb2.JOB_STATE_DONE, gateway_pb2.JOB_STATE_FAILED, gateway_pb2.JOB_STATE_CANCELLED}


def state_name(state: int) -> str:
    return (
        gateway_pb2.JobState.Name(gateway_pb2.JobState.ValueType(state))
        .removeprefix("JOB_STATE_")
        .lower()
    )


def job_json(job: gateway_pb2.Job) -> dict[str, Any]:
    def when(stamp: Timestamp) -> str | None:
        return stamp.ToJsonString() if stamp.seconds or stamp.nanos else None

    return {
        "job_id": job.job_id,
        "project_id": job.project_id,
        "media_id": job.media_id,
        "state": state_name(job.state),
        "frames_done": job.frames_done,
        "frames_total": job.frames_total,
        "percent": round(job.percent, 1),
        "eta_seconds": round(job.eta_seconds, 1),
        "attempts": job.attempts,
        "error": job.error,
        "started_by_account_id": job.started_by_account_id,
        "created_at": when(job.created_at),
        "started_at": when(job.started_at),
        "finished_at": when(job.finished_at),
        "segments": [
            {
                "index": segment.index,
                "start_seconds": round(segment.start_seconds, 3),
                "end_seconds": round(segment.end_seconds, 3),
                "state": state_name(segment.state),
                "replica": segment.replica,
                "attempts": segment.attempts,
                "frames_done": segment.frames_done,
            }
            for segment in job.segments
        ],
    }


def _line(job: gateway_pb2.Job) -> str:
    frames = f" {job.frames_done}/{job.frames_total} frames" if job.frames_total else ""
    error = f" ({job.error})" if job.error else ""
    return f"job {job.job_id}: {state_name(job.state)}{frames}{error} media {job.media_id}"


def progress_label(job: gateway_pb2.Job) -> str:
    """What the bar says beside its frames, rate and ETA (tqdm's): the job and its state."""
    attempt = f" (attempt {job.attempts})" if job.attempts > 1 else ""
    return f"job {job.job_id} {state_name(job.state)}{attempt}"


def wait(conn: Connection, out: Output, job_id: str) -> gateway_pb2.Job:
    """Watches the job to its end, with a progress bar over its frames on a terminal (the
    rate and ETA count from the start of its running attempt); the job as it ended."""
    stub, meta = conn.gateway()
    attempt = [0]
    with out.progress(f"job {job_id}", unit="frame") as bar:

        def show(job: gateway_pb2.Job) -> None:
            if job.state == gateway_pb2.JOB_STATE_RUNNING and job.attempts != attempt[0]:
                attempt[0] = job.attempts  # a new attempt: the rate counts from here
                bar.restart(job.frames_total or None)
            bar.set(job.frames_done, job.frames_total or None, progress_label(job))

        return watch(stub, meta, job_id, show)


POLL_SECONDS = 1.0  # GetJob's pace when the gateway has no watch to spare


class Call(Protocol):
    """A call in flight (a stream's iterator is one)."""

    def cancel(self) -> bool: ...


class Cancel:
    """Ends the watches given to it at once, from another thread (an interrupted folder run);
    a watch given to it afterwards ends as it starts."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._calls: set[Call] = set()
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.cancelled.set()
            for call in self._calls:
                call.cancel()

    def adopt(self, call: Call) -> None:
        with self._lock:
            self._calls.add(call)
            if self.cancelled.is_set():
                call.cancel()

    def drop(self, call: Call) -> None:
        with self._lock:
            self._calls.discard(call)


def watch(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    meta: Metadata,
    job_id: str,
    seen: Callable[[gateway_pb2.Job], None] = lambda job: None,
    cancel: Cancel | None = None,
) -> gateway_pb2.Job:
    """Watches the job to its end, telling `seen` of each change; the job as it ended. A watch
    has the channel's deadline (30 s): a longer job is watched again, from where it is. When
    the gateway has no watch to spare (TOO_MANY_WATCHES), GetJob is polled instead."""
    cancel = cancel or Cancel()
    job: gateway_pb2.Job | None = None
    while job is None or job.state not in ENDED:
        if cancel.cancelled.is_set():
            raise CliError(f"the watch of job {job_id} was interrupted")
        call = stub.WatchJob(gateway_pb2.WatchJobRequest(job_id=job_id), metadata=meta)
        cancel.adopt(call)
        try:
            for event in call:
                job = event.job
                seen(job)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                continue
            if error_details(exc).reason != "TOO_MANY_WATCHES" or cancel.cancelled.is_set():
                raise
            job = stub.GetJob(gateway_pb2.GetJobRequest(job_id=job_id), metadata=meta).job
            seen(job)
            if job.state not in ENDED:
                cancel.cancelled.wait(POLL_SECONDS)
            continue
        finally:
            cancel.drop(call)
        if job is None or job.state not in ENDED:
            raise CliError(f"the watch of job {job_id} ended before the job did; `mixip jobs wait`")
    return job


def ended_ok(job: gateway_pb2.Job) -> None:
    """Refuses (exit 1) a job that did not end DONE."""
    if job.state != gateway_pb2.JOB_STATE_DONE:
        error = f": {job.error}" if job.error else ""
        raise CliError(f"job {job.job_id} {state_name(job.state)}{error}")


def jobs_list(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListJobs(
            gateway_pb2.ListJobsRequest(
                project_id=args.project, page_size=MAX_BATCH, page_token=token
            ),
            metadata=meta,
        )
    )
    jobs = [j for page in pages for j in page.jobs]
    out.result(
        {"jobs": [job_json(j) for j in jobs]},
        [f"{len(jobs)} job(s)"] + [f"  {_line(j)}" for j in jobs],
    )
    return 0


def jobs_show(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    job = stub.GetJob(gateway_pb2.GetJobRequest(job_id=args.job_id), metadata=meta).job
    out.result(job_json(job), _line(job))
    return 0


def jobs_wait(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    job = wait(conn, out, args.job_id)
    out.result(job_json(job), _line(job))
    ended_ok(job)
    return 0


def jobs_cancel(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    job = stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=args.job_id), metadata=meta).job
    out.result(job_json(job), _line(job))
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    jobs = sub.add_parser("jobs", help="analysis jobs (what `match` starts)").add_subparsers(
        dest="action", required=True
    )
    p = jobs.add_parser("list", parents=[common], help="a project's jobs, newest first")
    p.add_argument("--project", required=True, help="the project")
    p.set_defaults(run=jobs_list)
    for name, run, text in (
        ("show", jobs_show, "a job's state and progress"),
        ("wait", jobs_wait, "wait for a job to end, with a progress bar (exit 1 unless done)"),
        ("cancel", jobs_cancel, "cancel a job: it leaves no media, result or audit event"),
    ):
        p = jobs.add_parser(name, parents=[common], help=text)
        p.add_argument("job_id", metavar="JOB_ID", help="the id `mixip match --no-wait` printed")
        p.set_defaults(run=run)
