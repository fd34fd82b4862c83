"""A video job's attempt by time segments over the matcher replicas (docs/jobs.md#segments).

- **Plan.** A matcher reads the stored video by ranges (through the decrypting reader; the
  video never crosses whole) and cuts it at keyframes near every `segment_seconds`. The
  segments are rows of `gateway_job_segments`, written again at each attempt of the job.
- **Claim.** `concurrency` threads of the job's worker each claim one due segment at a time
  (QUEUED, or RUNNING with a lease that has passed) with `FOR UPDATE SKIP LOCKED` on
  PostgreSQL (SQLite's writers are serial), under a lease of their own (a fresh owner token per
  claim), and call the matcher for it: calls go round-robin over the replicas the channel
  resolves. Every range the matcher asks for renews the segment's lease (a third of the way
  through), so a replica that hangs loses its segment to another thread; one that dies fails
  the call, and the segment is queued again at once for the next replica.
- **Results** are the matcher's sealed frames, held in this worker's memory only until the
  stitch sends them (a job attempt that ends drops them); a segment's row records its state,
  attempts, frames and the replica that ran it, never a result.
- **Stitch.** Once every segment is DONE, one matcher call streams their results in time
  order, one message per segment, each taken out of the attempt's results as it is sent; the
  matcher links their frames into tracks as they come and labels them; the job then commits
  as any job does (gateway/jobs.py).
"""

from __future__ import annotations

import functools
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc
from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from gateway.media_store import MediaStore
from gateway.peers import Matched, MatcherPort, SegmentCall, StoredVideo
from gateway.store import JobRow, JobSegmentRow, affected
from gateway.uploads import PendingMedia
from mixip.gateway.v1 import gateway_pb2
from mixip.matcher.v1 import matcher_pb2
from mixip.runtime.checkpoints import Checkpoint
from mixip.runtime.db import Database
from mixip.runtime.times import Clock

QUEUED = gateway_pb2.JOB_STATE_QUEUED
RUNNING = gateway_pb2.JOB_STATE_RUNNING
DONE = gateway_pb2.JOB_STATE_DONE

# The matcher's answers that another replica would not change.
PERMANENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})


@dataclass(frozen=True)
class SegmentPlan:
    """How video jobs are cut and spread (GatewaySettings.segment_*)."""

    segment_seconds: float = 60.0
    overlap_seconds: float = 2.0
    concurrency: int = 2
    max_attempts: int = 3  # per segment, within one attempt of the job


@dataclass(frozen=True)
class Segment:
    """A segment as GetJob shows it."""

    index: int
    start_seconds: float
    end_seconds: float
    state: int
    replica: str
    attempts: int
    frames_done: int


class SegmentsLost(Exception):
    """The job is no longer this worker's (cancelled, or its lease passed)."""


