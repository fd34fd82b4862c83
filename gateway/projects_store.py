"""The queries of projects and their collaborators (`gateway_projects`,
`gateway_project_members`; the tables are in store.py with every other gateway table). Pages
are keyset pages: `after` is the last row's key, decoded by the caller from its position."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, and_, delete, or_, select
from sqlalchemy.orm import Session

from gateway.store import ProjectMemberRow, ProjectRow
from mixip.runtime.db import insert_ignoring_conflicts

# A project's place in a listing: (created_at, owner account, project id).
ProjectKey = tuple[datetime, str, str]


def insert_project(
    session: Session, account_id: str, project_id: str, display_name: str, at: datetime
) -> bool:
    """Inserts the account's project unless it exists; True when it was inserted."""
    inserted = insert_ignoring_conflicts(
        session,
        ProjectRow.__table__,
        [
            {
                "account_id": account_id,
                "project_id": project_id,
                "display_name": display_name,
                "created_at": at,
            }
        ],
        ["account_id", "project_id"],
    )
    return inserted > 0


def accepted_membership(
    session: Session, account_id: str, project_id: str
) -> ProjectMemberRow | None:
    """The account's accepted invitation to a project with this id (at most one)."""
    return session.scalars(
        select(ProjectMemberRow).where(
            ProjectMemberRow.member_account_id == account_id,
            ProjectMemberRow.project_id == project_id,
            ProjectMemberRow.accepted_at.is_not(None),
        )
    ).first()


def own_projects(
    session: Session, account_id: str, after: ProjectKey | None, limit: int
) -> list[ProjectRow]:
    """Up to `limit` of the account's own projects after `after`, in creation order."""
    query = select(ProjectRow).where(ProjectRow.account_id == account_id)
    if after is not None:
        query = query.where(_after(after))
    return list(
        session.scalars(query.order_by(ProjectRow.created_at, ProjectRow.project_id).limit(limit))
    )


def invited_projects(
    session: Session, account_id: str, after: ProjectKey | None, limit: int
) -> list[tuple[ProjectRow, int, datetime | None]]:
    """Up to `limit` of the projects the account was invited to (accepted or pending) after
    `after`, in creation order: each with the account's role and when it accepted (None:
    pending)."""
    query = (
        select(ProjectRow, ProjectMemberRow.role, ProjectMemberRow.accepted_at)
        .join(
            ProjectMemberRow,
            and_(
                ProjectMemberRow.owner_account_id == ProjectRow.account_id,
                ProjectMemberRow.project_id == ProjectRow.project_id,
            ),
        )
        .where(ProjectMemberRow.member_account_id == account_id)
    )
    if after is not None:
        query = query.where(_after(after))
    ordered = query.order_by(ProjectRow.created_at, ProjectRow.account_id, ProjectRow.project_id)
    return [
        (row, role, accepted_at) for row, role, accepted_at in session.execute(ordered.limit(limit))
    ]


def _after(key: ProjectKey) -> ColumnElement[bool]:
    moment, owner, project_id = key
    return or_(
        ProjectRow.created_at > moment,
        and_(ProjectRow.created_at == moment, ProjectRow.account_id > owner),
        and_(
            ProjectRow.created_at == moment,
            ProjectRow.account_id == owner,
            ProjectRow.project_id > project_id,
        ),
    )


def delete_member(
    session: Session, owner_account_id: str, project_id: str, member_account_id: str
) -> None:
    session.execute(
        delete(ProjectMemberRow).where(
            ProjectMemberRow.owner_account_id == owner_account_id,
            ProjectMemberRow.project_id == project_id,
            ProjectMemberRow.member_account_id == member_account_id,
        )
    )


def members(
    session: Session,
    owner_account_id: str,
    project_id: str,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[ProjectMemberRow]:
    """Up to `limit` of the project's collaborators (pending too) after `after` (invited at,
    member account), in invitation order."""
    query = select(ProjectMemberRow).where(
        ProjectMemberRow.owner_account_id == owner_account_id,
        ProjectMemberRow.project_id == project_id,
    )
    if after is not None:
        moment, member = after
        query = query.where(
            or_(
                ProjectMemberRow.invited_at > moment,
                and_(
                    ProjectMemberRow.invited_at == moment,
                    ProjectMemberRow.member_account_id > member,
                ),
            )
        )
    ordered = query.order_by(ProjectMemberRow.invited_at, ProjectMemberRow.member_account_id)
    return list(session.scalars(ordered.limit(limit)))
