"""An account's own data as one portable JSON document (its right of access and portability):
its profile, its projects and their collaborators (and its own roles in others' projects), the
media of its projects with their results and review decisions, its jobs, webhooks (no secret),
API keys (ids and times only), erasure receipts and its access log. Nothing of another account:
no other account's profile, projects or media (a collaborator appears by account id, as
ListCollaborators shows it). A talent's own export is `ExportTalentData` (gateway/rights.py).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.access_log import AccessFilter, AccessLog
from gateway.accounts import Accounts
from gateway.seals import Seals
from gateway.store import (
    ApiKeyRow,
    ErasureReceiptRow,
    JobRow,
    MediaFaceRow,
    MediaRow,
    ProjectMemberRow,
    ProjectRow,
    ReviewDecisionRow,
    WebhookRow,
)
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.db import Database
from mixip.runtime.times import Clock, iso

EXPORT_SCHEMA = "mixip.account-export/1"
_PAGE = 1000


class AccountExports:
    def __init__(
        self, db: Database, clock: Clock, accounts: Accounts, seals: Seals, access_log: AccessLog
    ) -> None:
        self.db = db
        self.clock = clock
        self.accounts = accounts
        self.seals = seals
        self.access_log = access_log

    def export(self, account_id: str) -> str:
        """The document (NOT_FOUND for an unknown account, ACCOUNT_CLOSED once closed)."""
        profile = self.accounts.profile(account_id)
        with self.db.read() as session:
            document: dict[str, Any] = {
                "schema_version": EXPORT_SCHEMA,
                "generated_at": iso(self.clock()),
                "account": {
                    "account_id": profile.account_id,
                    "name": profile.name,
                    "email": profile.email,
                    "created_at": iso(profile.created_at),
                },
                "projects": self._projects(session, account_id),
                "collaborations": self._collaborations(session, account_id),
                "media": self._media(session, account_id),
                "jobs": [
                    {
                        "job_id": j.job_id,
                        "project_id": j.project_id,
                        "media_id": j.media_id,
                        "state": gateway_pb2.JobState.Name(gateway_pb2.JobState.ValueType(j.state)),
                        "created_at": iso(j.created_at),
                        "finished_at": _time(j.finished_at),
                    }
                    for j in _owned(session, JobRow, account_id, JobRow.created_at, JobRow.job_id)
                ],
                "webhooks": [
                    {
                        "webhook_id": w.webhook_id,
                        "url": w.url,
                        "event_types": [t for t in w.event_types.split(",") if t],
                        "created_at": iso(w.created_at),
                        "disabled_at": _time(w.disabled_at),
                    }
                    for w in _owned(
                        session,
                        WebhookRow,
                        account_id,
                        WebhookRow.created_at,
                        WebhookRow.webhook_id,
                    )
                ],
                "api_keys": [
                    {
                        "key_id": k.key_id,
                        "created_at": iso(k.created_at),
                        "revoked_at": _time(k.revoked_at),
                    }
                    for k in _owned(
                        session, ApiKeyRow, account_id, ApiKeyRow.created_at, ApiKeyRow.key_id
                    )
                ],
                "erasure_receipts": [
                    {
                        "receipt_id": r.receipt_id,
                        "completed_at": iso(r.completed_at),
                        "steps": json.loads(r.steps),
                    }
                    for r in _owned(
                        session,
                        ErasureReceiptRow,
                        account_id,
                        ErasureReceiptRow.completed_at,
                        ErasureReceiptRow.receipt_id,
                    )
                ],
            }
        document["access_log"] = self._access_log(account_id)
        return json.dumps(document, indent=2, sort_keys=False)

    def _projects(self, session: Any, account_id: str) -> list[dict[str, Any]]:
        projects = _owned(session, ProjectRow, account_id, ProjectRow.project_id)
        members = session.scalars(
            select(ProjectMemberRow)
            .where(ProjectMemberRow.owner_account_id == account_id)
            .order_by(ProjectMemberRow.project_id, ProjectMemberRow.member_account_id)
        ).all()
        return [
            {
                "project_id": p.project_id,
                "display_name": p.display_name,
                "created_at": iso(p.created_at),
                "collaborators": [
                    _membership(m, m.member_account_id)
                    for m in members
                    if m.project_id == p.project_id
                ],
            }
            for p in projects
        ]

    def _collaborations(self, session: Any, account_id: str) -> list[dict[str, Any]]:
        """Its own roles in other accounts' projects (ids only: the projects are theirs)."""
        rows = session.scalars(
            select(ProjectMemberRow)
            .where(ProjectMemberRow.member_account_id == account_id)
            .order_by(ProjectMemberRow.owner_account_id, ProjectMemberRow.project_id)
        ).all()
        return [_membership(m, m.owner_account_id, key="owner_account_id") for m in rows]

    def _media(self, session: Any, account_id: str) -> list[dict[str, Any]]:
        media = _owned(session, MediaRow, account_id, MediaRow.created_at, MediaRow.media_id)
        names = self.seals.filenames(session, media)
        faces = _owned(
            session, MediaFaceRow, account_id, MediaFaceRow.media_id, MediaFaceRow.face_index
        )
        results = list(zip(faces, self.seals.faces(session, faces), strict=True))
        decisions = _owned(session, ReviewDecisionRow, account_id, ReviewDecisionRow.sequence)
        notes = self.seals.notes(session, decisions)
        out = []
        for m in media:
            out.append(
                {
                    "media_id": m.media_id,
                    "project_id": m.project_id,
                    "filename": names.get(m.media_id, ""),
                    "content_type": m.content_type,
                    "size_bytes": m.size_bytes,
                    "uploaded_at": iso(m.created_at),
                    "uploaded_by_account_id": m.uploaded_by_account_id or account_id,
                    "results": [_result(r) for f, r in results if f.media_id == m.media_id],
                    "review_decisions": [
                        {
                            "decision_id": d.decision_id,
                            "face_index": d.face_index,
                            "decision": common_pb2.ReviewDecision.Name(
                                common_pb2.ReviewDecision.ValueType(d.decision)
                            ),
                            "note": notes[d.decision_id],
                            "decided_by_account_id": d.decided_by_account_id,
                            "decided_at": iso(d.decided_at),
                        }
                        for d in decisions
                        if d.media_id == m.media_id
                    ],
                }
            )
        return out

    def _access_log(self, account_id: str) -> list[dict[str, Any]]:
        """Its entries as ListAccessLog shows them: its own calls and others' on its data."""
        entries: list[dict[str, Any]] = []
        after = 0
        while True:
            page, last = self.access_log.entries(account_id, AccessFilter(), _PAGE, after)
            entries += [
                {
                    "account_id": e.account_id,
                    "api_key_id": e.api_key_id,
                    "peer": e.peer,
                    "rpc": e.rpc,
                    "project_id": e.project_id,
                    "media_id": e.media_id,
                    "status_code": e.status_code,
                    "occurred_at": iso(e.occurred_at),
                }
                for e in page
            ]
            if last is None:
                return entries
            after = last


