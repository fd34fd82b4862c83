"""`mixip consent grant|revoke|show`: a talent's consent and its history."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.media import enum_name
from mixip.cli.output import CliError, Output
from mixip.cli.project_ids import require_project
from mixip.consent.v1 import consent_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page
from mixip.runtime.times import to_timestamp, utcnow

SCOPES = {
    "biometric": consent_pb2.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
    "usage": consent_pb2.CONSENT_SCOPE_FACE_USAGE,
}


def consent_record(args: argparse.Namespace, conn: Connection, out: Output) -> int:
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


def _record_json(record: consent_pb2.ConsentRecord) -> dict[str, Any]:
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


def consent_show(args: argparse.Namespace, conn: Connection, out: Output) -> int:
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


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip consent grant|revoke|show`."""
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
