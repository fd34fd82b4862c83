"""The commands that talk to a running mesh through the gateway."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mixip.cli import folder, jobs, resumable
from mixip.cli.connection import Connection
from mixip.cli.media import BYTES, enum_name, face_json, start_job, upload_chunks
from mixip.cli.output import CliError, Output
from mixip.cli.project_ids import require_project
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2
from mixip.gateway.v1 import admin_pb2, gateway_pb2
from mixip.retention.v1 import retention_pb2
from mixip.runtime.files import write_private
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page
from mixip.runtime.times import to_timestamp, utcnow
from mixip.tlog.checkpoint import Checkpoint, open_checkpoint
from mixip.tlog.cosignature import CosignatureVerifier
from mixip.tlog.merkle import leaf_hash
from mixip.tlog.note import Ed25519Verifier, NoteError, b64decode, b64encode
from mixip.tlog.proof import ProofError, verify_consistency, verify_inclusion
from mixip.tlog.receipt import Receipt, ReceiptError, verify_receipt

RESUMABLE_ABOVE = 8 * 1024 * 1024  # larger files go through an upload session
ADVISORY = "labels are advisory: a person decides whether media is cleared for use"
SCOPES = {
    "biometric": consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
    "usage": consent_pb2.CONSENT_SCOPE_FACE_USAGE,
}
JOBS = {
    "purge": retention_pb2.RETENTION_JOB_PURGE,
    "reconcile": retention_pb2.RETENTION_JOB_RECONCILE,
    "rotate-vault": retention_pb2.RETENTION_JOB_ROTATE_VAULT,
}


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


# -- accounts ---------------------------------------------------------------------------------


# The command serving each client-facing RPC (a test keeps it complete).
RPC_COMMANDS = {
    "UploadMedia": "match",
    "CreateUploadSession": "match",
    "AppendUploadChunks": "match",
    "GetUploadSession": "match",
    "FinishUploadSession": "match",
    "GetMediaResults": "media show",
    "RecordConsent": "consent grant",
    "ListConsents": "consent show",
    "EnrollTalent": "enroll",
    "ListTalentFaces": "faces list",
    "DeleteTalentFace": "faces delete",
    "ListAuditEvents": "audit list",
    "VerifyAuditLog": "audit verify",
    "GetAuditCheckpoint": "audit checkpoint",
    "GetAuditInclusionProof": "audit prove",
    "GetAuditConsistencyProof": "audit consistency",
    "GetAuditLogPublicKey": "audit public-key",
    "ExportTalentData": "export",
    "EraseTalent": "erase",
    "CreateAccount": "accounts create",
    "ListAccounts": "accounts list",
    "SetAccountRetention": "accounts retention",
    "CreateApiKey": "keys create",
    "ListApiKeys": "keys list",
    "RevokeApiKey": "keys revoke",
    "RunRetentionJob": "retention run",
    "GetRetentionStatus": "retention status",
    "GetVaultStatus": "audit vault-status",
    "CreateProject": "projects create",
    "ListProjects": "projects list",
    "InviteCollaborator": "projects invite",
    "AcceptInvitation": "projects accept",
    "RemoveCollaborator": "projects remove",
    "ListCollaborators": "projects collaborators",
    "ListMedia": "media list",
    "GetMediaPreview": "media preview",
    "RecordReviewDecision": "review",
    "ListClearanceReport": "report",
    "ListAccessLog": "access-log list",
    "AddWebhook": "webhooks add",
    "ListWebhooks": "webhooks list",
    "RemoveWebhook": "webhooks remove",
    "TestWebhook": "webhooks test",
    "RotateWebhookSecret": "webhooks rotate-secret",
    "GetJob": "jobs show",
    "WatchJob": "jobs wait",
    "CancelJob": "jobs cancel",
    "ListJobs": "jobs list",
    "GetAccount": "account show",
    "UpdateAccount": "account update",
    "CloseOwnAccount": "account close",
    "ExportOwnAccount": "account export",
    "CloseAccount": "accounts close",
    "ExportAccount": "accounts export",
}


def accounts_create(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    # A key per invocation: the channel's retries then cannot mint a second account or key.
    reply = stub.CreateAccount(
        admin_pb2.CreateAccountRequest(name=args.name, request_id=uuid.uuid4().hex),
        metadata=meta,
    )
    out.result(
        {"account_id": reply.account.account_id, "api_key": reply.api_key},
        [
            f"account {reply.account.account_id} ({args.name})",
            f"api key (shown once): {reply.api_key}",
        ],
    )
    return 0


def accounts_list(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    pages = every_page(
        lambda token: stub.ListAccounts(
            admin_pb2.ListAccountsRequest(page_size=MAX_BATCH, page_token=token), metadata=meta
        )
    )
    accounts = [
        {
            "account_id": a.account_id,
            "name": a.name,
            "email": a.email,
            "created_at": a.created_at.ToJsonString(),
            "closed_at": a.closed_at.ToJsonString() if a.HasField("closed_at") else None,
        }
        for page in pages
        for a in page.accounts
    ]
    lines = [f"{len(accounts)} account(s)"] + [
        f"  {a['account_id']}  {a['name']}"
        + (f" <{a['email']}>" if a["email"] else "")
        + f"  created {a['created_at']}"
        + (f"  closed {a['closed_at']}" if a["closed_at"] else "")
        for a in accounts
    ]
    out.result({"accounts": accounts}, lines)
    return 0


def accounts_retention(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    reply = stub.SetAccountRetention(
        admin_pb2.SetAccountRetentionRequest(account_id=args.account, retention_days=args.days),
        metadata=meta,
    )
    out.result(
        {
            "account_id": reply.account_id,
            "retention_days": reply.retention_days,
            "updated_at": reply.updated_at.ToJsonString(),
        },
        f"account {reply.account_id}: stored media and results kept {reply.retention_days} days",
    )
    return 0


def accounts_show(args, conn: Connection, out: Output) -> int:
    """One account as an admin reads it (ListAccounts' pages, until it is found)."""
    stub, meta = conn.admin()
    pages = every_page(
        lambda token: stub.ListAccounts(
            admin_pb2.ListAccountsRequest(page_size=MAX_BATCH, page_token=token), metadata=meta
        )
    )
    found = next((a for page in pages for a in page.accounts if a.account_id == args.account), None)
    if found is None:
        raise CliError(f"no such account: {args.account}", exit_code=1)
    closed = found.closed_at.ToJsonString() if found.HasField("closed_at") else None
    out.result(
        {
            "account_id": found.account_id,
            "name": found.name,
            "email": found.email,
            "created_at": found.created_at.ToJsonString(),
            "closed_at": closed,
        },
        [
            f"account {found.account_id}",
            f"  name:    {found.name}",
            f"  email:   {found.email or '-'}",
            f"  created: {found.created_at.ToJsonString()}",
            *([f"  closed:  {closed} (closing)"] if closed else []),
        ],
    )
    return 0


def accounts_close(args, conn: Connection, out: Output) -> int:
    _confirm_closure(args, args.account)
    stub, meta = conn.admin()
    with out.progress(f"closing {args.account}"):
        reply = stub.CloseAccount(
            admin_pb2.CloseAccountRequest(account_id=args.account), metadata=meta
        )
    _print_closure(out, reply.closure)
    return 0


def accounts_export(args, conn: Connection, out: Output) -> int:
    if args.output and Path(args.output).exists() and not args.force:
        raise CliError(f"{args.output} exists; pass --force to overwrite it", exit_code=2)
    stub, meta = conn.admin()
    with out.progress(f"exporting {args.account}"):
        reply = stub.ExportAccount(
            admin_pb2.ExportAccountRequest(account_id=args.account), metadata=meta
        )
    return _account_export(out, args, reply.document_json)


def account_show(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.GetAccount(gateway_pb2.GetAccountRequest(), metadata=meta)
    _print_profile(out, reply.account)
    return 0


def account_update(args, conn: Connection, out: Output) -> int:
    if args.name is None and args.email is None:
        raise CliError("give --name, --email or both", exit_code=2)
    stub, meta = conn.gateway()
    reply = stub.UpdateAccount(
        gateway_pb2.UpdateAccountRequest(name=args.name, email=args.email), metadata=meta
    )
    _print_profile(out, reply.account)
    return 0


def account_close(args, conn: Connection, out: Output) -> int:
    _confirm_closure(args, args.account)
    stub, meta = conn.gateway()
    with out.progress(f"closing {args.account}"):
        reply = stub.CloseOwnAccount(
            gateway_pb2.CloseOwnAccountRequest(confirm_account_id=args.account), metadata=meta
        )
    _print_closure(out, reply.closure)
    return 0


def account_export(args, conn: Connection, out: Output) -> int:
    if args.output and Path(args.output).exists() and not args.force:
        raise CliError(f"{args.output} exists; pass --force to overwrite it", exit_code=2)
    stub, meta = conn.gateway()
    with out.progress("exporting the account"):
        reply = stub.ExportOwnAccount(gateway_pb2.ExportOwnAccountRequest(), metadata=meta)
    return _account_export(out, args, reply.document_json)


def _confirm_closure(args, account: str) -> None:
    """A closure deletes everything the account holds: --yes, or the id typed at a terminal."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"closing {account} deletes everything it holds; pass --yes", exit_code=2)
    answer = input(
        f"Close {account}: its keys, projects, media, results and talents go, for good? "
        "Type the account id to confirm: "
    )
    if answer.strip() != account:
        raise CliError("not closed (the confirmation did not match)", exit_code=1)


def _print_closure(out: Output, closure: admin_pb2.AccountClosure) -> None:
    steps = [{"name": s.name, "count": s.count} for s in closure.steps]
    out.result(
        {
            "receipt_id": closure.receipt_id,
            "account_id": closure.account_id,
            "closed_at": closure.closed_at.ToJsonString(),
            "completed_at": closure.completed_at.ToJsonString(),
            "talents_erased": closure.talents_erased,
            "steps": steps,
        },
        [
            f"closed {closure.account_id} (receipt {closure.receipt_id})",
            *(f"  {s['name']}: {s['count']}" for s in steps),
        ],
    )


def _print_profile(out: Output, account: gateway_pb2.AccountProfile) -> None:
    out.result(
        {
            "account_id": account.account_id,
            "name": account.name,
            "email": account.email,
            "created_at": account.created_at.ToJsonString(),
        },
        [
            f"account {account.account_id}",
            f"  name:  {account.name}",
            f"  email: {account.email or '-'}",
        ],
    )


def _account_export(out: Output, args, document_json: str) -> int:
    document = json.loads(document_json)
    if not args.output:
        out.result(document, document_json)
        return 0
    _write_export(Path(args.output), document_json + "\n", force=args.force)
    counts = {k: len(v) for k, v in document.items() if isinstance(v, list)}
    out.result(
        {"account_id": document["account"]["account_id"], "written": args.output, "counts": counts},
        f"wrote {args.output}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
    )
    return 0


# -- consent ----------------------------------------------------------------------------------


def consent_record(args, conn: Connection, out: Output) -> int:
    return record_consent(
        conn,
        out,
        action=args.action,
        talent=args.talent,
        scope=args.scope,
        project=args.project,
        method=args.method,
        policy_version=args.policy_version,
        actor=args.actor,
    )


def record_consent(
    conn: Connection,
    out: Output,
    *,
    action: str,
    talent: str,
    scope: str,
    project: str | None,
    method: str,
    policy_version: str,
    actor: str,
) -> int:
    scope_value = SCOPES[scope]
    if scope_value == SCOPES["usage"] and not project:
        raise CliError("--scope usage needs --project P", exit_code=2)
    if scope_value == SCOPES["biometric"] and project:
        raise CliError("--project applies to --scope usage only", exit_code=2)
    if project and action == "grant":  # a revocation may name a project that is gone
        require_project(conn, project)
    decision = (
        consent_pb2.CONSENT_DECISION_GRANTED
        if action == "grant"
        else consent_pb2.CONSENT_DECISION_REVOKED
    )
    stub, meta = conn.gateway()
    reply = stub.RecordConsent(
        gateway_pb2.RecordConsentRequest(
            talent_id=talent,
            scope=scope_value,
            project_id=project or "",
            decision=decision,
            evidence=consent_pb2.Evidence(
                method=method,
                policy_version=policy_version,
                actor=actor,
                captured_at=to_timestamp(utcnow()),
            ),
            request_id=uuid.uuid4().hex,
        ),
        metadata=meta,
    )
    record = _record_json(reply.record)
    what = f"face usage ({project})" if project else "biometric processing"
    out.result(record, f"{action}ed {what} consent for {talent} (record {record['record_id']})")
    return 0


def _record_json(record: consent_pb2.ConsentRecord) -> dict:
    return {
        "record_id": record.record_id,
        "talent_id": record.talent_id,
        "scope": enum_name(consent_pb2.ConsentScope, record.scope, "CONSENT_SCOPE_"),
        "project_id": record.project_id or None,
        "decision": enum_name(consent_pb2.ConsentDecision, record.decision, "CONSENT_DECISION_"),
        "method": record.evidence.method,
        "policy_version": record.evidence.policy_version,
        "actor": record.evidence.actor,
        "captured_at": record.evidence.captured_at.ToJsonString(),
        "recorded_at": record.recorded_at.ToJsonString(),
    }


def consent_show(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListConsents(
            gateway_pb2.ListConsentsRequest(
                talent_id=args.talent, page_size=MAX_BATCH, page_token=token
            ),
            metadata=meta,
        )
    )
    records = [_record_json(r) for page in pages for r in page.records]
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
    return enroll_images(conn, out, talent=args.talent, images=args.images)


def enroll_images(conn: Connection, out: Output, *, talent: str, images: list[str]) -> int:
    stub, meta = conn.gateway()
    enrolled = []
    for image in images:
        data = _read(image)
        with out.progress(f"enrolling {Path(image).name}", len(data), **BYTES) as progress:
            header = gateway_pb2.EnrollTalentRequest(
                header=gateway_pb2.EnrollHeader(talent_id=talent, request_id=uuid.uuid4().hex)
            )
            reply = stub.EnrollTalent(upload_chunks(header, data, progress), metadata=meta)
        enrolled.append({"image": image, "face_id": reply.face.face_id})
    out.result(
        {"talent_id": talent, "faces": enrolled},
        [f"enrolled {e['image']} as face {e['face_id']}" for e in enrolled],
    )
    return 0


def match(args, conn: Connection, out: Output) -> int:
    if Path(args.file).is_dir():
        if args.annotate or args.no_wait:
            raise CliError("--annotate and --no-wait are for one file, not a folder", 2)
        return folder.match_folder(
            conn,
            out,
            folder=Path(args.file),
            project=args.project,
            concurrency=args.jobs,
            results=Path(args.results) if args.results else None,
            csv_path=Path(args.csv) if args.csv else None,
            resumable_above=args.resumable_above,
        )
    if args.results or args.csv:
        raise CliError("--results and --csv are for a folder (mixip match DIR)", 2)
    return match_file(
        conn,
        out,
        file=args.file,
        project=args.project,
        annotate=args.annotate,
        resumable_above=args.resumable_above,
        no_wait=args.no_wait,
    )


def match_file(
    conn: Connection,
    out: Output,
    *,
    file: str,
    project: str,
    annotate: str | None = None,
    resumable_above: int = RESUMABLE_ABOVE,
    no_wait: bool = False,
) -> int:
    """Uploads the file and prints its results once its job is done (docs/jobs.md), waited
    for with a progress bar unless `no_wait`. Above `resumable_above` bytes through a
    resumable session (a rerun resumes it)."""
    path = Path(file)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}") from None
    require_project(conn, project)  # the gateway would create an unknown id: a typo's project
    stub, meta = conn.gateway()
    if size > resumable_above:
        with out.progress(f"uploading {path.name}", size, **BYTES) as progress:
            sent = resumable.upload(stub, meta, conn.address(), path, project, progress.set)
        started = sent.media
        upload = {"bytes": sent.bytes, "resumed_from": sent.resumed_from}
    else:
        data = _read(file)
        with out.progress(f"uploading {path.name}", len(data), **BYTES) as progress:
            started = start_job(stub, meta, path, data, project, uuid.uuid4().hex, progress)
        upload = {"bytes": len(data), "resumed_from": 0}
    if no_wait:
        out.result(
            {"job_id": started.job_id, "media_id": started.media_id, "upload": upload},
            [
                f"job {started.job_id} (media {started.media_id})",
                f"  mixip jobs wait {started.job_id}",
            ],
        )
        return 0
    jobs.ended_ok(jobs.wait(conn, out, started.job_id))
    reply = stub.GetMediaResults(
        gateway_pb2.GetMediaResultsRequest(media_id=started.media_id), metadata=meta
    ).media
    document, lines = _media_result(reply)
    document["job_id"] = started.job_id
    document["upload"] = upload
    if upload["resumed_from"]:
        lines.insert(0, f"resumed the upload at byte {upload['resumed_from']} of {size}")
    if annotate:
        video = reply.kind == common_pb2.MEDIA_KIND_VIDEO
        data = b"" if video else _read(file)  # a video's contact sheet reads the file itself
        _annotate(Path(annotate), Path(file), data, document["faces"], video)
        lines.append(f"annotated image: {annotate}")
        document["annotated"] = annotate
    out.result(document, lines)
    return 0


def media_show(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.GetMediaResults(
        gateway_pb2.GetMediaResultsRequest(media_id=args.media_id), metadata=meta
    )
    document, lines = _media_result(reply.media)
    document["filename"] = reply.filename
    document["decisions"] = [decision_json(d) for d in reply.decisions]
    latest = {d["face_index"]: d for d in document["decisions"]}  # oldest first: last wins
    lines += [
        f"  [{i}] decided: {d['decision']} by {d['decided_by_name'] or d['decided_by_account_id']}"
        f" at {d['decided_at']}" + (f": {d['note']}" if d["note"] else "")
        for i, d in sorted(latest.items())
    ]
    out.result(document, lines)
    return 0


def decision_json(record: gateway_pb2.ReviewDecisionRecord) -> dict[str, Any]:
    return {
        "decision_id": record.decision_id,
        "media_id": record.media_id,
        "face_index": record.face_index,
        "decision": enum_name(common_pb2.ReviewDecision, record.decision, "REVIEW_DECISION_"),
        "note": record.note,
        "decided_by_account_id": record.decided_by_account_id,
        "decided_by_key_id": record.decided_by_key_id,
        "decided_by_name": record.decided_by_name,
        "decided_at": record.decided_at.ToJsonString(),
    }


def _media_result(reply: gateway_pb2.UploadMediaResponse) -> tuple[dict[str, Any], list[str]]:
    """A media's stored or fresh results: the JSON document and the text lines."""
    video = reply.kind == common_pb2.MEDIA_KIND_VIDEO
    faces = [face_json(f, video) for f in reply.faces]
    document: dict[str, Any] = {"media_id": reply.media_id, "faces": faces}
    lines = [f"media {reply.media_id}: {len(faces)} face(s)"]
    for i, face in enumerate(faces):
        where = " at " + ", ".join(f"{a:.1f}-{b:.1f}s" for a, b in face["ranges"]) if video else ""
        lines.append(
            f"  [{i}] {face['label'].upper():8} {face['talent_id'] or '-':24} "
            f"similarity {face['similarity']:.3f} ({face['reason']}){where}"
        )
    if faces:
        lines.append(ADVISORY)
    return document, lines


def _annotate(target: Path, source: Path, data: bytes, faces: list[dict], video: bool) -> None:
    from mixip.cli.annotate import annotate_image, contact_sheet  # OpenCV: only when drawing

    try:
        if not video:
            annotate_image(data, faces, target)
            return
        contact_sheet(source, faces, target)  # the user's own file: no copy of it is made
    except ValueError as exc:
        raise CliError(str(exc)) from None


# -- data-subject rights -----------------------------------------------------------------------


def export(args, conn: Connection, out: Output) -> int:
    return export_talent(conn, out, talent=args.talent, output=args.output, force=args.force)


def export_talent(
    conn: Connection, out: Output, *, talent: str, output: str | None = None, force: bool = False
) -> int:
    if output and Path(output).exists() and not force:
        raise CliError(f"{output} exists; pass --force to overwrite it", exit_code=2)
    stub, meta = conn.gateway()
    with out.progress(f"exporting {talent}"):
        reply = stub.ExportTalentData(
            gateway_pb2.ExportTalentDataRequest(talent_id=talent), metadata=meta
        )
    document = json.loads(reply.document_json)
    if output:
        _write_export(Path(output), reply.document_json + "\n", force=force)
        counts = {k: len(v) for k, v in document.items() if isinstance(v, list)}
        out.result(
            {"talent_id": talent, "written": output, "counts": counts},
            f"wrote {output}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
        )
    else:
        out.result(document, reply.document_json)
    return 0


def _write_export(path: Path, text: str, *, force: bool) -> None:
    """The export holds personal data: written 0600, never over an existing file unless
    --force (checked before the export is requested, and again atomically on creation)."""
    try:
        write_private(path, text, exclusive=not force)
    except FileExistsError:
        raise CliError(f"{path} exists; pass --force to overwrite it", exit_code=2) from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}", exit_code=2) from None


def erase(args, conn: Connection, out: Output) -> int:
    if not args.yes and sys.stdin.isatty():
        answer = input(
            f"Erase {args.talent}: face vectors, consent ledger and audit links, for good? "
            "Type the talent id to confirm: "
        )
        if answer.strip() != args.talent:
            raise CliError("not erased (the confirmation did not match)", exit_code=1)
    return erase_talent(conn, out, talent=args.talent)


def erase_talent(conn: Connection, out: Output, *, talent: str) -> int:
    stub, meta = conn.gateway()
    reply = stub.EraseTalent(
        gateway_pb2.EraseTalentRequest(talent_id=talent, request_id=uuid.uuid4().hex),
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
    return list_audit_events(conn, out, talent=args.talent, project=args.project, since=args.since)


def list_audit_events(
    conn: Connection,
    out: Output,
    *,
    talent: str | None = None,
    project: str | None = None,
    since: str | None = None,
) -> int:
    since_time = time_option(since, "--since")
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListAuditEvents(
            gateway_pb2.ListAuditEventsRequest(
                talent_id=talent or "",
                project_id=project or "",
                since=since_time,
                page_size=MAX_BATCH,
                page_token=token,
            ),
            metadata=meta,
        )
    )
    events = [e for page in pages for e in page.events]
    documents = [
        {
            "sequence": e.sequence,
            "occurred_at": e.occurred_at.ToJsonString(),
            "project_id": e.project_id,
            "media_id": e.media_id,
            "face_index": e.face_index,
            "label": enum_name(common_pb2.FaceLabel, e.label, "FACE_LABEL_"),
            "reason": enum_name(common_pb2.LabelReason, e.reason, "LABEL_REASON_"),
            "similarity": round(e.similarity, 4),
            "talent_linked": e.talent_linked,
            "actor": e.actor,
            "leaf": b64encode(e.leaf),
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
    if args.key and not args.checkpoint:
        raise CliError("--key checks checkpoints: it needs --checkpoint FILE", exit_code=2)
    if args.checkpoint:
        keys = _kept_keys(args.key) if args.key else None
        return verify_against_checkpoint(conn, out, _read(args.checkpoint), keys)
    return verify_audit_log(conn, out)


def _kept_keys(path: str) -> KeptKeys:
    """The verifier keys an auditor keeps in `path`, one per line (as `audit public-key` prints
    them; several across a rotation of the log's key)."""
    try:
        lines = _read(path).decode().split()
        keys = [Ed25519Verifier.from_vkey(line) for line in lines]
    except (UnicodeDecodeError, NoteError) as exc:
        raise CliError(f"{path} is not a file of verifier keys: {exc}", exit_code=2) from None
    if not keys:
        raise CliError(f"{path} holds no verifier key", exit_code=2)
    return KeptKeys(f"the keys kept in {path}", keys)


def verify_audit_log(conn: Connection, out: Output) -> int:
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


def _signed_checkpoint(conn: Connection) -> str:
    stub, meta = conn.gateway()
    return stub.GetAuditCheckpoint(
        gateway_pb2.GetAuditCheckpointRequest(), metadata=meta
    ).checkpoint


def _log_verifier(conn: Connection) -> Ed25519Verifier:
    stub, meta = conn.gateway()
    reply = stub.GetAuditLogPublicKey(gateway_pb2.GetAuditLogPublicKeyRequest(), metadata=meta)
    return Ed25519Verifier.from_vkey(reply.verifier_key)


@dataclass(frozen=True)
class KeptKeys:
    """The keys a verification trusts, and what to call them in a verdict."""

    called: str
    verifiers: list[Ed25519Verifier]

    def open(self, note: str | bytes) -> Checkpoint:
        """The checkpoint in `note` if one of the keys signed it; the last key's NoteError if
        none did."""
        *others, last = self.verifiers
        for verifier in others:
            try:
                return open_checkpoint(note, verifier).checkpoint
            except NoteError:
                continue
        return open_checkpoint(note, last).checkpoint


def _b64(hashes: Iterable[bytes]) -> list[str]:
    return [b64encode(h) for h in hashes]


def audit_checkpoint(args, conn: Connection, out: Output) -> int:
    note = _signed_checkpoint(conn)
    checkpoint = open_checkpoint(note, _log_verifier(conn)).checkpoint
    document = {
        "checkpoint": note,
        "tree_size": checkpoint.size,
        "root_hash": b64encode(checkpoint.root),
    }
    if args.output:
        write_private(Path(args.output), note)
        out.result(document, f"checkpoint of {checkpoint.size} events written to {args.output}")
    else:
        out.result(document, note.rstrip("\n"))
    return 0


def audit_public_key(args, conn: Connection, out: Output) -> int:
    vkey = _log_verifier(conn).vkey
    out.result({"verifier_key": vkey}, vkey)
    return 0


def audit_prove(args, conn: Connection, out: Output) -> int:
    if args.event < 1:
        raise CliError("EVENT_ID must be an event's sequence number (1 or more)")
    if args.output and not args.receipt:
        raise CliError("-o writes a receipt: it needs --receipt", exit_code=2)
    note = _signed_checkpoint(conn)
    verifier = _log_verifier(conn)
    size = open_checkpoint(note, verifier).checkpoint.size
    stub, meta = conn.gateway()
    proof = stub.GetAuditInclusionProof(
        gateway_pb2.GetAuditInclusionProofRequest(sequence=args.event, tree_size=size),
        metadata=meta,
    )
    if args.receipt:
        return _write_receipt(args, out, note, verifier, proof)
    hashes = _b64(proof.hashes)
    document = {
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "proof": hashes,
        "leaf": b64encode(proof.leaf) if proof.leaf else None,
    }
    out.result(
        document,
        [f"event #{args.event} is leaf {proof.leaf_index} of {proof.tree_size}"]
        + [f"  {h}" for h in hashes],
    )
    return 0


def _write_receipt(
    args,
    out: Output,
    note: str,
    verifier: Ed25519Verifier,
    proof: gateway_pb2.GetAuditInclusionProofResponse,
) -> int:
    """The event's C2SP tlog-proof file: the published checkpoint (with its witnesses'
    cosignatures), the proof, and the event's leaf bytes as its extra data, checked here before
    it is handed out."""
    if not proof.leaf:
        raise CliError(
            f"event #{args.event} was purged: its leaf is still in the tree, but its bytes are "
            "gone, so no receipt can carry them"
        )
    text = Receipt(proof.leaf_index, tuple(proof.hashes), note, extra=proof.leaf).text
    try:
        verify_receipt(text, None, verifier)
    except ReceiptError as exc:
        raise CliError(
            f"the log's receipt for event #{args.event} does not verify: {exc}"
        ) from None
    document = {
        "sequence": args.event,
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "receipt": text,
    }
    if args.output:
        write_private(Path(args.output), text)
        out.result(
            document,
            f"receipt of event #{args.event} (leaf {proof.leaf_index} of {proof.tree_size}) "
            f"written to {args.output}",
        )
    else:
        out.result(document, text.rstrip("\n"))
    return 0


def audit_verify_receipt(args, conn: Connection, out: Output) -> int:
    """Checks a receipt offline, with the keys the auditor keeps: the log's (one a line in
    --key, several across a rotation) and the witnesses' (--witnesses, at least --quorum)."""
    keys = _kept_keys(args.key)
    witnesses = _witness_keys(args.witnesses) if args.witnesses else []
    quorum = args.quorum if args.quorum is not None else min(1, len(witnesses))
    if not 0 <= quorum <= len(witnesses):
        raise CliError(
            f"--quorum must be between 0 and the {len(witnesses)} witness key(s) given",
            exit_code=2,
        )
    leaf = None
    if args.leaf is not None:
        try:
            leaf = b64decode(args.leaf, "--leaf")
        except NoteError as exc:
            raise CliError(
                f"{exc} (give the event's leaf as `audit list --json` prints it)", exit_code=2
            ) from None
    try:
        text = _read(args.file).decode()
    except UnicodeDecodeError:
        text = ""  # refused below as not a proof file
    verified, failure = None, None
    for verifier in keys.verifiers:  # across a rotation: whichever kept key signed it
        try:
            verified = verify_receipt(text, leaf, verifier, witnesses, quorum)
            break
        except ReceiptError as exc:
            if failure is None or exc.part != "signature":
                failure = exc
    if verified is None:
        assert failure is not None
        out.result(
            {"ok": False, "broken": failure.part, "detail": str(failure)},
            f"receipt does NOT verify ({failure.part}): {failure}",
        )
        return 3
    checkpoint = verified.checkpoint
    try:
        event = json.loads(verified.leaf)
    except ValueError:
        event = None
    document = {
        "ok": True,
        "origin": checkpoint.origin,
        "tree_size": checkpoint.size,
        "leaf_index": verified.index,
        "leaf": b64encode(verified.leaf),
        "witnesses": list(verified.signed.witnesses),
        "event": event,
    }
    what = (
        f"event #{event['sequence']}"
        if isinstance(event, dict) and "sequence" in event
        else "the leaf"
    )
    cosigned = (
        f", cosigned by {', '.join(verified.signed.witnesses)}" if verified.signed.witnesses else ""
    )
    out.result(
        document,
        f"receipt verifies: {what} is leaf {verified.index} of the tree of {checkpoint.size} "
        f"events signed by {checkpoint.origin}{cosigned}",
    )
    return 0


def _witness_keys(path: str) -> list[CosignatureVerifier]:
    """The witnesses' verifier keys in `path`, one a line (as `mixip witness public-key`
    prints them)."""
    try:
        keys = [CosignatureVerifier.from_vkey(line) for line in _read(path).decode().split()]
    except (UnicodeDecodeError, NoteError) as exc:
        raise CliError(f"{path} is not a file of witness keys: {exc}", exit_code=2) from None
    if not keys:
        raise CliError(f"{path} holds no witness key", exit_code=2)
    return keys


def audit_consistency(args, conn: Connection, out: Output) -> int:
    if args.start.isdigit():
        start = int(args.start)
    else:
        try:
            start = Checkpoint.parse(_note_text(_read(args.start).decode())).size
        except (NoteError, UnicodeDecodeError):
            raise CliError(f"{args.start} is neither a tree size nor a checkpoint") from None
    size = open_checkpoint(_signed_checkpoint(conn), _log_verifier(conn)).checkpoint.size
    if start > size:
        raise CliError(f"the log's tree has {size} events, fewer than {start}")
    stub, meta = conn.gateway()
    proof = stub.GetAuditConsistencyProof(
        gateway_pb2.GetAuditConsistencyProofRequest(from_size=start, to_size=size),
        metadata=meta,
    )
    hashes = _b64(proof.hashes)
    document = {"from_size": start, "to_size": size, "proof": hashes}
    out.result(document, [f"tree of {size} events extends {start}"] + [f"  {h}" for h in hashes])
    return 0


def _note_text(note: str) -> str:
    """The text of a signed note (before the blank line and its signatures)."""
    return note.split("\n\n", 1)[0] + "\n"


# What the log answers when it cannot sign its tree or prove it (a fork, a missing node).
_UNPROVABLE = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)


def verify_against_checkpoint(
    conn: Connection, out: Output, kept_note: str | bytes, keys: KeptKeys | None = None
) -> int:
    """Whether the log still extends a checkpoint kept from before: its signature, the current
    tree's consistency with it, and every event's inclusion (docs/audit-log.md). The
    checkpoints are checked with `keys` (the auditor's own), else with the key the log serves."""
    if keys is None:
        keys = KeptKeys("the log's key", [_log_verifier(conn)])
    try:
        broken = _what_broke(conn, kept_note, keys)
    except grpc.RpcError as exc:
        if exc.code() not in _UNPROVABLE:
            raise
        broken = ("tree", f"the log cannot prove it: {exc.details()}")
    if broken is None:
        out.result({"ok": True}, "audit log extends the kept checkpoint; every event is in it")
        return 0
    what, detail = broken
    out.result(
        {"ok": False, "broken": what, "detail": detail}, f"audit log does NOT verify: {detail}"
    )
    return 3


def _what_broke(conn: Connection, kept_note: str | bytes, keys: KeptKeys) -> tuple[str, str] | None:
    try:
        kept = keys.open(kept_note)
    except NoteError as exc:
        return "signature", f"the kept checkpoint does not verify with {keys.called}: {exc}"
    stub, meta = conn.gateway()
    chain = stub.VerifyAuditLog(gateway_pb2.VerifyAuditLogRequest(), metadata=meta)
    if not chain.ok:
        return "chain", f"the hash chain is broken: {chain.detail}"
    events = [
        e
        for page in every_page(
            lambda token: stub.ListAuditEvents(
                gateway_pb2.ListAuditEventsRequest(page_size=MAX_BATCH, page_token=token),
                metadata=meta,
            )
        )
        for e in page.events
    ]
    try:
        current = keys.open(_signed_checkpoint(conn))
    except NoteError as exc:
        return (
            "signature",
            f"the log's current checkpoint does not verify with {keys.called}: {exc}",
        )
    if current.size < kept.size:
        return "consistency", (
            f"the log shrank: its tree has {current.size} events, the kept checkpoint {kept.size}"
        )
    proof = stub.GetAuditConsistencyProof(
        gateway_pb2.GetAuditConsistencyProofRequest(from_size=kept.size, to_size=current.size),
        metadata=meta,
    )
    try:
        verify_consistency(kept.size, current.size, kept.root, current.root, proof.hashes)
    except ProofError as exc:
        return "consistency", f"the log's tree does not extend the kept checkpoint: {exc}"
    for event in events:
        included = stub.GetAuditInclusionProof(
            gateway_pb2.GetAuditInclusionProofRequest(
                sequence=event.sequence, tree_size=current.size
            ),
            metadata=meta,
        )
        try:
            verify_inclusion(
                leaf_hash(event.leaf),
                included.leaf_index,
                current.size,
                included.hashes,
                current.root,
            )
        except ProofError:
            return "inclusion", f"event #{event.sequence} is not in the log's signed tree"
    return None


def audit_vault_status(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    reply = stub.GetVaultStatus(admin_pb2.GetVaultStatusRequest(), metadata=meta)
    document = {"key_version": reply.key_version, "rotated_at": reply.rotated_at.ToJsonString()}
    out.result(
        document,
        f"audit vault: key version {reply.key_version}, made {document['rotated_at']}",
    )
    return 0


# -- retention --------------------------------------------------------------------------------


def _job_name(job: int) -> str:
    """The job as `--job` names it (rotate-vault, not rotate_vault)."""
    return enum_name(retention_pb2.RetentionJob, job, "RETENTION_JOB_").replace("_", "-")


def _report_json(report: retention_pb2.RunReport) -> dict:
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


def time_option(value: str | None, option: str) -> Timestamp | None:
    """--since, --as-of: an ISO 8601 time (UTC unless it says otherwise); a bad one exits 2."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"{option} {value!r} is not an ISO 8601 time", exit_code=2) from None
    return to_timestamp(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


def retention_run(args, conn: Connection, out: Output) -> int:
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


def retention_status(args, conn: Connection, out: Output) -> int:
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


def add_commands(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse._SubParsersAction:
    """Registers the gateway commands on the `mixip` parser; returns `mixip media`'s subcommands
    (mixip/cli/review.py adds to them)."""
    accounts = sub.add_parser("accounts", help="manage accounts (admin)").add_subparsers(
        dest="action", required=True
    )
    create = accounts.add_parser("create", parents=[common], help="create an account and key")
    create.add_argument("name", help="the account's display name")
    create.set_defaults(run=accounts_create)
    listed = accounts.add_parser("list", parents=[common], help="list every account")
    listed.set_defaults(run=accounts_list)
    keep = accounts.add_parser(
        "retention", parents=[common], help="how long an account's media and results are kept"
    )
    keep.add_argument("account", help="the account id")
    keep.add_argument("--days", type=int, required=True, help="1-3650 (default period: 365)")
    keep.set_defaults(run=accounts_retention)
    shown = accounts.add_parser("show", parents=[common], help="one account's profile")
    shown.add_argument("account", help="the account id")
    shown.set_defaults(run=accounts_show)
    close = accounts.add_parser(
        "close", parents=[common], help="close an account: everything it holds is deleted"
    )
    close.add_argument("account", help="the account id")
    close.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    close.set_defaults(run=accounts_close)
    exported = accounts.add_parser(
        "export", parents=[common], help="an account's own data as JSON (written 0600)"
    )
    exported.add_argument("account", help="the account id")
    exported.add_argument("-o", "--output", help="write to this file (default: stdout)")
    exported.add_argument("--force", action="store_true", help="overwrite the file")
    exported.set_defaults(run=accounts_export)

    own = sub.add_parser(
        "account", help="the calling account's own profile and data"
    ).add_subparsers(dest="action", required=True)
    shown = own.add_parser("show", parents=[common], help="its name and contact email")
    shown.set_defaults(run=account_show)
    update = own.add_parser("update", parents=[common], help="correct its name or email")
    update.add_argument("--name", help="the display name (1-128 characters)")
    update.add_argument("--email", help='the contact email ("" removes it)')
    update.set_defaults(run=account_update)
    close = own.add_parser("close", parents=[common], help="close it: everything it holds goes")
    close.add_argument("account", help="its own id, as a confirmation")
    close.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    close.set_defaults(run=account_close)
    exported = own.add_parser("export", parents=[common], help="its own data as JSON (0600)")
    exported.add_argument("-o", "--output", help="write to this file (default: stdout)")
    exported.add_argument("--force", action="store_true", help="overwrite the file")
    exported.set_defaults(run=account_export)

    consent = sub.add_parser("consent", help="record or show consent").add_subparsers(
        dest="action", required=True
    )
    for action in ("grant", "revoke"):
        p = consent.add_parser(action, parents=[common], help=f"{action} a consent")
        p.add_argument("talent", help="the talent id")
        p.add_argument(
            "--scope",
            choices=sorted(SCOPES),
            required=True,
            help="biometric (processing at all) or usage (face usage in one --project)",
        )
        p.add_argument("--project", help="the project (for --scope usage)")
        p.add_argument("--method", default="cli", help="how consent was captured")
        p.add_argument("--policy-version", default="1", help="version of the consent text")
        p.add_argument("--actor", default="mixip-cli", help="who captured it")
        p.set_defaults(run=consent_record)
    show = consent.add_parser("show", parents=[common], help="current consent and history")
    show.add_argument("talent", help="the talent id")
    show.set_defaults(run=consent_show)

    p = sub.add_parser("enroll", parents=[common], help="enroll a talent's face image(s)")
    p.add_argument("talent", help="the talent id (needs active biometric consent)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="photos with exactly one face each")
    p.set_defaults(run=enroll)

    p = sub.add_parser(
        "match", parents=[common], help="match an image or video, or a folder of them"
    )
    p.add_argument(
        "file",
        metavar="PATH",
        help="a photo or video, or a folder: every photo and video under it (docs/jobs.md)",
    )
    p.add_argument("--project", required=True, help="the project the media belongs to")
    p.add_argument("--annotate", metavar="OUT.png", help="write an annotated image")
    p.add_argument(
        "--resumable-above",
        type=int,
        default=RESUMABLE_ABOVE,
        metavar="N",
        help="send larger files through a resumable upload session (default 8 MiB; 0: always); "
        "rerunning an interrupted command resumes it",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="print the job's id once the file is stored (`mixip jobs wait JOB_ID`); a file "
        "sent through a session is analysed before the command returns",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=folder.DEFAULT_JOBS,
        metavar="N",
        help=f"a folder: files matched at once (1-{folder.MAX_JOBS}, default "
        f"{folder.DEFAULT_JOBS})",
    )
    p.add_argument(
        "--results",
        metavar="FILE",
        help="a folder: the results file (JSON lines; default under $XDG_STATE_HOME/mixip/"
        "folders/, printed); a rerun skips the files it holds",
    )
    p.add_argument("--csv", metavar="FILE", help="a folder: the results as CSV too")
    p.set_defaults(run=match)

    media = sub.add_parser("media", help="stored media and their results").add_subparsers(
        dest="action", required=True
    )
    p = media.add_parser("show", parents=[common], help="the stored results of an upload")
    p.add_argument("media_id", metavar="MEDIA_ID", help="the id `mixip match` printed")
    p.set_defaults(run=media_show)

    p = sub.add_parser("export", parents=[common], help="export a talent's data (JSON)")
    p.add_argument("talent", help="the talent id")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (mode 0600)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.set_defaults(run=export)

    p = sub.add_parser("erase", parents=[common], help="erase a talent")
    p.add_argument("talent", help="the talent to erase")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation on a terminal")
    p.set_defaults(run=erase)

    audit = sub.add_parser("audit", help="read or verify the audit log").add_subparsers(
        dest="action", required=True
    )
    p = audit.add_parser("list", parents=[common], help="list audit events")
    p.add_argument("--talent", help="only events linked to this talent (while linkable)")
    p.add_argument("--project", help="only events of this project")
    p.add_argument("--since", metavar="ISO8601", help="only events at or after this time")
    p.set_defaults(run=audit_list)
    p = audit.add_parser("verify", parents=[common], help="verify the hash chain")
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="also check that the log extends this kept checkpoint and holds every event",
    )
    p.add_argument(
        "--key",
        metavar="FILE",
        help="check the checkpoints with the verifier keys kept in FILE (one a line), not with "
        "the key the log serves",
    )
    p.set_defaults(run=audit_verify)
    p = audit.add_parser(
        "checkpoint", parents=[common], help="the log's signed checkpoint (keep it)"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE (mode 0600)")
    p.set_defaults(run=audit_checkpoint)
    p = audit.add_parser(
        "public-key", parents=[common], help="the key that verifies the log's checkpoints"
    )
    p.set_defaults(run=audit_public_key)
    p = audit.add_parser("prove", parents=[common], help="an event's inclusion proof")
    p.add_argument("event", type=int, metavar="EVENT_ID", help="the event's sequence number")
    p.add_argument(
        "--receipt",
        action="store_true",
        help="the proof as one offline file (C2SP tlog-proof: the published checkpoint, the "
        "proof, the event's leaf) that verifies with the log's public key alone",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the receipt to FILE (mode 0600)")
    p.set_defaults(run=audit_prove)
    p = audit.add_parser(
        "verify-receipt",
        parents=[common],
        help="check a receipt offline, with the log's public key alone",
    )
    p.add_argument("file", metavar="FILE", help="a receipt (`audit prove --receipt -o FILE`)")
    p.add_argument(
        "--key",
        metavar="FILE",
        required=True,
        help="the log's verifier keys kept in FILE, one a line (`audit public-key`)",
    )
    p.add_argument(
        "--leaf",
        metavar="BASE64",
        help="the event's leaf as `audit list --json` prints it (default: the leaf the receipt "
        "carries, which the proof then authenticates)",
    )
    p.add_argument(
        "--witnesses",
        metavar="FILE",
        help="witnesses' verifier keys kept in FILE, one a line (`mixip witness public-key`)",
    )
    p.add_argument(
        "--quorum",
        type=int,
        metavar="N",
        help="cosignatures of those witnesses required (default 1 with --witnesses)",
    )
    p.set_defaults(run=audit_verify_receipt)
    p = audit.add_parser(
        "consistency", parents=[common], help="the proof the log extends an older tree"
    )
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="FILE_OR_SIZE",
        help="a kept checkpoint file, or a tree size",
    )
    p.set_defaults(run=audit_consistency)
    p = audit.add_parser(
        "vault-status", parents=[common], help="the salt vault's key version (admin)"
    )
    p.set_defaults(run=audit_vault_status)

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
    return media


# -- faces (correction) and API keys: added for issue 9 ---------------------------------------


def _face_record_json(face) -> dict:
    return {
        "face_id": face.face_id,
        "talent_id": face.talent_id,
        "box": [face.box.x, face.box.y, face.box.width, face.box.height],
        "detection_score": round(face.detection_score, 4),
        "engine": face.engine,
        "model": face.model,
        "created_at": face.created_at.ToJsonString(),
    }


def faces_list(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListTalentFaces(
            gateway_pb2.ListTalentFacesRequest(
                talent_id=args.talent, page_size=MAX_BATCH, page_token=token
            ),
            metadata=meta,
        )
    )
    faces = [_face_record_json(f) for page in pages for f in page.faces]
    lines = [f"{args.talent}: {len(faces)} enrolled face(s)"] + [
        f"  {f['face_id']}  enrolled {f['created_at']}  box {f['box']}  ({f['engine']})"
        for f in faces
    ]
    out.result({"talent_id": args.talent, "faces": faces}, lines)
    return 0


def faces_delete(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.DeleteTalentFace(
        gateway_pb2.DeleteTalentFaceRequest(talent_id=args.talent, face_id=args.face_id),
        metadata=meta,
    )
    out.result(
        {"talent_id": args.talent, "deleted": _face_record_json(reply.face)},
        f"deleted face {reply.face.face_id} of {args.talent} (it no longer matches)",
    )
    return 0


def _key_json(key: admin_pb2.ApiKey) -> dict:
    return {
        "api_key_id": key.api_key_id,
        "account_id": key.account_id,
        "prefix": key.prefix,
        "created_at": key.created_at.ToJsonString(),
        "revoked_at": key.revoked_at.ToJsonString() if key.HasField("revoked_at") else None,
    }


def keys_list(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    pages = every_page(
        lambda token: stub.ListApiKeys(
            admin_pb2.ListApiKeysRequest(
                account_id=args.account, page_size=MAX_BATCH, page_token=token
            ),
            metadata=meta,
        )
    )
    keys = [_key_json(k) for page in pages for k in page.api_keys]
    lines = [f"{args.account}: {len(keys)} key(s)"] + [
        f"  {k['api_key_id']}  {k['prefix']}...  created {k['created_at']}  "
        + (f"revoked {k['revoked_at']}" if k["revoked_at"] else "live")
        for k in keys
    ]
    out.result({"account_id": args.account, "api_keys": keys}, lines)
    return 0


def keys_create(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    reply = stub.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=args.account), metadata=meta)
    out.result(
        {"account_id": args.account, "api_key_id": reply.api_key_id, "api_key": reply.api_key},
        [f"key {reply.api_key_id} for {args.account}", f"api key (shown once): {reply.api_key}"],
    )
    return 0


def keys_revoke(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.admin()
    reply = stub.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(api_key_id=args.key_id), metadata=meta)
    key = _key_json(reply.api_key)
    out.result(key, f"revoked key {key['api_key_id']} (at {key['revoked_at']})")
    return 0


def add_rights_and_key_commands(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """`mixip faces list|delete` and `mixip keys list|create|revoke`."""
    faces = sub.add_parser("faces", help="a talent's enrolled faces").add_subparsers(
        dest="action", required=True
    )
    p = faces.add_parser("list", parents=[common], help="list a talent's enrolled faces")
    p.add_argument("talent", help="the talent id")
    p.set_defaults(run=faces_list)
    p = faces.add_parser("delete", parents=[common], help="delete one enrolled face")
    p.add_argument("talent", help="the talent id")
    p.add_argument("face_id", metavar="FACE_ID", help="the face, as `mixip faces list` shows it")
    p.set_defaults(run=faces_delete)

    keys = sub.add_parser("keys", help="an account's API keys (admin)").add_subparsers(
        dest="action", required=True
    )
    p = keys.add_parser("list", parents=[common], help="list keys (never their secrets)")
    p.add_argument("account", help="the account id")
    p.set_defaults(run=keys_list)
    p = keys.add_parser("create", parents=[common], help="create a key (shown once)")
    p.add_argument("account", help="the account id")
    p.set_defaults(run=keys_create)
    p = keys.add_parser("revoke", parents=[common], help="revoke a key at once")
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id, as `mixip keys list` shows it")
    p.set_defaults(run=keys_revoke)
