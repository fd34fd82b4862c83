"""The producer's review from the command line: projects and collaborators, a project's media,
review decisions, previews, and the account's access log (`mixip projects|media|review|
access-log`)."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

import grpc

from mixip.cli.commands import decision_json, time_option
from mixip.cli.connection import Connection
from mixip.cli.output import CliError, Output
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.errors import error_details
from mixip.runtime.files import write_private
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page

ROLES = {
    "reviewer": gateway_pb2.PROJECT_ROLE_REVIEWER,
    "uploader": gateway_pb2.PROJECT_ROLE_UPLOADER,
    "viewer": gateway_pb2.PROJECT_ROLE_VIEWER,
}
DECISIONS = {
    "approve": common_pb2.REVIEW_DECISION_APPROVED_FOR_RELEASE,
    "block": common_pb2.REVIEW_DECISION_BLOCKED,
    "needs-release": common_pb2.REVIEW_DECISION_NEEDS_RELEASE_FORM,
}
LABELS = {
    "cleared": common_pb2.FACE_LABEL_CLEARED,
    "possible": common_pb2.FACE_LABEL_POSSIBLE,
    "unknown": common_pb2.FACE_LABEL_UNKNOWN,
}


def _name(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower().replace("_", "-")


def role_name(role: int) -> str:
    return _name(gateway_pb2.ProjectRole, role, "PROJECT_ROLE_")


# -- projects ---------------------------------------------------------------------------------


def project_json(project: gateway_pb2.Project) -> dict[str, Any]:
    return {
        "project_id": project.project_id,
        "display_name": project.display_name,
        "owner_account_id": project.owner_account_id,
        "role": role_name(project.role),
        "pending": project.pending,
        "created_at": project.created_at.ToJsonString(),
    }


def collaborator_json(collaborator: gateway_pb2.Collaborator) -> dict[str, Any]:
    return {
        "project_id": collaborator.project_id,
        "account_id": collaborator.account_id,
        "account_name": collaborator.account_name,
        "account_email": collaborator.account_email,
        "role": role_name(collaborator.role),
        "invited_at": collaborator.invited_at.ToJsonString(),
        "invited_by_key_id": collaborator.invited_by_key_id,
        "accepted_at": collaborator.accepted_at.ToJsonString()
        if collaborator.HasField("accepted_at")
        else None,
    }


def projects_create(args, conn: Connection, out: Output) -> int:
    return create_project(conn, out, project=args.project or "", name=args.name)


def create_project(conn: Connection, out: Output, *, project: str, name: str) -> int:
    stub, meta = conn.gateway()
    reply = stub.CreateProject(
        gateway_pb2.CreateProjectRequest(project_id=project, display_name=name), metadata=meta
    )
    document = project_json(reply.project)
    out.result(document, f"project {document['project_id']} ({document['display_name']})")
    return 0


def projects_list(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListProjects(
            gateway_pb2.ListProjectsRequest(page_size=MAX_BATCH, page_token=token), metadata=meta
        )
    )
    projects = [project_json(p) for page in pages for p in page.projects]
    lines = [f"{len(projects)} project(s)"] + [
        f"  {p['project_id']}  {p['display_name']}  ({p['role']}"
        + ("" if p["role"] == "owner" else f", owned by {p['owner_account_id']}")
        + (", invitation pending: `mixip projects accept`" if p["pending"] else "")
        + ")"
        for p in projects
    ]
    out.result({"projects": projects}, lines)
    return 0


def projects_invite(args, conn: Connection, out: Output) -> int:
    return invite(conn, out, project=args.project, account=args.account, role=args.role)


def invite(conn: Connection, out: Output, *, project: str, account: str, role: str) -> int:
    stub, meta = conn.gateway()
    reply = stub.InviteCollaborator(
        gateway_pb2.InviteCollaboratorRequest(
            project_id=project, account_id=account, role=ROLES[role]
        ),
        metadata=meta,
    )
    document = collaborator_json(reply.collaborator)
    state = "pending until it accepts" if document["accepted_at"] is None else "accepted"
    out.result(document, f"{account} invited as {role} of {project} ({state})")
    return 0


def projects_accept(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.AcceptInvitation(
        gateway_pb2.AcceptInvitationRequest(project_id=args.project, owner_account_id=args.owner),
        metadata=meta,
    )
    document = project_json(reply.project)
    out.result(
        document,
        f"you are {document['role']} of {document['project_id']} (owned by {args.owner})",
    )
    return 0


def projects_remove(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    reply = stub.RemoveCollaborator(
        gateway_pb2.RemoveCollaboratorRequest(project_id=args.project, account_id=args.account),
        metadata=meta,
    )
    document = collaborator_json(reply.collaborator)
    out.result(
        {"removed": document},
        f"{args.account} ({document['role']}) no longer sees {args.project}",
    )
    return 0


def projects_collaborators(args, conn: Connection, out: Output) -> int:
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListCollaborators(
            gateway_pb2.ListCollaboratorsRequest(
                project_id=args.project, page_size=MAX_BATCH, page_token=token
            ),
            metadata=meta,
        )
    )
    collaborators = [collaborator_json(c) for page in pages for c in page.collaborators]
    lines = [f"{args.project}: {len(collaborators)} collaborator(s)"] + [
        f"  {c['account_id']}  {c['account_name']}"
        + (f" <{c['account_email']}>" if c["account_email"] else "")
        + f"  {c['role']}  invited {c['invited_at']}"
        for c in collaborators
    ]
    out.result({"project_id": args.project, "collaborators": collaborators}, lines)
    return 0


# -- media and review -------------------------------------------------------------------------


def media_list(args, conn: Connection, out: Output) -> int:
    return list_media(conn, out, project=args.project, undecided=args.undecided, label=args.label)


def list_media(
    conn: Connection,
    out: Output,
    *,
    project: str,
    undecided: bool = False,
    label: str | None = None,
) -> int:
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListMedia(
            gateway_pb2.ListMediaRequest(
                project_id=project,
                label=LABELS[label] if label else common_pb2.FACE_LABEL_UNSPECIFIED,
                undecided=undecided,
                page_size=MAX_BATCH,
                page_token=token,
            ),
            metadata=meta,
        )
    )
    media = [
        {
            "media_id": m.media_id,
            "filename": m.filename,
            "kind": _name(common_pb2.MediaKind, m.kind, "MEDIA_KIND_"),
            "created_at": m.created_at.ToJsonString(),
            "faces": m.face_count,
            "cleared": m.cleared_faces,
            "possible": m.possible_faces,
            "unknown": m.unknown_faces,
            "undecided": m.undecided_faces,
            "uploaded_by_account_id": m.uploaded_by_account_id,
        }
        for page in pages
        for m in page.media
    ]
    lines = [f"{project}: {len(media)} media"] + [
        f"  {m['media_id']}  {m['filename'] or '-'}  {m['faces']} face(s): "
        f"{m['cleared']} cleared, {m['possible']} possible, {m['unknown']} unknown; "
        f"{m['undecided']} undecided"
        for m in media
    ]
    out.result({"project_id": project, "media": media}, lines)
    return 0


def review(args, conn: Connection, out: Output) -> int:
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


def media_preview(args, conn: Connection, out: Output) -> int:
    target = Path(args.output)
    if target.exists() and not args.force:
        raise CliError(f"{target} exists; pass --force to overwrite it", exit_code=2)
    stub, meta = conn.gateway()
    reply = stub.GetMediaPreview(
        gateway_pb2.GetMediaPreviewRequest(media_id=args.media_id, max_side=args.max_side),
        metadata=meta,
    )
    try:  # a preview shows people's faces: written 0600 like an export
        write_private(target, reply.image, exclusive=not args.force)
    except FileExistsError:
        raise CliError(f"{target} exists; pass --force to overwrite it", exit_code=2) from None
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror}", exit_code=2) from None
    out.result(
        {
            "media_id": args.media_id,
            "written": str(target),
            "width": reply.width,
            "height": reply.height,
        },
        f"wrote {target} ({reply.width}x{reply.height})",
    )
    return 0


# -- the clearance report ---------------------------------------------------------------------


def report(args, conn: Connection, out: Output) -> int:
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


# -- the access log ---------------------------------------------------------------------------


def access_log_list(args, conn: Connection, out: Output) -> int:
    since = time_option(args.since, "--since")
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListAccessLog(
            gateway_pb2.ListAccessLogRequest(
                since=since, project_id=args.project or "", page_size=MAX_BATCH, page_token=token
            ),
            metadata=meta,
        )
    )
    entries = [
        {
            "sequence": e.sequence,
            "occurred_at": e.occurred_at.ToJsonString(),
            "account_id": e.account_id,
            "api_key_id": e.api_key_id,
            "peer": e.peer,
            "rpc": e.rpc,
            "project_id": e.project_id or None,
            "media_id": e.media_id or None,
            "status_code": e.status_code,
        }
        for page in pages
        for e in page.entries
    ]
    lines = [f"{len(entries)} access(es)"] + [
        f"  #{e['sequence']} {e['occurred_at']} {e['account_id'] or '-'}/{e['api_key_id'] or '-'}"
        f" {e['rpc']} {e['project_id'] or ''} {e['media_id'] or ''} {e['status_code']}"
        for e in entries
    ]
    out.result({"entries": entries}, lines)
    return 0


def add_review_commands(
    sub: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    media: argparse._SubParsersAction,
) -> None:
    """`mixip projects ...`, `mixip media list|preview`, `mixip review`, `mixip access-log`."""
    projects = sub.add_parser("projects", help="projects and collaborators").add_subparsers(
        dest="action", required=True
    )
    p = projects.add_parser("create", parents=[common], help="create a project")
    p.add_argument("project", nargs="?", help="its id (default: the server makes one)")
    p.add_argument("--name", required=True, help="the name people see")
    p.set_defaults(run=projects_create)
    p = projects.add_parser("list", parents=[common], help="projects you own or were invited to")
    p.set_defaults(run=projects_list)
    p = projects.add_parser("invite", parents=[common], help="invite an account to a project")
    p.add_argument("project", help="one of your projects")
    p.add_argument("account", help="the account to invite")
    p.add_argument("--role", choices=sorted(ROLES), required=True, help="what it may do")
    p.set_defaults(run=projects_invite)
    p = projects.add_parser("accept", parents=[common], help="accept an invitation to a project")
    p.add_argument("project", help="the project you were invited to")
    p.add_argument("--owner", required=True, help="the account that owns it (as listed)")
    p.set_defaults(run=projects_accept)
    p = projects.add_parser("remove", parents=[common], help="remove a collaborator")
    p.add_argument("project", help="one of your projects")
    p.add_argument("account", help="the collaborator's account")
    p.set_defaults(run=projects_remove)
    p = projects.add_parser("collaborators", parents=[common], help="a project's collaborators")
    p.add_argument("project", help="one of your projects")
    p.set_defaults(run=projects_collaborators)

    p = media.add_parser("list", parents=[common], help="a project's media, newest first")
    p.add_argument("--project", required=True, help="the project")
    p.add_argument("--undecided", action="store_true", help="only media with undecided faces")
    p.add_argument("--label", choices=sorted(LABELS), help="only media with a face so labelled")
    p.set_defaults(run=media_list)
    p = media.add_parser("preview", parents=[common], help="write an annotated JPEG preview")
    p.add_argument("media_id", metavar="MEDIA_ID", help="the media")
    p.add_argument("-o", "--output", required=True, metavar="OUT.jpg", help="where to write it")
    p.add_argument("--max-side", type=int, default=0, help="longest side, 64-2048 (default 640)")
    p.add_argument("--force", action="store_true", help="overwrite OUT.jpg if it exists")
    p.set_defaults(run=media_preview)

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

    log = sub.add_parser("access-log", help="who called what on your data").add_subparsers(
        dest="action", required=True
    )
    p = log.add_parser("list", parents=[common], help="your account's access log")
    p.add_argument("--since", metavar="ISO8601", help="only entries at or after this time")
    p.add_argument("--project", help="only entries naming this project")
    p.set_defaults(run=access_log_list)
