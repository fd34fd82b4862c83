"""Analysis as jobs: an upload made `as_job` is stored and answered at once with a job, which a
worker matches later (docs/jobs.md).

- A job is a durable row (`gateway_jobs`). Every gateway replica runs a worker that claims one
  due job at a time with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serializes
  the claiming writers), renews the lease while the matcher works, and ends the job in the
  commit that stores its results. A worker that dies stops renewing: once its lease has
  passed, another worker claims the job and runs it again.
- The job ends DONE exactly once: its results are kept through `Uploads.commit`, the same
  commit an upload makes (under the erasure fence: a talent whose erasure began, or completed
  since the attempt started, is stored UNKNOWN / TALENT_ERASED with no talent id), and that
  commit ends the job only if this worker still holds it (state RUNNING, its lease owner); a
  worker that lost it (cancelled, or its lease passed to another) rolls everything back.
- A cancelled or failed job leaves nothing: no media, results or audit events (they are
  written only by the commit that ends it DONE) and no stored bytes (deleted once it ended).
- Progress events carry no talent id: a job row names none.
- Ended jobs are purged MIXIP_GATEWAY_JOB_RETENTION_DAYS after they ended (`JobPurge`, run
  by the retention service's media purge, gateway/retention.py).
- Every end of a job (DONE, FAILED, CANCELLED) is made by `Jobs._end`, in the transaction that
  ends it, which owes the account's webhooks the event (`job.completed`, `job.failed`,
  `job.cancelled`; ids and the state only): the event is owed exactly when the end commits, so
  a race that ends a job once emits once (the loser's transaction rolls back with its event).
  `Jobs._ended` tells watchers and logs, after the commit.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from sqlalchemy import ColumnElement, and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.job_segments import (
    Segment,
    SegmentPlan,
    Segments,
    SegmentsLost,
    delete_segments,
    segments_of,
)
from gateway.media_store import MediaStore
from gateway.peers import Matched, PendingMatch
from gateway.projects import Action, Projects, Scope, from_micros, micros
from gateway.seals import job_filename_context, media_subject
from gateway.store import JobRow, affected
from gateway.uploads import PendingMedia, UploadHeader, Uploads, media_id_for
from gateway.webhooks import Webhooks
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime import logs
from mixip.runtime.checkpoints import Checkpoint, no_checkpoint
from mixip.runtime.db import Database
from mixip.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from mixip.runtime.idempotency import content_digest, key_reused, require_same
from mixip.runtime.media import MediaError, sniff
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.times import Clock
from mixip.runtime.worker import Worker

logger = logging.getLogger("mixip.gateway.jobs")

QUEUED = gateway_pb2.JOB_STATE_QUEUED
RUNNING = gateway_pb2.JOB_STATE_RUNNING
DONE = gateway_pb2.JOB_STATE_DONE
FAILED = gateway_pb2.JOB_STATE_FAILED
CANCELLED = gateway_pb2.JOB_STATE_CANCELLED
ENDED = frozenset({DONE, FAILED, CANCELLED})

# The matcher's answers that another attempt would not change.
PERMANENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})
# The webhook event of each end, and the state its payload names.
END_EVENTS: dict[int, tuple[str, str]] = {
    DONE: ("job.completed", "done"),
    FAILED: ("job.failed", "failed"),
    CANCELLED: ("job.cancelled", "cancelled"),
}


@dataclass(frozen=True)
class Job:
    job_id: str
    project_id: str
    media_id: str
    state: int
    frames_done: int
    frames_total: int
    percent: float
    eta_seconds: float
    attempts: int
    error: str
    started_by_account_id: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    segments: tuple[Segment, ...] = ()  # a video's, once planned

    @property
    def progress(self) -> tuple[int, int, int, int]:
        """What a watcher is told again when it changes."""
        return (self.state, self.frames_done, self.frames_total, self.attempts)


@dataclass(frozen=True)
class QueuedMedia:
    """The stored object a job is queued for."""

    content_type: str
    size_bytes: int
    storage_key: str
    digest: str  # the request's content digest ("" when the request id alone names it)


class _Replayed(Exception):
    """A concurrent retry of the same request queued the job first."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.job_id)
        self.job = job


