"""Projects and their collaborators, and the scope every project- or media-scoped call runs in.

An account owns its projects; it may invite another account to one of them with a role
(reviewer, uploader, viewer). The invitation is pending until the invited account accepts it:
until then it gives no access and changes nothing the invited account's calls resolve to, so
nobody can draw another account's uploads into a project by inviting it. A project id named by
a caller resolves to the caller's own project with that id, else to the one project with that
id whose invitation it accepted (an account accepts at most one project per id, and never an id
it owns itself: `PROJECT_ID_TAKEN`, which only ever tells the caller about its own projects).

What is out of the caller's scope (unknown, another account's and not shared with it, or an
uploader reading another account's upload) is NOT_FOUND, exactly like an unknown id; what is in
scope but not open to its role is PERMISSION_DENIED (docs/projects.md).
"""

from __future__ import annotations

import enum
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from gateway.auth import note
from gateway.projects_store import (
    ProjectKey,
    accepted_membership,
    delete_member,
    insert_project,
    invited_projects,
    members,
    own_projects,
)
from gateway.store import AccountRow, MediaRow, ProjectMemberRow, ProjectRow
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime import logs
from mixip.runtime.db import Database, serialize
from mixip.runtime.errors import FailedPrecondition, NotFound, PermissionDenied
from mixip.runtime.paging import fetch_limit, page_of
from mixip.runtime.times import Clock

logger = logging.getLogger("mixip.gateway")

OWNER = gateway_pb2.PROJECT_ROLE_OWNER
REVIEWER = gateway_pb2.PROJECT_ROLE_REVIEWER
UPLOADER = gateway_pb2.PROJECT_ROLE_UPLOADER
VIEWER = gateway_pb2.PROJECT_ROLE_VIEWER
INVITABLE = (REVIEWER, UPLOADER, VIEWER)


class Action(enum.Enum):
    """What a call does in a project."""

    READ = "read"  # media, results, listings (an uploader: its own uploads only)
    UPLOAD = "upload"
    REVIEW = "review"  # review decisions
    MANAGE = "manage"  # collaborators


ALLOWED: dict[Action, frozenset[int]] = {
    Action.READ: frozenset({OWNER, REVIEWER, VIEWER, UPLOADER}),
    Action.UPLOAD: frozenset({OWNER, UPLOADER}),
    Action.REVIEW: frozenset({OWNER, REVIEWER}),
    Action.MANAGE: frozenset({OWNER}),
}


@dataclass(frozen=True)
class Scope:
    """Where a call runs: the project's owner (whose account holds its media, talents and audit
    chain), the project, the caller's role in it and, for a media-scoped call, the media."""

    owner_account_id: str
    project_id: str
    role: int
    media_id: str = ""
    exists: bool = True  # False: an upload's new project, created in the upload's commit

    @property
    def sees_own_uploads_only(self) -> bool:
        return self.role == UPLOADER


@dataclass(frozen=True)
class Project:
    project_id: str
    display_name: str
    owner_account_id: str
    role: int
    created_at: datetime
    pending: bool = False


@dataclass(frozen=True)
class Collaborator:
    project_id: str
    account_id: str
    role: int
    invited_at: datetime
    invited_by_key_id: str
    accepted_at: datetime | None


def project_id_taken() -> FailedPrecondition:
    # Said only to the account whose own projects hold the id (creating, or accepting).
    return FailedPrecondition(
        "you already own or collaborate on a project with this id",
        reason="PROJECT_ID_TAKEN",
    )


