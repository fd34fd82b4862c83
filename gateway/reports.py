"""The clearance report: per project, every media and every face with its advisory label, the
current review decision (who decided, by name, and when) and its talent's release form (the
project's face-usage consent as the consent ledger holds it now), for legal and the
errors-and-omissions insurer.

It is read through the same role view as every other result (gateway/role_views.py): the media
are those ListMedia lists for the caller, the faces those GetMediaResults returns, the decisions
those it returns. A role that does not see matches (an uploader) gets no label, talent, decision
or release form, so the report names no talent the caller's role may not see.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gateway.peers import ConsentPort
from gateway.projects import Project, Projects, Scope
from gateway.reviews import Decision, MediaSummary, Reviews
from gateway.uploads import Uploads
from mixip.common.v1 import common_pb2
from mixip.consent.v1 import consent_pb2
from mixip.gateway.v1 import gateway_pb2

SIGNED = gateway_pb2.RELEASE_FORM_STATUS_SIGNED
MISSING = gateway_pb2.RELEASE_FORM_STATUS_MISSING
REVOKED = gateway_pb2.RELEASE_FORM_STATUS_REVOKED
NOT_SHOWN = gateway_pb2.RELEASE_FORM_STATUS_UNSPECIFIED


@dataclass(frozen=True)
class ReportFace:
    result: common_pb2.FaceResult
    decision: Decision | None
    """The current (latest) decision, if any."""
    release_form: int
    """A ReleaseFormStatus."""


@dataclass(frozen=True)
class ReportMedia:
    summary: MediaSummary
    faces: list[ReportFace]


class ClearanceReports:
    def __init__(
        self, projects: Projects, uploads: Uploads, reviews: Reviews, consent: ConsentPort
    ) -> None:
        self.projects = projects
        self.uploads = uploads
        self.reviews = reviews
        self.consent = consent

    def page(
        self, scope: Scope, caller_account_id: str, page_size: int, after: list[str] | None
    ) -> tuple[Project, list[ReportMedia], list[str] | None]:
        """One page of the report of the project in `scope` (Projects.project_scope with READ):
        its media as ListMedia pages them, each with its faces."""
        project = self.projects.project(scope)
        summaries, last = self.reviews.media(
            scope, caller_account_id, label=0, undecided=False, page_size=page_size, after=after
        )
        forms: dict[str, int] = {}
        items = []
        for summary in summaries:
            media_scope = dataclasses.replace(scope, media_id=summary.media_id)
            stored = self.uploads.results(media_scope)
            current = {d.face_index: d for d in self.reviews.decisions(media_scope)}
            faces = []
            for face in stored.faces:
                if face.talent_id and face.talent_id not in forms:
                    forms[face.talent_id] = self._release_form(scope, face.talent_id)
                faces.append(
                    ReportFace(
                        result=face,
                        decision=current.get(face.face_index),
                        release_form=forms.get(face.talent_id, NOT_SHOWN),
                    )
                )
            items.append(ReportMedia(summary, faces))
        return project, items, last

    def _release_form(self, scope: Scope, talent_id: str) -> int:
        """The talent's face-usage consent for the project, as the ledger holds it now."""
        records = [
            r
            for r in self.consent.all_consent_records(scope.owner_account_id, talent_id)
            if r.scope == consent_pb2.CONSENT_SCOPE_FACE_USAGE and r.project_id == scope.project_id
        ]
        if not records:
            return MISSING
        latest = max(records, key=lambda r: r.sequence)
        return SIGNED if latest.decision == consent_pb2.CONSENT_DECISION_GRANTED else REVOKED
