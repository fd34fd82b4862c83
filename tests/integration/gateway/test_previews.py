"""GetMediaPreview: the stored media drawn in memory with its faces boxed and labelled, upright
as the viewer sees it, as a JPEG within the requested size; a video gives a contact sheet."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.annotate import COLOURS
from tests.support import faces
from tests.support.gateway_calls import group_photo, invite, upload
from tests.support.status import expect_error, expect_invalid


def decode(reply: pb.GetMediaPreviewResponse) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(reply.image, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the preview is not a decodable image"
    return image


def near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 60) -> bool:
    return int(np.abs(pixel.astype(int) - np.array(colour)).sum()) < tolerance


def test_a_photo_stored_sideways_is_previewed_upright_with_its_face_boxed(gateway, studio):
    _, meta = studio
    upright = faces.astronaut()  # 512 x 512: enlarge to tell upright from sideways
    wide = np.zeros((upright.shape[0], upright.shape[1] * 2, 3), np.uint8)
    wide[:, : upright.shape[1]] = upright
    media = upload(gateway, meta, faces.encode_pillow(wide, "JPEG", orientation=6))
    assert len(media.faces) == 1 and media.faces[0].talent_id == "astronaut"

    reply = gateway.stub.GetMediaPreview(
        pb.GetMediaPreviewRequest(media_id=media.media_id, max_side=320), metadata=meta
    )

    assert reply.content_type == "image/jpeg" and reply.image[:3] == b"\xff\xd8\xff"
    image = decode(reply)
    assert (image.shape[1], image.shape[0]) == (reply.width, reply.height)
    assert max(reply.width, reply.height) <= 320
    assert reply.width == 320  # landscape as the viewer sees it, not the stored portrait
    # the box's left edge, scaled like the photo, is drawn in the cleared colour
    box = media.faces[0].box
    factor = 320 / wide.shape[1]
    x, y = round(box.x * factor), round((box.y + box.height / 2) * factor)
    edge = image[y, max(0, x - 2) : x + 3]
    assert any(near(p, COLOURS["cleared"]) for p in edge)


def test_the_default_size_is_640_and_sizes_are_bounded(gateway, studio):
    _, meta = studio
    media = upload(gateway, meta, faces.encode(faces.scaled(faces.astronaut(), 2.0)))

    reply = gateway.stub.GetMediaPreview(
        pb.GetMediaPreviewRequest(media_id=media.media_id), metadata=meta
    )

    assert max(reply.width, reply.height) == 640
    details = expect_invalid(
        gateway.stub.GetMediaPreview,
        pb.GetMediaPreviewRequest(media_id="no/such", max_side=10),
        metadata=meta,
        fields={"media_id", "max_side"},
    )
    assert len(details.violations) == 2
    expect_invalid(
        gateway.stub.GetMediaPreview,
        pb.GetMediaPreviewRequest(media_id=media.media_id, max_side=4096),
        metadata=meta,
        fields={"max_side"},
    )


def test_a_page_that_shows_the_legend_itself_gets_a_preview_without_it(gateway, studio):
    _, meta = studio
    media = upload(gateway, meta, group_photo())  # wider than tall: the width is the side

    def preview(**options) -> pb.GetMediaPreviewResponse:
        return gateway.stub.GetMediaPreview(
            pb.GetMediaPreviewRequest(media_id=media.media_id, max_side=320, **options),
            metadata=meta,
        )

    with_legend, without = preview(), preview(omit_legend=True)
    assert with_legend.width == without.width == 320
    assert without.height < with_legend.height  # the strip below the picture is left out


def test_another_accounts_media_is_not_found_like_an_unknown_one(gateway, studio):
    _, meta = studio
    media = upload(gateway, meta, faces.encode(faces.astronaut()))
    _, other = gateway.new_account("rival")

    for media_id in (media.media_id, "med_000000000000000000000000"):
        expect_error(
            grpc.StatusCode.NOT_FOUND,
            gateway.stub.GetMediaPreview,
            pb.GetMediaPreviewRequest(media_id=media_id),
            metadata=other,
        )


@pytest.mark.parametrize("backend", ["sqlite"])  # decoding is the point here, not the database
def test_a_video_is_previewed_as_a_contact_sheet_of_its_tracks(gateway, studio, backend):
    _, meta = studio
    video = faces.make_video(None, [(faces.astronaut(), 1.5), (faces.grace_hopper(), 1.5)])
    media = upload(gateway, meta, video, chunk=16 * 1024)
    assert len(media.faces) == 2

    reply = gateway.stub.GetMediaPreview(
        pb.GetMediaPreviewRequest(media_id=media.media_id, max_side=2048), metadata=meta
    )

    image = decode(reply)
    assert image.shape[1] == 2 * 240  # one tile per track, side by side
    first_band = image[240:250, :240].reshape(-1, 3)  # the caption band takes the label colour
    assert any(near(p, COLOURS["cleared"]) for p in first_band)


def test_a_reviewer_sees_the_projects_previews_and_a_member_of_another_project_does_not(
    gateway, studio
):
    _, owner = studio
    reviewer_id, reviewer = gateway.new_account("reviewer")
    outsider_id, outsider = gateway.new_account("outsider")
    for project_id, account_id in (("film-p", reviewer_id), ("film-q", outsider_id)):
        gateway.stub.CreateProject(
            pb.CreateProjectRequest(project_id=project_id, display_name=project_id),
            metadata=owner,
        )
        invite(gateway, owner, account_id, pb.PROJECT_ROLE_REVIEWER, project=project_id)
    media = upload(gateway, owner, faces.encode(faces.astronaut()), project="film-p")
    request = pb.GetMediaPreviewRequest(media_id=media.media_id, max_side=128)

    seen = gateway.stub.GetMediaPreview(request, metadata=reviewer)

    assert max(decode(seen).shape[:2]) <= 128
    expect_error(
        grpc.StatusCode.NOT_FOUND, gateway.stub.GetMediaPreview, request, metadata=outsider
    )