class JobLost(Exception):
    """The worker no longer holds the job: it was cancelled, or its lease passed to another."""


@dataclass(frozen=True)
class _Claim:
    """A job as a worker claimed it for one attempt."""

    job_id: str
    attempts: int
    pending: PendingMedia


class Jobs:
    def __init__(
        self,
        db: Database,
        uploads: Uploads,
        media_store: MediaStore,
        projects: Projects,
        clock: Clock,
        webhooks: Webhooks,
        *,
        lease_seconds: float = 60.0,
        poll_seconds: float = 1.0,
        watch_seconds: float = 0.5,
        max_watches: int = 8,
        max_attempts: int = 3,
        segments: SegmentPlan | None = None,
    ) -> None:
        self.db = db
        self.uploads = uploads
        self.media_store = media_store
        self.projects = projects
        self.clock = clock
        self.webhooks = webhooks
        self.lease = timedelta(seconds=lease_seconds)
        self.watch_seconds = watch_seconds
        # A watch holds one of the server's threads while it lasts (16 by default): at most
        # `max_watches` at once, so that watchers cannot starve the other calls.
        self.watch_slots = threading.BoundedSemaphore(max_watches)
        self.max_attempts = max_attempts
        # This worker's lease owner id: a replica's, new at every start.
        self.worker_id = secrets.token_hex(8)
        # Tests pause the worker between its steps through this hook.
        self.checkpoint: Checkpoint = no_checkpoint
        # A video is analysed by segments over the matcher replicas (gateway/job_segments.py).
        self.segments = Segments(
            db,
            uploads.matcher,
            media_store,
            clock,
            segments or SegmentPlan(),
            lease=self.lease,
            notify=self._notify,
            checkpoint=lambda: self.checkpoint,
        )
        self._changed = threading.Condition()
        # One attempt of one due job per pass; after a pass that found none (or failed), it
        # waits `poll_seconds` or until a job is queued (`wake`).
        self.worker = Worker("gateway-jobs", self.run_once, poll_seconds=poll_seconds)

    # -- starting a job -------------------------------------------------------------------------

    def start(self, caller_account_id: str, key_id: str, header: UploadHeader, data: bytes) -> Job:
        """Stores the bytes encrypted and queues a job that matches them (its media's id is
        fixed now). A retry with the same request id returns the first job; the rules of an
        upload's scope and request ids apply (gateway/uploads.py)."""
        try:
            sniffed = sniff(data)
        except MediaError as exc:
            raise InvalidArgument.one("chunk", str(exc), reason="BAD_MEDIA") from exc
        scope = self.projects.upload_scope(caller_account_id, header.project_id)
        job_id = _job_id(caller_account_id, header.request_id)
        digest = content_digest(header.project_id, data)
        earlier = self._replayed(caller_account_id, scope, job_id, digest)
        if earlier is not None:
            return earlier
        storage_key = self.media_store.put(scope.owner_account_id, data)
        try:
            return self._queue(
                caller_account_id,
                key_id,
                scope,
                header,
                QueuedMedia(sniffed.content_type, len(data), storage_key, digest),
            )
        except _Replayed as replayed:
            self.media_store.delete(scope.owner_account_id, storage_key)
            return replayed.job
        except BaseException:
            self.media_store.delete(scope.owner_account_id, storage_key)
            raise

    def start_stored(
        self,
        caller_account_id: str,
        key_id: str,
        header: UploadHeader,
        media: QueuedMedia,
        within: Callable[[Session], None],
    ) -> Job:
        """Queues a job for media already in the store (a finished upload session,
        gateway/upload_sessions.py), `within` running in the commit that queues it. The
        object is the job's from then on (deleted when the job fails or is cancelled); if the
        job is not queued, it stays with the session. The header's request id is the
        session's, so the job's id is fixed by the session."""
        scope = self.projects.upload_scope(caller_account_id, header.project_id)
        try:
            return self._queue(caller_account_id, key_id, scope, header, media, within)
        except _Replayed as replayed:
            return replayed.job

    def session_job(self, caller_account_id: str, request_id: str) -> Job | None:
        """The job a finished session queued (None if it queued none)."""
        job_id = _job_id(caller_account_id, request_id)
        with self.db.read() as session:
            row = session.get(JobRow, job_id)
            if row is None or row.started_by_account_id != caller_account_id:
                return None
            return _job(row, self.clock())

    def _queue(
        self,
        caller_account_id: str,
        key_id: str,
        scope: Scope,
        header: UploadHeader,
        media: QueuedMedia,
        within: Callable[[Session], None] | None = None,
    ) -> Job:
        account_id = scope.owner_account_id
        media_id = media_id_for(caller_account_id, header.request_id)
        job_id = _job_id(caller_account_id, header.request_id)
        now = self.clock()
        row = JobRow(
            job_id=job_id,
            account_id=account_id,
            project_id=header.project_id,
            media_id=media_id,
            started_by_account_id=caller_account_id,
            started_by_key_id=key_id,
            content_type=media.content_type,
            size_bytes=media.size_bytes,
            storage_key=media.storage_key,
            request_id=header.request_id or None,
            digest=media.digest if header.request_id and media.digest else None,
            state=QUEUED,
            frames_done=0,
            frames_total=0,
            attempts=0,
            error="",
            created_at=now,
            updated_at=now,
        )
        try:
            with self.db.write() as session:
                if not scope.exists:  # so that ListJobs finds the project at once
                    self.projects.create_in(session, account_id, header.project_id)
                if header.filename:  # sealed under the media's own key, as the media row's
                    subject = media_subject(media_id)
                    key = self.uploads.seals.keys(session, account_id, [subject], create=True)
                    row.filename_ref = key[subject].ref
                    row.sealed_filename = key[subject].seal_text(
                        header.filename, job_filename_context(job_id)
                    )
                session.add(row)
                session.flush()
                if within is not None:
                    within(session)
                job = _job(row, now)
        except IntegrityError:  # a concurrent retry of the same request queued it first
            earlier = self._replayed(caller_account_id, scope, job_id, media.digest)
            if earlier is None:
                raise
            raise _Replayed(earlier) from None
        logs.log(logger, "job queued", account=account_id, job=job_id, media=media_id)
        self.wake()
        return job

    def _replayed(
        self, caller_account_id: str, scope: Scope, job_id: str, digest: str
    ) -> Job | None:
        with self.db.read() as session:
            row = session.get(JobRow, job_id)
            if row is None or row.started_by_account_id != caller_account_id:
                return None
            if (row.account_id, row.project_id) != (scope.owner_account_id, scope.project_id):
                raise key_reused("header.request_id")
            require_same(row.digest or digest, digest, "header.request_id")
            return _job(row, self.clock())

    # -- reading, watching, cancelling ------------------------------------------------------------

    def get(self, caller_account_id: str, job_id: str, action: Action = Action.READ) -> Job:
        """The job, if in the caller's scope (as its media's: an uploader sees the jobs it
        started); NotFound otherwise, PermissionDenied when the role may not do `action`."""
        with self.db.read() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound("no such job")
            record = (row.account_id, row.project_id, row.started_by_account_id)
            self.projects.record_scope(session, caller_account_id, record, action, what="job")
            return _job(row, self.clock(), segments_of(session, job_id))

    def watch(
        self, caller_account_id: str, job_id: str, active: Callable[[], bool]
    ) -> Iterator[Job]:
        """The job now, then again at each change of its progress, until it ends or the caller
        goes (`active` false). Changes made by this replica's worker are seen at once, others'
        within `watch_seconds`. ResourceExhausted (`TOO_MANY_WATCHES`) while `max_watches`
        watches run on this replica."""
        job = self.get(caller_account_id, job_id)
        if not self.watch_slots.acquire(blocking=False):
            raise ResourceExhausted(
                "too many jobs are watched on this gateway now; retry later, or poll GetJob",
                reason="TOO_MANY_WATCHES",
            )
        try:
            yield job
            while job.state not in ENDED and active():
                with self._changed:
                    self._changed.wait(self.watch_seconds)
                with self.db.read() as session:
                    row = session.get(JobRow, job_id)
                    if row is None:  # purged meanwhile
                        return
                    now = _job(row, self.clock(), segments_of(session, job_id))
                if now.progress != job.progress:
                    yield now
                job = now
        finally:
            self.watch_slots.release()

    def cancel(self, caller_account_id: str, job_id: str) -> Job:
        """Ends a queued or running job CANCELLED (its starter or the owner: an uploader sees
        only the jobs it started; reviewers and viewers may not); its stored bytes are deleted.
        A running attempt finds the job cancelled at its commit and keeps nothing. A job that
        ended already is returned as it is."""
        self.get(caller_account_id, job_id, Action.UPLOAD)
        now = self.clock()
        with self.db.write() as session:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise NotFound("no such job")
            if row.state in ENDED:
                return _job(row, now)
            self._end(session, row, CANCELLED, now)
            job = _job(row, now)
            account_id, storage_key = row.account_id, row.storage_key
        self.media_store.delete(account_id, storage_key)
        self._ended(job, account_id)
        return job

    def list(
        self, scope: Scope, caller_account_id: str, page_size: int, after: list[str] | None
    ) -> tuple[list[Job], list[str] | None]:
        """A project's jobs (Projects.project_scope with READ), newest first; an uploader's own
        only. Positions: [created (micros), job id]."""
        query = select(JobRow).where(
            JobRow.account_id == scope.owner_account_id, JobRow.project_id == scope.project_id
        )
        if scope.sees_own_uploads_only:
            query = query.where(JobRow.started_by_account_id == caller_account_id)
        if after is not None:
            moment = from_micros(after[0])
            query = query.where(
                or_(
                    JobRow.created_at < moment,
                    and_(JobRow.created_at == moment, JobRow.job_id < after[1]),
                )
            )
        query = query.order_by(JobRow.created_at.desc(), JobRow.job_id.desc())
        now = self.clock()
        with self.db.read() as session:
            rows = list(session.scalars(query.limit(fetch_limit(page_size))))
            page, last = page_of(rows, page_size, lambda r: r)
            jobs = [_job(r, now) for r in page]
        return jobs, [micros(last.created_at), last.job_id] if last else None

    # -- the worker (mixip/runtime/worker.py) -----------------------------------------------------

    def start_worker(self) -> None:
        self.worker.start()

    def wake(self) -> None:
        self.worker.wake()

    def stop(self) -> None:
        self.worker.stop()

    def run_once(self) -> bool:
        """Claims one due job and runs one attempt of it; whether there was one."""
        claim = self._claim()
        if claim is None:
            return False
        if isinstance(claim, Job):  # ended FAILED: its workers died on every attempt
            return True
        started = self.clock()
        self.checkpoint("job.claimed")
        pending = claim.pending
        try:
            if pending.content_type.startswith("video/"):  # by segments, read by ranges
                matched = self.segments.run(
                    claim.job_id, self.worker_id, pending, lambda: self._renew(claim)
                )
            else:
                data = self.media_store.get(pending.account_id, pending.storage_key)
                matched = self._match(
                    claim,
                    self.uploads.matcher.start_match(pending.account_id, pending.project_id, data),
                )
            self.checkpoint("job.matched")
            self.uploads.commit(pending, matched, started, lambda s: self._done(s, claim, matched))
        except (JobLost, SegmentsLost):
            logs.log(logger, "job attempt abandoned", job=claim.job_id, attempt=claim.attempts)
            return True
        except Exception as exc:  # the attempt failed: retried, or the job FAILED
            self._failed(claim, exc)
            return True
        self._ended(self._read(claim.job_id), pending.account_id)
        return True

    def _filename(self, session: Session, row: JobRow) -> str:
        """The job's file name ("" without one, or once its media's key is gone)."""
        if row.filename_ref is None or row.sealed_filename is None:
            return ""
        key = self.uploads.seals.by_ref(session, [row.filename_ref]).get(row.filename_ref)
        return key.open_text(row.sealed_filename, job_filename_context(row.job_id)) if key else ""

    def _end(
        self, session: Session, row: JobRow, state: int, now: datetime, *, error: str = ""
    ) -> None:
        """Ends a job in the caller's transaction: no lease, no file name (it went to the media
        row, sealed under the same key, or nowhere: a job that made no media destroys that key,
        and every copy of the name it sealed goes with it); its webhook event owed in the same
        transaction, so it is sent (at least once) exactly when the end commits."""
        event_type, state_name = END_EVENTS[state]
        self.webhooks.emit(
            session,
            row.account_id,
            event_type,
            {
                "job_id": row.job_id,
                "media_id": row.media_id,
                "project_id": row.project_id,
                "state": state_name,
            },
        )
        if state != DONE and row.filename_ref is not None:
            media = [(row.account_id, row.media_id)]
            self.uploads.seals.destroy_media_keys(session, media, owe_rotation=False)
        if state != DONE:  # a cancelled or failed job leaves no segment
            delete_segments(session, [row.job_id])
        row.state, row.error = state, error
        row.filename_ref, row.sealed_filename = None, None
        row.lease_owner, row.lease_until = None, None
        row.finished_at = row.updated_at = now

    def _claim(self) -> _Claim | Job | None:
        """The claimed job; or, for a job whose lease passed on its last attempt, the job
        ended FAILED (`LEASE_EXPIRED`: a job that kills its workers is not run forever)."""
        now = self.clock()
        due = or_(
            and_(
                JobRow.state == QUEUED, or_(JobRow.lease_until.is_(None), JobRow.lease_until <= now)
            ),
            and_(JobRow.state == RUNNING, JobRow.lease_until <= now),  # its worker died
        )
        with self.db.write() as session:
            row = session.scalars(
                select(JobRow)
                .where(due)
                .order_by(JobRow.created_at, JobRow.job_id)
                .limit(1)
                .with_for_update(skip_locked=True)  # PostgreSQL; SQLite's writers are serial
            ).first()
            if row is None:
                return None
            account_id, storage_key = row.account_id, row.storage_key
            if row.state == RUNNING and row.attempts >= self.max_attempts:
                self._end(session, row, FAILED, now, error="LEASE_EXPIRED")
                failed = _job(row, now)
            else:
                failed = None
                row.state, row.lease_owner = RUNNING, self.worker_id
                row.lease_until = now + self.lease
                row.attempts += 1
                row.started_at = row.updated_at = now
                row.frames_done = row.frames_total = 0
            claim = _Claim(
                row.job_id,
                row.attempts,
                PendingMedia(
                    media_id=row.media_id,
                    account_id=row.account_id,
                    project_id=row.project_id,
                    filename=self._filename(session, row),
                    content_type=row.content_type,
                    size_bytes=row.size_bytes,
                    storage_key=row.storage_key,
                    request_id=row.request_id or "",
                    digest=row.digest or "",
                    uploaded_by_account_id=row.started_by_account_id,
                    key_id=row.started_by_key_id,
                    create_project=False,  # made when the job was queued
                ),
            )
        if failed is not None:
            self.media_store.delete(account_id, storage_key)
            self._ended(failed, account_id)
            return failed
        logs.log(logger, "job claimed", job=claim.job_id, attempt=claim.attempts)
        self._notify()
        return claim

    def _match(self, claim: _Claim, matching: PendingMatch) -> Matched:
        """Waits for the matcher, renewing the lease at a third of its length; JobLost (and
        the match cancelled) once the job is cancelled or the lease lost."""
        renew = self.lease.total_seconds() / 3
        while True:
            try:
                return matching.result(timeout=renew)
            except TimeoutError:
                if not self._renew(claim):
                    matching.cancel()
                    raise JobLost from None

    def _renew(self, claim: _Claim) -> bool:
        now = self.clock()
        with self.db.write() as session:
            return (
                affected(
                    session,
                    update(JobRow)
                    .where(*_held(claim.job_id, self.worker_id))
                    .values(lease_until=now + self.lease, updated_at=now),
                )
                == 1
            )

    def _done(self, session: Session, claim: _Claim, matched: Matched) -> None:
        """In the results' commit: ends the job DONE if this worker still holds it."""
        row = session.get(JobRow, claim.job_id, with_for_update=True)
        if row is None or row.state != RUNNING or row.lease_owner != self.worker_id:
            raise JobLost
        frames = matched.frames_sampled or 1  # an image is one frame
        row.frames_done = row.frames_total = frames
        self._end(session, row, DONE, self.clock())

    def _failed(self, claim: _Claim, exc: Exception) -> None:
        """A failed attempt: the job is queued again after a backoff, or ends FAILED when the
        failure is permanent or its attempts are spent (its stored bytes are then deleted)."""
        code = exc.code() if isinstance(exc, grpc.RpcError) else None
        permanent = code in PERMANENT or isinstance(exc, InvalidArgument | FailedPrecondition)
        reason = (code.name if code else getattr(exc, "reason", "") or type(exc).__name__)[:64]
        now = self.clock()
        with self.db.write() as session:
            row = session.get(JobRow, claim.job_id, with_for_update=True)
            if row is None or row.state != RUNNING or row.lease_owner != self.worker_id:
                return  # cancelled, or another worker has it now
            if permanent or row.attempts >= self.max_attempts:
                self._end(session, row, FAILED, now, error=reason)
                job: Job | None = _job(row, now)
            else:
                row.state, row.lease_owner, row.error = QUEUED, None, reason
                row.lease_until = now + timedelta(seconds=2**row.attempts)
                row.updated_at, job = now, None
            account_id, storage_key = row.account_id, row.storage_key
        logs.log(
            logger,
            "job attempt failed",
            level=logging.WARNING,
            job=claim.job_id,
            attempt=claim.attempts,
            reason=reason,
        )
        if job is not None:
            self.media_store.delete(account_id, storage_key)
            self._ended(job, account_id)
        else:
            self._notify()

    def _ended(self, job: Job, account_id: str) -> None:
        """Every job's end, once it is committed (DONE with its results, FAILED or CANCELLED
        with nothing kept): said to watchers and logged."""
        self._notify()
        logs.log(
            logger,
            "job ended",
            account=account_id,
            job=job.job_id,
            media=job.media_id,
            state=gateway_pb2.JobState.Name(gateway_pb2.JobState.ValueType(job.state)),
            attempts=job.attempts,
            error=job.error,
        )

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _read(self, job_id: str) -> Job:
        with self.db.read() as session:
            row = session.get(JobRow, job_id)
            assert row is not None  # ended jobs are purged days later
            return _job(row, self.clock())


