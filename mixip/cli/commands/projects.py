"""`mixip projects ...`: projects and their collaborators."""

from __future__ import annotations

import argparse
from typing import Any

from mixip.cli.commands.parsing import Subparsers
from mixip.cli.media import dashed_name
from mixip.cli.output import Output
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page

ROLES = {
    "reviewer": gateway_pb2.PROJECT_ROLE_REVIEWER,
    "uploader": gateway_pb2.PROJECT_ROLE_UPLOADER,
    "viewer": gateway_pb2.PROJECT_ROLE_VIEWER,
}


def role_name(role: int) -> str:
    return dashed_name(gateway_pb2.ProjectRole, role, "PROJECT_ROLE_")


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


def projects_create(args: argparse.Namespace, conn: Connection, out: Output) -> int:
    return create_project(conn, out, project=args.project or "", name=args.name)


def create_project(conn: Connection, out: Output, *, project: str, name: str) -> int:
    stub, meta = conn.gateway()
    reply = stub.CreateProject(
        gateway_pb2.CreateProjectRequest(project_id=project, display_name=name), metadata=meta
    )
    document = project_json(reply.project)
    out.result(document, f"project {document['project_id']} ({document['display_name']})")
    return 0


def projects_list(args: argparse.Namespace, conn: Connection, out: Output) -> int:
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


def projects_invite(args: argparse.Namespace, conn: Connection, out: Output) -> int:
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


def projects_accept(args: argparse.Namespace, conn: Connection, out: Output) -> int:
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


def projects_remove(args: argparse.Namespace, conn: Connection, out: Output) -> int:
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


def projects_collaborators(args: argparse.Namespace, conn: Connection, out: Output) -> int:
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


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """`mixip projects create|list|invite|accept|remove|collaborators`."""
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
