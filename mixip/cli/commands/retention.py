"""`mixip retention run|status` (admin): the retention jobs."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from mixip.cli.arguments import time_option
from mixip.cli.commands.parsing import Subparsers
from mixip.cli.media import enum_name
from mixip.cli.output import CliError, Output
from mixip.gateway.v1 import admin_pb2
from mixip.retention.v1 import retention_pb2
from mixip.runtime.connection import Connection

JOBS = {
    "purge": retention_pb2.RETENTION_JOB_PURGE,
    "reconcile": retention_pb2.RETENTION_JOB_RECONCILE,
    "rotate-vault": retention_pb2.RETENTION_JOB_ROTATE_VAULT,
}


def _job_name(job: int) -> str:
    """The job as `--job` names it (rotate-vault, not rotate_vault)."""
    return enum_name(retention_pb2.RetentionJob, job, "RETENTION_JOB_").replace("_", "-")


def _report_json(report: retention_pb2.RunReport) -> dict[str, Any]:
    def when(ts: Timestamp) -> str | None:
        return ts.ToJsonString() if ts.seconds or ts.nanos else None

    return {
        "run_id": report.run_id,
        "job": _job_name(report.job),
        "outcome": enum_name(retention_pb2.RunOutcome, report.outcome, "RUN_OUTCOME_"),
        "started_at": when(report.started_at),
        "finished_at": when(report.finished_at),
        "events_purged": report.events_purged,
        "talents_checked": report.talents_checked,
        "vectors_deleted": report.vectors_deleted,
        "as_of": when(report.as_of),
        "requested_by": report.requested_by or None,
        "media_purged": report.media_purged,
        "media_objects_deleted": report.media_objects_deleted,
        "error": report.error or None,
    }


def retention_run(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    as_of = time_option(args.as_of, "--as-of")
    if as_of is not None and args.job != "purge":
        raise CliError("--as-of applies to --job purge only", exit_code=2)
    stub, meta = conn.admin()
    with out.progress(f"running {args.job}"):
        reply = stub.RunRetentionJob(
            admin_pb2.RunRetentionJobRequest(job=JOBS[args.job], as_of=as_of), metadata=meta
        )
    report = _report_json(reply.report)
    out.result(
        report,
        f"{report['job']}: {report['outcome']} — {report['events_purged']} "
        f"events purged, {report['media_purged']} media purged, "
        f"{report['vectors_deleted']} vectors deleted"
        + (f" (as of {report['as_of']})" if as_of is not None else "")
        + (f" ({report['error']})" if report["error"] else ""),
    )
    return 0 if report["outcome"] == "succeeded" else 1


def retention_status(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    status = stub.GetRetentionStatus(admin_pb2.GetRetentionStatusRequest(), metadata=meta).status
    jobs: list[dict[str, Any]] = []
    for job in status.jobs:
        jobs.append(
            {
                "job": _job_name(job.job),
                "schedule": job.schedule,
                "next_run_time": job.next_run_time.ToJsonString()
                if job.HasField("next_run_time")
                else None,
                "last_run": _report_json(job.last_run) if job.HasField("last_run") else None,
            }
        )
    lines = [f"retention period: {status.retention_days} days"] + [
        f"  {j['job']}: {j['schedule']}, next {j['next_run_time'] or '-'}, last "
        + (
            f"{j['last_run']['outcome']} at {j['last_run']['started_at']}"
            if j["last_run"]
            else "never"
        )
        for j in jobs
    ]
    out.result({"retention_days": status.retention_days, "jobs": jobs}, lines)
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip retention run|status`."""
    retention = sub.add_parser("retention", help="retention jobs (admin)").add_subparsers(
        dest="action", required=True
    )
    p = retention.add_parser("run", parents=[common], help="run a retention job now")
    p.add_argument("--job", choices=sorted(JOBS), default="purge", help="the job (default purge)")
    p.add_argument(
        "--as-of",
        metavar="ISO8601",
        help="purge only: a drill, run as if at this later time (recorded with the run)",
    )
    p.set_defaults(run=retention_run)
    p = retention.add_parser("status", parents=[common], help="schedule and last runs")
    p.set_defaults(run=retention_status)
