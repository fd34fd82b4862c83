"""What each role sees of a media's results (gateway/role_views.py), on a photo and a video."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.projects import OWNER, REVIEWER, UPLOADER, VIEWER
from gateway.role_views import view_of
from gateway.uploads import Media, StoredMedia
from mixip.common.v1 import common_pb2 as common

BOX = common.BoundingBox(x=10, y=20, width=30, height=40)
RANGES = [common.TimeRange(start_seconds=1.0, end_seconds=4.0)]


def _stored(kind: int) -> StoredMedia:
    media = Media("med_1", "film-1", kind, "image/jpeg", 1, 0.0, "local", datetime.now(UTC))
    face = common.FaceResult(
        face_index=0,
        box=BOX,
        label=common.FACE_LABEL_CLEARED,
        reason=common.LABEL_REASON_CONSENTED_MATCH,
        similarity=0.93,
        talent_id="astronaut",
        ranges=RANGES if kind == common.MEDIA_KIND_VIDEO else [],
        best_frame_seconds=2.5 if kind == common.MEDIA_KIND_VIDEO else 0.0,
        detection_score=0.99,
    )
    return StoredMedia(media, [face])


@pytest.mark.parametrize("role", [OWNER, REVIEWER, VIEWER])
@pytest.mark.parametrize("kind", [common.MEDIA_KIND_IMAGE, common.MEDIA_KIND_VIDEO])
def test_the_owner_reviewers_and_viewers_see_every_result_field(role, kind):
    stored = _stored(kind)
    assert view_of(role).media(stored) == stored


def test_an_uploader_sees_a_photos_boxes_and_scores_and_nothing_of_the_match():
    [face] = view_of(UPLOADER).media(_stored(common.MEDIA_KIND_IMAGE)).faces
    assert face == common.FaceResult(face_index=0, box=BOX, detection_score=0.99)


def test_an_uploader_sees_a_video_tracks_ranges_only():
    """A video face's box, best frame and score are those of the frame that decided its label."""
    [face] = view_of(UPLOADER).media(_stored(common.MEDIA_KIND_VIDEO)).faces
    assert face == common.FaceResult(face_index=0, ranges=RANGES)