@dataclass(eq=False)
class _Attempt:
    """One attempt of one job by segments: what its threads share."""

    job_id: str
    worker_id: str
    video: StoredVideo
    planned: list[matcher_pb2.PlannedSegment]
    results: dict[int, matcher_pb2.SegmentResult] = field(default_factory=dict)
    calls: dict[str, SegmentCall] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Segments:
    def __init__(
        self,
        db: Database,
        matcher: MatcherPort,
        media_store: MediaStore,
        clock: Clock,
        plan: SegmentPlan,
        *,
        lease: timedelta,
        notify: Callable[[], None],
        checkpoint: Callable[[], Checkpoint],
    ) -> None:
        self.db = db
        self.matcher = matcher
        self.media_store = media_store
        self.clock = clock
        self.plan = plan
        self.lease = lease
        self.notify = notify
        self.checkpoint = checkpoint  # the jobs' hook, read at each use (tests set it late)

    def run(
        self, job_id: str, worker_id: str, pending: PendingMedia, renew: Callable[[], bool]
    ) -> Matched:
        """Plans, analyses and stitches the job's video; `renew` keeps the job's lease (false:
        the job is lost, and so is the attempt: SegmentsLost)."""
        account_id, key = pending.account_id, pending.storage_key
        video = StoredVideo(
            account_id,
            pending.project_id,
            pending.size_bytes,
            lambda: self.media_store.open(account_id, key),
        )
        plan = self._waiting(
            self.matcher.plan_segments(video, self.plan.segment_seconds, self.plan.overlap_seconds),
            renew,
        )
        attempt = _Attempt(job_id, worker_id, video, list(plan.segments))
        self._store_plan(attempt)
        self.checkpoint()("job.planned")
        with ThreadPoolExecutor(self.plan.concurrency, thread_name_prefix="job-segment") as pool:
            futures = [pool.submit(self._work, attempt) for _ in range(self.plan.concurrency)]
            try:
                self._renewing(futures, renew)
            finally:
                attempt.stop.set()
                with attempt.lock:
                    for call in attempt.calls.values():
                        call.cancel()
        for future in futures:
            future.result()  # a segment that failed for good fails the attempt
        if len(attempt.results) != len(attempt.planned):  # its rows went: the job was cancelled
            raise SegmentsLost
        return self.matcher.stitch_segments(
            account_id,
            pending.project_id,
            pending.content_type,
            len(attempt.planned),
            _sent_once(attempt.results),
        )

    def _waiting(
        self, call: SegmentCall, renew: Callable[[], bool]
    ) -> matcher_pb2.PlanVideoSegmentsResponse:
        with ThreadPoolExecutor(1, thread_name_prefix="job-plan") as pool:
            future = pool.submit(call.result)
            try:
                self._renewing([future], renew)
            except SegmentsLost:
                call.cancel()
                raise
            plan: matcher_pb2.PlanVideoSegmentsResponse = future.result()
            return plan

    def _renewing(self, futures: Sequence[Future[Any]], renew: Callable[[], bool]) -> None:
        """Waits for `futures` (or the first to fail), renewing the job's lease meanwhile."""
        interval = self.lease.total_seconds() / 3
        while True:
            done, pending = wait(futures, timeout=interval, return_when=FIRST_EXCEPTION)
            if not pending or any(f.exception() is not None for f in done):
                return
            if not renew():
                raise SegmentsLost

    # -- rows -------------------------------------------------------------------------------------

    def _store_plan(self, attempt: _Attempt) -> None:
        """The plan's rows (an earlier attempt's deleted) and the job's frames to do, if the
        job is still this worker's."""
        now = self.clock()
        with self.db.write() as session:
            job = session.get(JobRow, attempt.job_id, with_for_update=True)
            if job is None or job.state != RUNNING or job.lease_owner != attempt.worker_id:
                raise SegmentsLost
            session.execute(delete(JobSegmentRow).where(JobSegmentRow.job_id == attempt.job_id))
            for index, planned in enumerate(attempt.planned):
                session.add(
                    JobSegmentRow(
                        job_id=attempt.job_id,
                        segment_index=index,
                        start_seconds=planned.start_seconds,
                        end_seconds=planned.end_seconds,
                        frames_expected=planned.frames_expected,
                        frames_done=0,
                        state=QUEUED,
                        attempts=0,
                        replica="",
                    )
                )
            job.frames_done = 0
            job.frames_total = sum(p.frames_expected for p in attempt.planned)
            job.updated_at = now
        self.notify()

    def _claim(self, attempt: _Attempt) -> tuple[int, str] | None:
        """(index, owner token) of a due segment now claimed; None when none is due."""
        now = self.clock()
        due = or_(
            and_(
                JobSegmentRow.state == QUEUED,
                or_(JobSegmentRow.lease_until.is_(None), JobSegmentRow.lease_until <= now),
            ),
            and_(JobSegmentRow.state == RUNNING, JobSegmentRow.lease_until <= now),
        )
        with self.db.write() as session:
            row = session.scalars(
                select(JobSegmentRow)
                .where(JobSegmentRow.job_id == attempt.job_id, due)
                .order_by(JobSegmentRow.segment_index)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            if row.attempts >= self.plan.max_attempts:
                raise SegmentFailed(row.segment_index, "SEGMENT_ATTEMPTS_SPENT")
            token = secrets.token_hex(8)
            row.state, row.lease_owner, row.replica = RUNNING, token, ""  # told by the call
            row.lease_until = now + self.lease
            row.attempts += 1
            return row.segment_index, token

    def _left(self, job_id: str) -> int:
        with self.db.read() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        JobSegmentRow.job_id == job_id, JobSegmentRow.state != DONE
                    )
                )
                or 0
            )

    def _held(self, job_id: str, index: int, token: str) -> tuple[ColumnElement[bool], ...]:
        return (
            JobSegmentRow.job_id == job_id,
            JobSegmentRow.segment_index == index,
            JobSegmentRow.state == RUNNING,
            JobSegmentRow.lease_owner == token,
        )

    def _renew(self, attempt: _Attempt, index: int, token: str, renewed: list[datetime]) -> None:
        now = self.clock()
        if now - renewed[0] < self.lease / 3:
            return
        renewed[0] = now
        with self.db.write() as session:
            affected(
                session,
                update(JobSegmentRow)
                .where(*self._held(attempt.job_id, index, token))
                .values(lease_until=now + self.lease),
            )

    def _running_on(self, attempt: _Attempt, index: int, token: str, replica: str) -> None:
        """Records the replica a held segment runs on (GetJob shows it while it runs)."""
        with self.db.write() as session:
            affected(
                session,
                update(JobSegmentRow)
                .where(*self._held(attempt.job_id, index, token))
                .values(replica=replica[:128]),
            )
        self.notify()

    def _done(
        self, attempt: _Attempt, index: int, token: str, result: matcher_pb2.SegmentResult
    ) -> bool:
        """Records the segment DONE and its frames in the job's progress, if still held."""
        with self.db.write() as session:
            held = affected(
                session,
                update(JobSegmentRow)
                .where(*self._held(attempt.job_id, index, token))
                .values(
                    state=DONE,
                    lease_owner=None,
                    lease_until=None,
                    replica=result.replica[:128],
                    frames_done=result.frames_sampled,
                ),
            )
            if held:
                self._progress(session, attempt)
        if held:
            self.notify()
        return bool(held)

    def _progress(self, session: Session, attempt: _Attempt) -> None:
        done = session.scalar(
            select(func.coalesce(func.sum(JobSegmentRow.frames_done), 0)).where(
                JobSegmentRow.job_id == attempt.job_id, JobSegmentRow.state == DONE
            )
        )
        session.execute(
            update(JobRow)
            .where(
                JobRow.job_id == attempt.job_id,
                JobRow.state == RUNNING,
                JobRow.lease_owner == attempt.worker_id,
            )
            .values(frames_done=int(done or 0), updated_at=self.clock())
        )

    def _released(self, attempt: _Attempt, index: int, token: str) -> None:
        """A failed call: the segment is due again at once (the next call goes to the next
        replica)."""
        with self.db.write() as session:
            affected(
                session,
                update(JobSegmentRow)
                .where(*self._held(attempt.job_id, index, token))
                .values(state=QUEUED, lease_owner=None, lease_until=None),
            )

    # -- a segment thread -------------------------------------------------------------------------

    def _work(self, attempt: _Attempt) -> None:
        """Claims and analyses segments until none is left to do."""
        while not attempt.stop.is_set():
            claimed = self._claim(attempt)
            if claimed is None:
                if not self._left(attempt.job_id):
                    return
                # Others hold the rest: wait for one to end, or for a lease to pass.
                attempt.stop.wait(min(1.0, self.lease.total_seconds() / 3))
                continue
            index, token = claimed
            self.checkpoint()("job.segment.claimed")
            renewed = [self.clock()]
            call = self.matcher.match_segment(
                attempt.video,
                attempt.planned[index],
                self.plan.overlap_seconds,
                functools.partial(self._renew, attempt, index, token, renewed),
                functools.partial(self._running_on, attempt, index, token),
            )
            with attempt.lock:
                attempt.calls[token] = call
            try:
                result = call.result()
            except Exception as exc:
                code = exc.code() if isinstance(exc, grpc.RpcError) else None
                if code in PERMANENT:
                    raise
                if attempt.stop.is_set():
                    return
                self._released(attempt, index, token)
                continue
            finally:
                with attempt.lock:
                    attempt.calls.pop(token, None)
            if self._done(attempt, index, token, result):
                with attempt.lock:
                    attempt.results[index] = result


def _sent_once(
    results: dict[int, matcher_pb2.SegmentResult],
) -> Iterator[matcher_pb2.SegmentResult]:
    """The results in time order, each taken out of `results` as it is handed over: once
    sent, a blob is held nowhere in the gateway (a stitch that fails fails the attempt, whose
    next try analyses the segments again). The segment threads have all ended by then."""
    for index in range(len(results)):
        yield results.pop(index)


class SegmentFailed(Exception):
    """A segment whose calls failed on every attempt: the job's attempt fails."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"segment {index}: {reason}")
        self.reason = reason


def segments_of(session: Session, job_id: str) -> list[Segment]:
    rows = session.scalars(
        select(JobSegmentRow)
        .where(JobSegmentRow.job_id == job_id)
        .order_by(JobSegmentRow.segment_index)
    )
    return [
        Segment(
            r.segment_index,
            r.start_seconds,
            r.end_seconds,
            r.state,
            r.replica,
            r.attempts,
            r.frames_done,
        )
        for r in rows
    ]


def delete_segments(session: Session, job_ids: list[str]) -> None:
    session.execute(delete(JobSegmentRow).where(JobSegmentRow.job_id.in_(job_ids)))