class _AccountRow(Protocol):
    account_id: Any  # the column naming the account a row belongs to


R = TypeVar("R", bound=_AccountRow)


def _owned(session: Session, row: type[R], account_id: str, *order: Any) -> list[R]:
    """The account's own rows of the table `row`, in `order`: every section of the document
    but the memberships (keyed by owner and member) reads through this one filter."""
    return list(session.scalars(select(row).where(row.account_id == account_id).order_by(*order)))


def _membership(row: ProjectMemberRow, other: str, key: str = "account_id") -> dict[str, Any]:
    return {
        "project_id": row.project_id,
        key: other,
        "role": gateway_pb2.ProjectRole.Name(gateway_pb2.ProjectRole.ValueType(row.role)),
        "invited_at": iso(row.invited_at),
        "accepted_at": _time(row.accepted_at),
    }


def _result(face: common_pb2.FaceResult) -> dict[str, Any]:
    return {
        "face_index": face.face_index,
        "label": common_pb2.FaceLabel.Name(face.label),
        "reason": common_pb2.LabelReason.Name(face.reason),
        "similarity": face.similarity,
        "talent_id": face.talent_id,
        "box": [face.box.x, face.box.y, face.box.width, face.box.height],
    }


def _time(moment: datetime | None) -> str | None:
    return iso(moment) if moment is not None else None
