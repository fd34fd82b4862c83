"""No silent typos: a command that records into a project (`match`, `consent grant --scope
usage`) names one that exists for the caller (its own, or one whose invitation it accepted),
else it stops with the closest existing ids and the command that creates it (docs/cli.md)."""

from __future__ import annotations

import difflib

from mixip.cli.output import CliError
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.connection import Connection
from mixip.runtime.limits import MAX_BATCH
from mixip.runtime.paging import every_page


def project_ids(conn: Connection) -> list[str]:
    """The ids the caller's calls resolve: its own projects and its accepted invitations."""
    stub, meta = conn.gateway()
    pages = every_page(
        lambda token: stub.ListProjects(
            gateway_pb2.ListProjectsRequest(page_size=MAX_BATCH, page_token=token), metadata=meta
        )
    )
    return [p.project_id for page in pages for p in page.projects if not p.pending]


def require_project(conn: Connection, project: str) -> None:
    """A CliError (exit 1, as NOT_FOUND) unless `project` names one of the caller's projects."""
    known = project_ids(conn)
    if project in known:
        return
    close = difflib.get_close_matches(project, known, n=3, cutoff=0.6)
    guess = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ":"
    raise CliError(
        f"not found: no project {project!r}{guess} create it with "
        f'`mixip projects create {project} --name "..."` (`mixip projects list` lists yours)'
    )