class JobPurge:
    """Deletes the jobs that ended more than `retention_days` before a time (the media purge
    calls it, gateway/retention.py)."""

    def __init__(self, db: Database, retention_days: int) -> None:
        self.db = db
        self.retention = timedelta(days=retention_days)

    def __call__(self, as_of: datetime, limit: int) -> int:
        """Up to `limit` of them, oldest first; their number."""
        with self.db.write() as session:
            ids = session.scalars(
                select(JobRow.job_id)
                .where(JobRow.finished_at < as_of - self.retention)
                .order_by(JobRow.finished_at, JobRow.job_id)
                .limit(limit)
            ).all()
            delete_segments(session, list(ids))
            return affected(session, delete(JobRow).where(JobRow.job_id.in_(list(ids))))


def _job_id(caller_account_id: str, request_id: str) -> str:
    return "job_" + media_id_for(caller_account_id, request_id).removeprefix("med_")


def _held(job_id: str, worker_id: str) -> tuple[ColumnElement[bool], ...]:
    """The job is still this worker's: running under its lease."""
    return (JobRow.job_id == job_id, JobRow.state == RUNNING, JobRow.lease_owner == worker_id)


def _job(row: JobRow, now: datetime, segments: Sequence[Segment] = ()) -> Job:
    done, total = row.frames_done, row.frames_total
    percent = min(100.0, 100.0 * done / total) if total else (100.0 if row.state == DONE else 0.0)
    eta = 0.0
    if row.state == RUNNING and row.started_at is not None and 0 < done < total:
        eta = (now - row.started_at).total_seconds() * (total - done) / done
    return Job(
        job_id=row.job_id,
        project_id=row.project_id,
        media_id=row.media_id,
        state=row.state,
        frames_done=done,
        frames_total=total,
        percent=percent,
        eta_seconds=eta,
        attempts=row.attempts,
        error=row.error,
        started_by_account_id=row.started_by_account_id,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        segments=tuple(segments),
    )
