"""What each project role sees of a media's results: the one place that shapes them.

Every path that returns results (an upload's response and its replay, GetMediaResults and its
decisions, ListMedia's summaries, the preview drawn from them, and so the review page) passes
them through the caller's `RoleView`, looked up by its role in the media's project.

A label, its reason, the similarity, the talent id and whatever follows from them (ListMedia's
per-label and undecided counts, the review decisions and their notes, a label or undecided
filter, and a video face's box, best frame and detection score, which are those of the frame
that decided its label) come from the owner's collection. An uploader chooses what it uploads,
so showing it any of these would let it test who is in the owner's collection and under which
id: it sees what detection alone gives (the media, its face count, each face's index and, for a
photo, its box and detection score; for a video, each track's time ranges). The owner, its
reviewers (who need the talents to review) and its viewers choose no input: they see all of it
(docs/projects.md#what-each-role-sees).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.projects import OWNER, REVIEWER, UPLOADER, VIEWER
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import gateway_pb2
from mixip.runtime.errors import PermissionDenied

if TYPE_CHECKING:
    from gateway.reviews import Decision, MediaSummary
    from gateway.uploads import StoredMedia


@dataclass(frozen=True)
class RoleView:
    """What one role sees of results."""

    role: int
    matches: bool
    """Whether it sees what comes from the owner's collection (see the module's docstring)."""

    def media(self, stored: StoredMedia) -> StoredMedia:
        """A media and its face results as this role sees them."""
        if self.matches:
            return stored
        kind = stored.media.kind
        return dataclasses.replace(stored, faces=[_detected_only(kind, f) for f in stored.faces])

    def summary(self, summary: MediaSummary) -> MediaSummary:
        """A ListMedia summary as this role sees it (face_count stays: detection gives it)."""
        if self.matches:
            return summary
        return dataclasses.replace(
            summary, cleared_faces=0, possible_faces=0, unknown_faces=0, undecided_faces=0
        )

    def decisions(self, decisions: list[Decision]) -> list[Decision]:
        """A media's review decisions as this role sees them: all or none."""
        return decisions if self.matches else []

    def require_filters(self, label: int, undecided: bool) -> None:
        """A ListMedia filter by label or by undecided faces answers from what the role may not
        see: PERMISSION_DENIED for a role that does not see matches."""
        if not self.matches and (label or undecided):
            role = gateway_pb2.ProjectRole.Name(gateway_pb2.ProjectRole.ValueType(self.role))
            raise PermissionDenied(
                f"{role} may not filter media by label or decision in this project",
                reason="ROLE_NOT_ALLOWED",
            )


VIEWS: dict[int, RoleView] = {
    OWNER: RoleView(OWNER, matches=True),
    REVIEWER: RoleView(REVIEWER, matches=True),
    VIEWER: RoleView(VIEWER, matches=True),
    UPLOADER: RoleView(UPLOADER, matches=False),
}


def view_of(role: int) -> RoleView:
    """The view of a caller's role in the media's project (Scope.role)."""
    return VIEWS[role]


def _detected_only(kind: int, face: common_pb2.FaceResult) -> common_pb2.FaceResult:
    """What detection alone tells of a face: its index and time ranges and, for a photo, its box
    and detection score. Label and reason UNSPECIFIED (withheld), no similarity, no talent."""
    if kind == common_pb2.MEDIA_KIND_VIDEO:
        return common_pb2.FaceResult(face_index=face.face_index, ranges=face.ranges)
    return common_pb2.FaceResult(
        face_index=face.face_index, box=face.box, detection_score=face.detection_score
    )
