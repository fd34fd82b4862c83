"""The commands that talk to a running mesh through the gateway."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from mixip.cli.annotate import annotate_image, contact_sheet
from mixip.cli.connection import Connection
from mixip.cli.output import CliError, Output, Progress
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2
from mixip.gateway.v1 import admin_pb2, gateway_pb2
from mixip.retention.v1 import retention_pb2
from mixip.runtime.times import to_timestamp, utcnow

CHUNK = 1024 * 1024
SCOPES = {
    "biometric": consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
    "usage": consent_pb2.CONSENT_SCOPE_FACE_USAGE,
}
JOBS = {
    "purge": retention_pb2.RETENTION_JOB_PURGE,
    "reconcile": retention_pb2.RETENTION_JOB_RECONCILE,
}


def _enum_name(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def face_json(face: common_pb2.FaceResult, video: bool) -> dict:
    document = {
        "label": _enum_name(common_pb2.FaceLabel, face.label, "FACE_LABEL_"),
        "talent_id": face.talent_id or None,
        "similarity": round(face.similarity, 4),
        "reason": _enum_name(common_pb2.LabelReason, face.reason, "LABEL_REASON_"),
        "box": [face.box.x, face.box.y, face.box.width, face.box.height],
    }
    if video:
        document["ranges"] = [[r.start_seconds, r.end_seconds] for r in face.ranges]
        document["best_frame_seconds"] = face.best_frame_seconds
    return document


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def _chunks(header_message, data: bytes, progress: Progress) -> Iterator:
    yield header_message
    for start in range(0, len(data), CHUNK):
        progress.update((start + CHUNK) / max(1, len(data)))
        yield type(header_message)(chunk=data[start : start + CHUNK])
    progress.update(1.0, "matching")


# -- accounts ---------------------------------------------------------------------------------


def accounts_create(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    reply = stub.CreateAccount(admin_pb2.CreateAccountRequest(name=args.name), metadata=meta)
    out.result(
        {"account_id": reply.account.account_id, "api_key": reply.api_key},
        [
            f"account {reply.account.account_id} ({args.name})",
            f"api key (shown once): {reply.api_key}",
        ],
    )
    return 0


# -- consent ----------------------------------------------------------------------------------


def consent_record(args, conn: Connection, out: Output) -> int:
    scope = SCOPES[args.scope]
    if scope == SCOPES["usage"] and not args.project:
        raise CliError("--scope usage needs --project P")
    if scope == SCOPES["biometric"] and args.project:
        raise CliError("--project applies to --scope usage only")
    decision = (
        consent_pb2.CONSENT_DECISION_GRANTED
        if args.action == "grant"
        else consent_pb2.CONSENT_DECISION_REVOKED
    )
    stub, meta = conn.gateway()
    reply = stub.RecordConsent(
        gateway_pb2.RecordConsentRequest(
            talent_id=args.talent,
            scope=scope,
            project_id=args.project or "",
            decision=decision,
            evidence=consent_pb2.Evidence(
                method=args.method,
                policy_version=args.policy_version,
                actor=args.actor,
                captured_at=to_timestamp(utcnow()),
            ),
            request_id=uuid.uuid4().hex,
        ),
        metadata=meta,
    )
    record = _record_json(reply.record)
    what = f"face usage ({args.project})" if args.project else "biometric processing"
    out.result(
        record, f"{args.action}ed {what} consent for {args.talent} (record {record['record_id']})"
    )
    return 0


def _record_json(record: consent_pb2.ConsentRecord) -> dict:
    return {
        "record_id": record.record_id,
        "talent_id": record.talent_id,
        "scope": _enum_name(consent_pb2.ConsentScope, record.scope, "CONSENT_SCOPE_"),
        "project_id": record.project_id or None,
        "decision": _enum_name(consent_pb2.ConsentDecision, record.decision, "CONSENT_DECISION_"),
        "method": record.evidence.method,
        "policy_version": record.evidence.policy_version,
        "actor": record.evidence.actor,
        "captured_at": record.evidence.captured_at.ToJsonString(),
        "recorded_at": record.recorded_at.ToJsonString(),
    }


def consent_show(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    records, token = [], ""
    while True:
        page = stub.ListConsents(
            gateway_pb2.ListConsentsRequest(
                talent_id=args.talent, page_size=1000, page_token=token
            ),
            metadata=meta,
        )
        records += [_record_json(r) for r in page.records]
        token = page.next_page_token
        if not token:
            break
    current: dict[str, str] = {}
    for record in records:
        key = record["scope"] + (f" {record['project_id']}" if record["project_id"] else "")
        current[key] = "active" if record["decision"] == "granted" else "revoked"
    lines = (
        [f"{args.talent}: no consent recorded"]
        if not records
        else [
            f"{args.talent}:",
            *(f"  {key}: {state}" for key, state in sorted(current.items())),
            f"  ({len(records)} record(s) in the ledger)",
        ]
    )
    out.result({"talent_id": args.talent, "current": current, "records": records}, lines)
    return 0


# -- enrollment and matching --------------------------------------------------------------------


def enroll(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    enrolled = []
    for image in args.images:
        data = _read(image)
        with out.progress(f"enrolling {Path(image).name}") as progress:
            header = gateway_pb2.EnrollTalentRequest(
                header=gateway_pb2.EnrollHeader(talent_id=args.talent, request_id=uuid.uuid4().hex)
            )
            reply = stub.EnrollTalent(_chunks(header, data, progress), metadata=meta)
        enrolled.append({"image": image, "face_id": reply.face.face_id})
    out.result(
        {"talent_id": args.talent, "faces": enrolled},
        [f"enrolled {e['image']} as face {e['face_id']}" for e in enrolled],
    )
    return 0


def match(args, conn: Connection, out: Output) -> int:
    data = _read(args.file)
    stub, meta = conn.gateway()
    with out.progress(f"uploading {Path(args.file).name}") as progress:
        header = gateway_pb2.UploadMediaRequest(
            header=gateway_pb2.UploadHeader(
                project_id=args.project,
                filename=Path(args.file).name[:255],
                request_id=uuid.uuid4().hex,
            )
        )
        reply = stub.UploadMedia(_chunks(header, data, progress), metadata=meta)
    video = reply.kind == common_pb2.MEDIA_KIND_VIDEO
    faces = [face_json(f, video) for f in reply.faces]
    if args.annotate:
        _annotate(Path(args.annotate), Path(args.file), data, faces, video)
    document = {"media_id": reply.media_id, "faces": faces}
    lines = [f"media {reply.media_id}: {len(faces)} face(s)"]
    for i, face in enumerate(faces):
        where = " at " + ", ".join(f"{a:.1f}-{b:.1f}s" for a, b in face["ranges"]) if video else ""
        lines.append(
            f"  [{i}] {face['label'].upper():8} {face['talent_id'] or '-':24} "
            f"similarity {face['similarity']:.3f} ({face['reason']}){where}"
        )
    if args.annotate:
        lines.append(f"annotated image: {args.annotate}")
        document["annotated"] = args.annotate
    out.result(document, lines)
    return 0


def _annotate(target: Path, source: Path, data: bytes, faces: list[dict], video: bool) -> None:
    try:
        if not video:
            annotate_image(data, faces, target)
            return
        contact_sheet(source, faces, target)  # the user's own file: no copy of it is made
    except ValueError as exc:
        raise CliError(str(exc)) from None


# -- data-subject rights -----------------------------------------------------------------------


def export(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    with out.progress(f"exporting {args.talent}"):
        reply = stub.ExportTalentData(
            gateway_pb2.ExportTalentDataRequest(talent_id=args.talent), metadata=meta
        )
    document = json.loads(reply.document_json)
    if args.output:
        Path(args.output).write_text(reply.document_json + "\n")
        counts = {k: len(v) for k, v in document.items() if isinstance(v, list)}
        out.result(
            {"talent_id": args.talent, "written": args.output, "counts": counts},
            f"wrote {args.output}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
        )
    else:
        out.result(document, reply.document_json)
    return 0


def erase(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.EraseTalent(
        gateway_pb2.EraseTalentRequest(talent_id=args.talent, request_id=uuid.uuid4().hex),
        metadata=meta,
    )
    steps = [
        {"name": s.name, "count": s.count, "completed_at": s.completed_at.ToJsonString()}
        for s in reply.steps
    ]
    out.result(
        {
            "receipt_id": reply.receipt_id,
            "talent_id": reply.talent_id,
            "steps": steps,
            "completed_at": reply.completed_at.ToJsonString(),
        },
        [
            f"erased {reply.talent_id} (receipt {reply.receipt_id})",
            *(f"  {s['name']}: {s['count']}" for s in steps),
        ],
    )
    return 0


# -- audit ------------------------------------------------------------------------------------


def audit_list(args, conn: Connection, out: Output) -> int:
    since = None
    if args.since:
        try:
            parsed = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            raise CliError(f"--since {args.since!r} is not an ISO 8601 time") from None
        since = to_timestamp(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    stub, meta = conn.gateway()
    events, token = [], ""
    while True:
        page = stub.ListAuditEvents(
            gateway_pb2.ListAuditEventsRequest(
                talent_id=args.talent or "",
                project_id=args.project or "",
                since=since,
                page_size=1000,
                page_token=token,
            ),
            metadata=meta,
        )
        events += page.events
        token = page.next_page_token
        if not token:
            break
    documents = [
        {
            "sequence": e.sequence,
            "occurred_at": e.occurred_at.ToJsonString(),
            "project_id": e.project_id,
            "media_id": e.media_id,
            "face_index": e.face_index,
            "label": _enum_name(common_pb2.FaceLabel, e.label, "FACE_LABEL_"),
            "reason": _enum_name(common_pb2.LabelReason, e.reason, "LABEL_REASON_"),
            "similarity": round(e.similarity, 4),
            "talent_linked": e.talent_linked,
            "actor": e.actor,
        }
        for e in events
    ]
    lines = [f"{len(documents)} event(s)"] + [
        f"  #{d['sequence']} {d['occurred_at']} {d['project_id']} {d['media_id']}"
        f"[{d['face_index']}] {d['label']} ({d['reason']})"
        for d in documents
    ]
    out.result({"events": documents}, lines)
    return 0


def audit_verify(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.VerifyAuditLog(gateway_pb2.VerifyAuditLogRequest(), metadata=meta)
    document = {
        "ok": reply.ok,
        "events_checked": reply.events_checked,
        "first_broken_sequence": reply.first_broken_sequence or None,
        "detail": reply.detail,
    }
    text = (
        f"audit log verifies ({reply.events_checked} events checked)"
        if reply.ok
        else f"audit log does NOT verify: {reply.detail}"
    )
    out.result(document, text)
    return 0 if reply.ok else 3


# -- retention --------------------------------------------------------------------------------


def _report_json(report: retention_pb2.RunReport) -> dict:
    def when(ts: Timestamp) -> str | None:
        return ts.ToJsonString() if ts.seconds or ts.nanos else None

    return {
        "run_id": report.run_id,
        "job": _enum_name(retention_pb2.RetentionJob, report.job, "RETENTION_JOB_"),
        "outcome": _enum_name(retention_pb2.RunOutcome, report.outcome, "RUN_OUTCOME_"),
        "started_at": when(report.started_at),
        "finished_at": when(report.finished_at),
        "events_purged": report.events_purged,
        "talents_checked": report.talents_checked,
        "vectors_deleted": report.vectors_deleted,
        "error": report.error or None,
    }


def retention_run(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    with out.progress(f"running {args.job}"):
        reply = stub.RunRetentionJob(
            admin_pb2.RunRetentionJobRequest(job=JOBS[args.job]), metadata=meta
        )
    report = _report_json(reply.report)
    out.result(
        report,
        f"{report['job']}: {report['outcome']} — {report['events_purged']} "
        f"events purged, {report['vectors_deleted']} vectors deleted"
        + (f" ({report['error']})" if report["error"] else ""),
    )
    return 0 if report["outcome"] == "succeeded" else 1


def retention_status(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    status = stub.GetRetentionStatus(admin_pb2.GetRetentionStatusRequest(), metadata=meta).status
    jobs = []
    for job in status.jobs:
        jobs.append(
            {
                "job": _enum_name(retention_pb2.RetentionJob, job.job, "RETENTION_JOB_"),
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


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Registers the gateway commands on the `mixip` parser."""
    accounts = sub.add_parser("accounts", help="manage accounts (admin)").add_subparsers(
        dest="action", required=True
    )
    create = accounts.add_parser("create", parents=[common], help="create an account and key")
    create.add_argument("name")
    create.set_defaults(run=accounts_create)

    consent = sub.add_parser("consent", help="record or show consent").add_subparsers(
        dest="action", required=True
    )
    for action in ("grant", "revoke"):
        p = consent.add_parser(action, parents=[common], help=f"{action} a consent")
        p.add_argument("talent")
        p.add_argument("--scope", choices=sorted(SCOPES), required=True)
        p.add_argument("--project", help="the project (for --scope usage)")
        p.add_argument("--method", default="cli", help="how consent was captured")
        p.add_argument("--policy-version", default="1", help="version of the consent text")
        p.add_argument("--actor", default="mixip-cli", help="who captured it")
        p.set_defaults(run=consent_record)
    show = consent.add_parser("show", parents=[common], help="current consent and history")
    show.add_argument("talent")
    show.set_defaults(run=consent_show)

    p = sub.add_parser("enroll", parents=[common], help="enroll a talent's face image(s)")
    p.add_argument("talent")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(run=enroll)

    p = sub.add_parser("match", parents=[common], help="match an image or video")
    p.add_argument("file")
    p.add_argument("--project", required=True)
    p.add_argument("--annotate", metavar="OUT.png", help="write an annotated image")
    p.set_defaults(run=match)

    p = sub.add_parser("export", parents=[common], help="export a talent's data (JSON)")
    p.add_argument("talent")
    p.add_argument("-o", "--output", metavar="FILE")
    p.set_defaults(run=export)

    p = sub.add_parser("erase", parents=[common], help="erase a talent")
    p.add_argument("talent")
    p.set_defaults(run=erase)

    audit = sub.add_parser("audit", help="read or verify the audit log").add_subparsers(
        dest="action", required=True
    )
    p = audit.add_parser("list", parents=[common], help="list audit events")
    p.add_argument("--talent")
    p.add_argument("--project")
    p.add_argument("--since", metavar="ISO8601")
    p.set_defaults(run=audit_list)
    p = audit.add_parser("verify", parents=[common], help="verify the hash chain")
    p.set_defaults(run=audit_verify)

    retention = sub.add_parser("retention", help="retention jobs (admin)").add_subparsers(
        dest="action", required=True
    )
    p = retention.add_parser("run", parents=[common], help="run a retention job now")
    p.add_argument("--job", choices=sorted(JOBS), default="purge")
    p.set_defaults(run=retention_run)
    p = retention.add_parser("status", parents=[common], help="schedule and last runs")
    p.set_defaults(run=retention_status)