def micros(moment: datetime) -> str:
    """A time as a page-token position (microseconds since the epoch, as digits)."""
    return str((moment - _EPOCH) // timedelta(microseconds=1))


def from_micros(position: str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(position))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Projects:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    # -- scope --------------------------------------------------------------------------------

    def project_scope(self, caller_account_id: str, project_id: str, action: Action) -> Scope:
        """The scope of a call naming `project_id`: NotFound when out of the caller's scope,
        PermissionDenied when its role does not allow `action`."""
        with self.db.read() as session:
            scope = _resolve(session, caller_account_id, project_id)
        if scope is None:
            raise NotFound("no such project")
        _noted(scope)
        _require(scope, action)
        return scope

    def project(self, scope: Scope) -> Project:
        """The project of a scope (Projects.project_scope), with the caller's role in it."""
        with self.db.read() as session:
            row = session.get(ProjectRow, (scope.owner_account_id, scope.project_id))
        if row is None:
            raise NotFound("no such project")
        return _project(row, scope.role)

    def owns(self, account_id: str, project_id: str) -> bool:
        """Whether the account owns the project (the access log's project filter)."""
        with self.db.read() as session:
            return session.get(ProjectRow, (account_id, project_id)) is not None

    def upload_scope(self, caller_account_id: str, project_id: str) -> Scope:
        """The scope of an upload: as `project_scope`, except that an id the caller neither
        owns nor accepted an invitation to names a new project of the caller's, created in the
        upload's own commit (`create_in`), so a failed upload leaves no empty project."""
        with self.db.read() as session:
            scope = upload_target(session, caller_account_id, project_id)
        return may_upload(scope)

    def media_scope(self, caller_account_id: str, media_id: str, action: Action) -> Scope:
        """The scope of a call naming `media_id` (NotFound / PermissionDenied as above; an
        uploader's scope holds only the media it uploaded)."""
        with self.db.read() as session:
            media = session.get(MediaRow, media_id)
            if media is None:
                raise NotFound("no such media")
            uploader = media.uploaded_by_account_id or media.account_id
            return self.record_scope(
                session,
                caller_account_id,
                (media.account_id, media.project_id, uploader),
                action,
                media_id=media_id,
                what="media",
            )

    def record_scope(
        self,
        session: Session,
        caller_account_id: str,
        record: tuple[str, str, str],
        action: Action,
        *,
        media_id: str = "",
        what: str,
    ) -> Scope:
        """The scope of a call naming one record of a project (a media, a job): `record` is
        (owner, project, the account that made it); an uploader's scope holds only what it
        made. NotFound ("no such `what`") / PermissionDenied as above."""
        owner_account_id, project_id, made_by = record
        role: int = OWNER
        if owner_account_id != caller_account_id:
            member = session.get(
                ProjectMemberRow, (owner_account_id, project_id, caller_account_id)
            )
            if member is None or member.accepted_at is None:
                raise NotFound(f"no such {what}")
            role = member.role
        if role == UPLOADER and made_by != caller_account_id:
            raise NotFound(f"no such {what}")
        scope = Scope(owner_account_id, project_id, role, media_id)
        _noted(scope)
        _require(scope, action)
        return scope

    # -- projects -----------------------------------------------------------------------------

    def create(self, account_id: str, project_id: str, display_name: str) -> Project:
        """Creates (or returns, when it exists) one of the caller's projects."""
        project_id = project_id or f"prj_{secrets.token_hex(12)}"
        self._create(account_id, project_id, display_name)
        with self.db.read() as session:
            row = session.get(ProjectRow, (account_id, project_id))
            assert row is not None  # created just above, or before
            return _project(row, OWNER)

    def _create(self, account_id: str, project_id: str, display_name: str) -> None:
        with self.db.write() as session:
            self.create_in(session, account_id, project_id, display_name)

    def create_in(
        self, session: Session, account_id: str, project_id: str, display_name: str = ""
    ) -> None:
        """Creates the account's project in the caller's transaction, unless it exists;
        PROJECT_ID_TAKEN when the account accepted an invitation to a project with this id."""
        serialize(session, _id_lock(account_id, project_id))
        if session.get(ProjectRow, (account_id, project_id)) is not None:
            return
        if accepted_membership(session, account_id, project_id) is not None:
            raise project_id_taken()
        if insert_project(
            session, account_id, project_id, display_name or project_id, self.clock()
        ):
            logs.log(logger, "project created", account=account_id, project=project_id)

    def projects(
        self, account_id: str, page_size: int, after: list[str] | None
    ) -> tuple[list[Project], list[str] | None]:
        """The caller's own projects, then those it was invited to, each in creation order.
        Positions: [group ("0" own, "1" invited), created (micros), owner, project]."""
        rows: list[tuple[str, ProjectRow, int, bool]] = []  # (group, project, role, pending)
        with self.db.read() as session:
            if after is None or after[0] == "0":
                own_after = _project_key(after) if after is not None else None
                for row in own_projects(session, account_id, own_after, fetch_limit(page_size)):
                    rows.append(("0", row, OWNER, False))
            if len(rows) <= page_size:
                invited_after = (
                    _project_key(after) if after is not None and after[0] == "1" else None
                )
                limit = fetch_limit(page_size) - len(rows)
                for row, role, accepted_at in invited_projects(
                    session, account_id, invited_after, limit
                ):
                    rows.append(("1", row, role, accepted_at is None))
        page, last = page_of(rows, page_size, lambda r: r)
        projects = [_project(row, role, pending) for _, row, role, pending in page]
        if last is None:
            return projects, None
        group, row, _, _ = last
        return projects, [group, micros(row.created_at), row.account_id, row.project_id]

    # -- collaborators ------------------------------------------------------------------------

    def invite(
        self,
        owner_account_id: str,
        key_id: str,
        project_id: str,
        member_account_id: str,
        role: int,
    ) -> Collaborator:
        """Invites an account to one of the caller's projects, or changes its role (the
        servicer refused the caller itself and roles not in INVITABLE). A new invitation is
        pending until the account accepts it; a role change keeps an accepted one accepted."""
        assert member_account_id != owner_account_id and role in INVITABLE
        self.project_scope(owner_account_id, project_id, Action.MANAGE)
        with self.db.write() as session:
            if session.get(AccountRow, member_account_id) is None:
                raise NotFound("no such account")
            current = session.get(
                ProjectMemberRow, (owner_account_id, project_id, member_account_id)
            )
            if current is None:
                current = ProjectMemberRow(
                    owner_account_id=owner_account_id,
                    project_id=project_id,
                    member_account_id=member_account_id,
                )
                session.add(current)
            current.role, current.invited_at, current.invited_by_key_id = (
                role,
                self.clock(),
                key_id,
            )
            invited = _collaborator(current)
        logs.log(
            logger,
            "collaborator invited",
            account=owner_account_id,
            key=key_id,
            project=project_id,
            member=member_account_id,
            role=role,
        )
        return invited

    def accept(self, member_account_id: str, owner_account_id: str, project_id: str) -> Project:
        """Accepts the caller's invitation to another account's project (again: the same)."""
        with self.db.write() as session:
            serialize(session, _id_lock(member_account_id, project_id))
            row = session.get(ProjectMemberRow, (owner_account_id, project_id, member_account_id))
            if row is None:
                raise NotFound("no such invitation")
            if row.accepted_at is None:
                if session.get(ProjectRow, (member_account_id, project_id)) is not None:
                    raise project_id_taken()
                if accepted_membership(session, member_account_id, project_id) is not None:
                    raise project_id_taken()
                row.accepted_at = self.clock()
            project = session.get(ProjectRow, (owner_account_id, project_id))
            assert project is not None  # a membership is deleted with its project
            accepted = _project(project, row.role)
        logs.log(
            logger,
            "invitation accepted",
            account=member_account_id,
            owner=owner_account_id,
            project=project_id,
        )
        return accepted

    def remove(
        self, owner_account_id: str, key_id: str, project_id: str, member_account_id: str
    ) -> Collaborator:
        self.project_scope(owner_account_id, project_id, Action.MANAGE)
        with self.db.write() as session:
            row = session.get(ProjectMemberRow, (owner_account_id, project_id, member_account_id))
            if row is None:
                raise NotFound("no such collaborator")
            removed = _collaborator(row)
            delete_member(session, owner_account_id, project_id, member_account_id)
        logs.log(
            logger,
            "collaborator removed",
            account=owner_account_id,
            key=key_id,
            project=project_id,
            member=member_account_id,
        )
        return removed

    def collaborators(
        self, owner_account_id: str, project_id: str, page_size: int, after: list[str] | None
    ) -> tuple[list[Collaborator], list[str] | None]:
        """In invitation order; positions: [invited (micros), member account]."""
        self.project_scope(owner_account_id, project_id, Action.MANAGE)
        with self.db.read() as session:
            member_after = (from_micros(after[0]), after[1]) if after is not None else None
            rows = members(
                session, owner_account_id, project_id, member_after, fetch_limit(page_size)
            )
        page, last = page_of(rows, page_size, lambda r: r)
        position = [micros(last.invited_at), last.member_account_id] if last else None
        return [_collaborator(r) for r in page], position


def _noted(scope: Scope) -> None:
    """The call's access-log entry names the project and is shown to its owner too."""
    note(
        project_id=scope.project_id,
        media_id=scope.media_id or None,
        owner_account_id=scope.owner_account_id,
    )


def upload_target(session: Session, caller_account_id: str, project_id: str) -> Scope:
    """What an upload to `project_id` by the caller goes into (`Projects.upload_scope`), read
    in the caller's transaction; the caller's role is not yet checked (`may_upload`)."""
    scope = _resolve(session, caller_account_id, project_id)
    return scope or Scope(caller_account_id, project_id, OWNER, exists=False)


def may_upload(scope: Scope) -> Scope:
    """`scope`, refused unless its role may upload; the access log notes its owner."""
    _noted(scope)
    _require(scope, Action.UPLOAD)
    return scope


def _resolve(session: Session, caller_account_id: str, project_id: str) -> Scope | None:
    if session.get(ProjectRow, (caller_account_id, project_id)) is not None:
        return Scope(caller_account_id, project_id, OWNER)
    member = accepted_membership(session, caller_account_id, project_id)
    if member is None:
        return None
    return Scope(member.owner_account_id, project_id, member.role)


def _require(scope: Scope, action: Action) -> None:
    if scope.role not in ALLOWED[action]:
        role = gateway_pb2.ProjectRole.Name(gateway_pb2.ProjectRole.ValueType(scope.role))
        raise PermissionDenied(
            f"{role} may not {action.value} in this project", reason="ROLE_NOT_ALLOWED"
        )


def _id_lock(account_id: str, project_id: str) -> str:
    """Serializes what makes `project_id` name a project for `account_id` (creating it, being
    invited to it), so the rule of one project per id and account holds under races."""
    return f"mixip.gateway.project-id:{account_id}:{project_id}"


def _project_key(position: list[str]) -> ProjectKey:
    """A listing position's project key: [group, created (micros), owner, project]."""
    return from_micros(position[1]), position[2], position[3]


def _project(row: ProjectRow, role: int, pending: bool = False) -> Project:
    return Project(row.project_id, row.display_name, row.account_id, role, row.created_at, pending)


def _collaborator(row: ProjectMemberRow) -> Collaborator:
    return Collaborator(
        row.project_id,
        row.member_account_id,
        row.role,
        row.invited_at,
        row.invited_by_key_id,
        row.accepted_at,
    )
