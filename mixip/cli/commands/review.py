"""The producer's review: `mixip review` (a decision on a face) and `mixip report` (a project's
clearance report)."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import grpc

from mixip.cli.commands.media import decision_json
from mixip.cli.commands.parsing import Subparsers
from mixip.cli.output import CliError, Output
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.errors import error_details
from mixip.runtime.files import write_private
from mixip.runtime.limits import MAX_BATCH

DECISIONS = {
    "approve": common_pb2.REVIEW_DECISION_APPROVED_FOR_RELEASE,
    "block": common_pb2.REVIEW_DECISION_BLOCKED,
    "needs-release": common_pb2.REVIEW_DECISION_NEEDS_RELEASE_FORM,
}


def review(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    return record_review(
        conn,
        out,
        media=args.media_id,
        face=args.face,
        decision=args.decision,
        note=args.note,
        force=args.force,
    )


def record_review(
    conn: Connection,
    out: Output,
    *,
    media: str,
    face: int,
    decision: str,
    note: str | None,
    force: bool = False,
) -> int:
    if face < 0:
        raise CliError("FACE is the face's number in the results (0, 1, ...)", exit_code=2)
    stub, meta = conn.gateway()
    try:
        reply = stub.RecordReviewDecision(
            gateway_pb2.RecordReviewDecisionRequest(
                media_id=media,
                face_index=face,
                decision=DECISIONS[decision],
                note=note or "",
                # a key per call, so the channel's retries cannot append the decision twice
                request_id=uuid.uuid4().hex,
                # the gateway refuses to approve a face that is not CLEARED without it
                confirm_not_cleared=force,
            ),
            metadata=meta,
        )
    except grpc.RpcError as exc:
        details = error_details(exc)
        if details.reason != "NOT_CLEARED_UNCONFIRMED":
            raise
        label = details.metadata.get("label", "not CLEARED")
        raise CliError(
            f"face {face} is {label}, not CLEARED: nothing recorded; pass --force to approve "
            "it for release anyway",
            exit_code=2,
        ) from None
    document = decision_json(reply.decision)
    out.result(
        document,
        f"media {media} face [{face}]: {document['decision']} (decision {document['decision_id']})",
    )
    return 0


def report(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    from mixip.runtime import clearance_report  # only this command needs it

    target = Path(args.output)
    if target.exists() and not args.force:
        raise CliError(f"{target} exists; pass --force to overwrite it", exit_code=2)
    stub, meta = conn.gateway()
    gathered = clearance_report.gather(
        lambda token: stub.ListClearanceReport(
            gateway_pb2.ListClearanceReportRequest(
                project_id=args.project, page_size=MAX_BATCH, page_token=token
            ),
            metadata=meta,
        )
    )

    def thumbnail(media_id: str) -> bytes | None:
        try:
            return bytes(
                stub.GetMediaPreview(
                    gateway_pb2.GetMediaPreviewRequest(
                        media_id=media_id, max_side=480, omit_legend=True
                    ),
                    metadata=meta,
                ).image
            )
        except grpc.RpcError as exc:  # its content is gone or undecodable: no picture
            if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise
            return None

    if args.format == "pdf":
        data = clearance_report.to_pdf(gathered, thumbnail)
    else:
        data = clearance_report.to_csv(gathered)
    try:  # it names talents and shows faces: written 0600 like an export
        write_private(target, data, exclusive=not args.force)
    except FileExistsError:
        raise CliError(f"{target} exists; pass --force to overwrite it", exit_code=2) from None
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror}", exit_code=2) from None
    faces = sum(len(m.faces) for m in gathered.media)
    out.result(
        {
            "project_id": args.project,
            "format": args.format,
            "written": str(target),
            "media": len(gathered.media),
            "faces": faces,
        },
        f"wrote {target}: the clearance report of {args.project} ({len(gathered.media)} media, "
        f"{faces} faces; labels are advisory)",
    )
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip review` and `mixip report`."""
    p = sub.add_parser("review", parents=[common], help="record a review decision on a face")
    p.add_argument("media_id", metavar="MEDIA_ID", help="the media")
    p.add_argument(
        "face", metavar="FACE", type=int, help="the face's number (#N on annotated pictures)"
    )
    p.add_argument("--decision", choices=list(DECISIONS), required=True, help="what you decide")
    p.add_argument("--note", help="a note for the team (never a talent's name)")
    p.add_argument(
        "--force",
        action="store_true",
        help="approve a face whose advisory label is POSSIBLE or UNKNOWN (not CLEARED)",
    )
    p.set_defaults(run=review)

    p = sub.add_parser(
        "report", parents=[common], help="write a project's clearance report (CSV or PDF)"
    )
    p.add_argument("project", metavar="PROJECT", help="the project")
    p.add_argument("--format", choices=["csv", "pdf"], default="pdf", help="csv or pdf (pdf)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write it")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.set_defaults(run=report)
