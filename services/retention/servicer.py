"""The gRPC edge of the retention service: validate, convert, delegate to `RetentionService`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import grpc

from mixip.retention.v1 import retention_pb2, retention_pb2_grpc
from mixip.runtime.paging import decode_page_token, next_page_token
from mixip.runtime.times import to_timestamp
from mixip.runtime.validation import Checks
from services.retention.domain import Job, Outcome, Run, Trigger
from services.retention.service import RetentionService
from services.retention.settings import RetentionSettings

JOBS = {
    retention_pb2.RETENTION_JOB_PURGE: Job.PURGE,
    retention_pb2.RETENTION_JOB_RECONCILE: Job.RECONCILE,
    retention_pb2.RETENTION_JOB_ROTATE_VAULT: Job.ROTATE_VAULT,
}
_JOB_VALUES = {job: value for value, job in JOBS.items()}
_TRIGGERS = {
    Trigger.SCHEDULE: retention_pb2.RUN_TRIGGER_SCHEDULE,
    Trigger.MANUAL: retention_pb2.RUN_TRIGGER_MANUAL,
}
_OUTCOMES = {
    Outcome.RUNNING: retention_pb2.RUN_OUTCOME_RUNNING,
    Outcome.SUCCEEDED: retention_pb2.RUN_OUTCOME_SUCCEEDED,
    Outcome.FAILED: retention_pb2.RUN_OUTCOME_FAILED,
    Outcome.SKIPPED: retention_pb2.RUN_OUTCOME_SKIPPED,
}


class RetentionServicer(retention_pb2_grpc.RetentionServiceServicer):
    def __init__(
        self,
        service: RetentionService,
        settings: RetentionSettings,
        next_run_time: Callable[[Job], datetime | None],
    ) -> None:
        self.service = service
        self.settings = settings
        self.next_run_time = next_run_time

    def RunNow(
        self, request: retention_pb2.RunNowRequest, context: grpc.ServicerContext
    ) -> retention_pb2.RunNowResponse:
        checks = Checks()
        checks.enum("job", request.job, retention_pb2.RetentionJob)
        drill = request.HasField("as_of")
        as_of = checks.drill_time("as_of", request.as_of, drill, self.service.clock())
        if drill and request.job not in (0, retention_pb2.RETENTION_JOB_PURGE):
            checks.fail("as_of", "only the purge job runs as of a later date")
        checks.text("requested_by", request.requested_by, max_length=64, required=False)
        checks.done()
        run = self.service.run_now(
            JOBS[request.job], as_of=as_of, requested_by=request.requested_by
        )
        return retention_pb2.RunNowResponse(report=_report(run))

    def GetStatus(
        self, request: retention_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> retention_pb2.GetStatusResponse:
        return retention_pb2.GetStatusResponse(
            jobs=[self._status(job) for job in Job],
            retention_days=self.settings.retention_days,
        )

    def _status(self, job: Job) -> retention_pb2.JobStatus:
        last = self.service.last_run(job)
        return retention_pb2.JobStatus(
            job=_JOB_VALUES[job],
            next_run_time=to_timestamp(self.next_run_time(job)),
            last_run=_report(last) if last else None,
            schedule=self.settings.schedule(job),
        )

    def ListRuns(
        self, request: retention_pb2.ListRunsRequest, context: grpc.ServicerContext
    ) -> retention_pb2.ListRunsResponse:
        checks = Checks()
        if request.job:  # optional filter: unset means every job
            checks.enum("job", request.job, retention_pb2.RetentionJob)
        page_size = checks.page_size("page_size", request.page_size)
        checks.done()
        filters = {"j": request.job}
        before = decode_page_token(request.page_token, filters)
        runs, next_before = self.service.list_runs(JOBS.get(request.job), page_size, before)
        return retention_pb2.ListRunsResponse(
            runs=[_report(run) for run in runs],
            next_page_token=next_page_token(next_before, filters),
        )


def _report(run: Run) -> retention_pb2.RunReport:
    return retention_pb2.RunReport(
        run_id=run.run_id,
        job=_JOB_VALUES[run.job],
        trigger=_TRIGGERS[run.trigger],
        outcome=_OUTCOMES[run.outcome],
        started_at=to_timestamp(run.started_at),
        finished_at=to_timestamp(run.finished_at),
        cutoff=to_timestamp(run.cutoff),
        events_purged=run.events_purged,
        talents_checked=run.talents_checked,
        vectors_deleted=run.vectors_deleted,
        error=run.error or "",
        as_of=to_timestamp(run.as_of),
        requested_by=run.requested_by,
        media_purged=run.media_purged,
        media_objects_deleted=run.media_objects_deleted,
    )
