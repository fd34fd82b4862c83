"""The matcher over gRPC with the real local engine, the real consent service and a real
database: enrollment, labels, revocation, video tracks, isolation, bad input."""

from __future__ import annotations

import dataclasses
import os
import struct
import tempfile
import zlib

import grpc
import numpy as np
import pytest
from sqlalchemy import func, select

from mixip.common.v1 import common_pb2 as common
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.matcher.v1 import matcher_pb2 as pb
from mixip.runtime.times import to_timestamp
from services.matcher.settings import Limits, MatcherSettings
from services.matcher.store import FaceRow, open_face
from tests.support import faces
from tests.support.status import expect_error, expect_invalid

ACCOUNT, PROJECT = "acct-a", "film-1"
CLEARED, POSSIBLE, UNKNOWN = (
    common.FACE_LABEL_CLEARED,
    common.FACE_LABEL_POSSIBLE,
    common.FACE_LABEL_UNKNOWN,
)


def grant(
    mesh,
    clock,
    talent,
    scope=cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING,
    project="",
    decision=cpb.CONSENT_DECISION_GRANTED,
    account=ACCOUNT,
):
    mesh.consent.stub.RecordConsent(
        cpb.RecordConsentRequest(
            account_id=account,
            talent_id=talent,
            scope=scope,
            project_id=project,
            decision=decision,
            evidence=cpb.Evidence(
                method="signed-release",
                policy_version="v1",
                actor="staff",
                captured_at=to_timestamp(clock()),
            ),
        )
    )


def grant_usage(mesh, clock, talent, project=PROJECT, account=ACCOUNT):
    grant(mesh, clock, talent, cpb.CONSENT_SCOPE_FACE_USAGE, project, account=account)


def enroll(mesh, talent, image, account=ACCOUNT, **kwargs):
    return mesh.matcher.stub.EnrollTalentFace(
        pb.EnrollTalentFaceRequest(
            account_id=account, talent_id=talent, image=faces.encode(image, ".png"), **kwargs
        )
    )


def match(mesh, data: bytes, account=ACCOUNT, project=PROJECT):
    return mesh.matcher.stub.MatchMedia(
        pb.MatchMediaRequest(account_id=account, project_id=project, media=data)
    )


def face_count(mesh) -> int:
    with mesh.matcher.app.db.read() as session:
        return session.scalar(select(func.count()).select_from(FaceRow))


@pytest.fixture
def enrolled(mesh, clock):
    """The astronaut enrolled (biometric consent, no project consent yet)."""
    grant(mesh, clock, "astronaut")
    enroll(mesh, "astronaut", faces.astronaut())
    return mesh


def test_the_right_person_is_possible_without_project_consent_and_cleared_with_it(enrolled, clock):
    group = faces.encode(faces.composite(faces.astronaut(), faces.grace_hopper()), ".jpg")
    first = match(enrolled, group)
    assert first.kind == common.MEDIA_KIND_IMAGE and len(first.faces) == 2
    by_talent = {f.talent_id: f for f in first.faces}
    astro = by_talent["astronaut"]
    assert (astro.label, astro.reason) == (POSSIBLE, common.LABEL_REASON_NO_PROJECT_CONSENT)
    assert astro.similarity > 0.9
    hopper = by_talent[""]
    assert (hopper.label, hopper.reason) == (UNKNOWN, common.LABEL_REASON_NO_MATCH)
    assert hopper.similarity < 0.363
    assert astro.box.x < hopper.box.x  # left and right halves of the composite

    grant_usage(enrolled, clock, "astronaut")
    second = {f.talent_id: f for f in match(enrolled, group).faces}
    assert (second["astronaut"].label, second["astronaut"].reason) == (
        CLEARED,
        common.LABEL_REASON_CONSENTED_MATCH,
    )
    assert second[""].label == UNKNOWN
    other_project = {f.talent_id: f for f in match(enrolled, group, project="film-2").faces}
    assert other_project["astronaut"].label == POSSIBLE


@pytest.mark.parametrize(
    "variant",
    [
        lambda img: faces.scaled(img, 0.5),
        lambda img: faces.scaled(img, 2.0),
        lambda img: faces.rotated(img, 12),
        lambda img: faces.brightened(img, 50),
        lambda img: faces.jpeg_reencoded(img, 30),
    ],
    ids=["half", "double", "rotated", "brighter", "jpeg30"],
)
def test_variations_of_the_enrolled_face_are_cleared(enrolled, clock, variant):
    grant_usage(enrolled, clock, "astronaut")
    [face] = match(enrolled, faces.encode(variant(faces.astronaut()), ".webp")).faces
    assert (face.label, face.talent_id) == (CLEARED, "astronaut")


def test_enrollment_stores_a_sealed_vector_and_never_the_image(enrolled):
    image_bytes = faces.encode(faces.astronaut(), ".png")
    vault = enrolled.matcher.app.vault
    with enrolled.matcher.app.db.read() as session:
        [row] = session.scalars(select(FaceRow)).all()
        assert row.legacy_talent_id is None and row.legacy_vector is None
        key = vault.talent_keys(session, ACCOUNT, ["astronaut"], create=False)["astronaut"]
        assert row.talent_ref == key.ref
        talent, vector = open_face(key, row.face_id, row.sealed)
        assert talent == "astronaut" and len(vector) == 128 * 4
        assert abs(np.linalg.norm(np.frombuffer(vector, "<f4")) - 1) < 1e-4
        assert vector not in row.sealed and b"astronaut" not in row.sealed
        stored = b"".join(
            v if isinstance(v, bytes) else str(v).encode()
            for v in session.execute(FaceRow.__table__.select()).one()
        )
    assert len(stored) < 1024
    assert image_bytes[1000:1064] not in stored
    listed = enrolled.matcher.stub.ListTalentFaces(
        pb.ListTalentFacesRequest(account_id=ACCOUNT, talent_id="astronaut")
    )
    assert [f.talent_id for f in listed.faces] == ["astronaut"]
    assert listed.faces[0].model == "sface-2021dec"
    assert not any(f.type == f.TYPE_BYTES for f in pb.FaceRecord.DESCRIPTOR.fields)


def test_enrollment_needs_biometric_consent(mesh, clock):
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, enroll, mesh, "astronaut", faces.astronaut()
    )
    assert details.reason == "BIOMETRIC_CONSENT_REQUIRED"
    grant(mesh, clock, "astronaut", decision=cpb.CONSENT_DECISION_REVOKED)
    expect_error(grpc.StatusCode.FAILED_PRECONDITION, enroll, mesh, "astronaut", faces.astronaut())
    assert face_count(mesh) == 0


def _pasted(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image unscaled in the middle of a grey canvas: a small face in a large photo."""
    canvas = np.full((size[1], size[0], 3), 127, np.uint8)
    h, w = image.shape[:2]
    top, left = (size[1] - h) // 2, (size[0] - w) // 2
    canvas[top : top + h, left : left + w] = image
    return canvas


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (lambda: faces.composite(faces.astronaut(), faces.grace_hopper()), "MULTIPLE_FACES"),
        (lambda: np.full((400, 400, 3), 127, np.uint8), "NO_FACE"),
        (lambda: _pasted(faces.scaled(faces.astronaut(), 0.3), (600, 600)), "FACE_TOO_SMALL"),
    ],
    ids=["two-faces", "no-face", "tiny-face"],
)
def test_enrollment_needs_exactly_one_usable_face(mesh, clock, image, reason):
    grant(mesh, clock, "astronaut")
    details = expect_invalid(enroll, mesh, "astronaut", image(), fields={"image"})
    assert details.reason == reason
    assert face_count(mesh) == 0


def test_enrollment_is_idempotent_by_request_id(mesh, clock):
    grant(mesh, clock, "astronaut")
    first = enroll(mesh, "astronaut", faces.astronaut(), request_id="r1")
    again = enroll(mesh, "astronaut", faces.astronaut(), request_id="r1")
    assert first.face.face_id == again.face.face_id and face_count(mesh) == 1
    enroll(mesh, "astronaut", faces.scaled(faces.astronaut(), 0.8))  # several faces per talent
    assert face_count(mesh) == 2


def test_revocation_deletes_the_vectors_and_the_face_becomes_unknown(enrolled, clock):
    grant_usage(enrolled, clock, "astronaut")
    photo = faces.encode(faces.astronaut(), ".jpg")
    assert match(enrolled, photo).faces[0].label == CLEARED
    grant(enrolled, clock, "astronaut", decision=cpb.CONSENT_DECISION_REVOKED)
    # Until the outbox is delivered, revoked consent already keeps the face from matching.
    assert match(enrolled, photo).faces[0].label == UNKNOWN
    assert enrolled.consent.app.outbox.run_once() == 1
    assert face_count(enrolled) == 0
    [face] = match(enrolled, photo).faces
    assert (face.label, face.talent_id) == (UNKNOWN, "")


def test_two_talents_within_the_margin_are_ambiguous(mesh, clock):
    for talent in ("astronaut", "astronaut-twin"):
        grant(mesh, clock, talent)
        grant_usage(mesh, clock, talent)
    enroll(mesh, "astronaut", faces.astronaut())
    enroll(mesh, "astronaut-twin", faces.astronaut())
    [face] = match(mesh, faces.encode(faces.astronaut(), ".jpg")).faces
    assert (face.label, face.reason) == (POSSIBLE, common.LABEL_REASON_AMBIGUOUS)
    assert face.talent_id in {"astronaut", "astronaut-twin"}


def test_an_account_never_sees_another_accounts_faces(enrolled, clock):
    grant(enrolled, clock, "astronaut", account="acct-b")
    grant_usage(enrolled, clock, "astronaut", account="acct-b")
    [face] = match(enrolled, faces.encode(faces.astronaut(), ".jpg"), account="acct-b").faces
    assert (face.label, face.talent_id) == (UNKNOWN, "")
    stats = enrolled.matcher.stub.GetCollectionStats(
        pb.GetCollectionStatsRequest(account_id="acct-b")
    )
    assert stats.face_count == 0
    deleted = enrolled.matcher.stub.DeleteTalentFaces(
        pb.DeleteTalentFacesRequest(account_id="acct-b", talent_id="astronaut")
    )
    assert deleted.deleted_count == 0 and face_count(enrolled) == 1


def test_a_video_with_both_people_gives_two_tracks_with_time_ranges(enrolled, clock):
    grant_usage(enrolled, clock, "astronaut")
    video = faces.make_video(None, [(faces.astronaut(), 2.0), (faces.grace_hopper(), 2.0)])
    reply = match(enrolled, video)
    assert reply.kind == common.MEDIA_KIND_VIDEO and reply.content_type == "video/mp4"
    # 8 at 2 Hz, plus 2 more after each new face (6 Hz for half a second)
    assert reply.frames_sampled == 12 and abs(reply.duration_seconds - 4.0) < 0.2
    assert len(reply.faces) == 2
    astro, hopper = reply.faces  # ordered by first appearance
    assert (astro.label, astro.talent_id) == (CLEARED, "astronaut")
    assert (hopper.label, hopper.talent_id) == (UNKNOWN, "")
    assert [(r.start_seconds, r.end_seconds) for r in astro.ranges] == [(0.0, 1.5)]
    assert [(r.start_seconds, r.end_seconds) for r in hopper.ranges] == [(2.0, 3.5)]
    assert 0.0 <= astro.best_frame_seconds <= 1.5 and 2.0 <= hopper.best_frame_seconds <= 3.5


def test_detect_faces_returns_boxes_and_stores_nothing(mesh):
    group = faces.encode(faces.composite(faces.astronaut(), faces.grace_hopper()), ".png")
    reply = mesh.matcher.stub.DetectFaces(pb.DetectFacesRequest(media=group))
    assert len(reply.faces) == 2 and all(f.detection_score > 0.8 for f in reply.faces)
    assert reply.content_type == "image/png" and face_count(mesh) == 0


def test_a_deletion_on_one_replica_stops_matching_on_another(enrolled, matcher_factory, clock):
    grant_usage(enrolled, clock, "astronaut")
    consent_address = enrolled.consent.address
    other = matcher_factory(consent_address)
    photo = faces.encode(faces.astronaut(), ".jpg")
    assert match(enrolled, photo).faces[0].label == CLEARED  # builds replica one's index
    assert (
        other.stub.MatchMedia(
            pb.MatchMediaRequest(account_id=ACCOUNT, project_id=PROJECT, media=photo)
        )
        .faces[0]
        .label
        == CLEARED
    )
    other.stub.DeleteTalentFaces(
        pb.DeleteTalentFacesRequest(account_id=ACCOUNT, talent_id="astronaut")
    )
    assert match(enrolled, photo).faces[0].label == UNKNOWN


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )


BAD_MEDIA = {
    "zero-bytes": b"",
    "text-named-jpg": b"just some text, not a photo at all\n" * 3,
    "truncated-jpeg": faces.encode(faces.astronaut(), ".jpg")[:4000],
    "pixel-bomb": _png_header(30_000, 30_000),
    "gif": b"GIF89a" + b"\x00" * 64,
    "corrupt-mp4": b"\x00\x00\x00\x18ftypmp42" + b"\x00garbage" * 50,
    "corrupt-webm": b"\x1a\x45\xdf\xa3" + b"\x00" * 200,
}


@pytest.mark.parametrize("name", sorted(BAD_MEDIA))
def test_bad_media_is_refused_and_writes_nothing(enrolled, name):
    before = face_count(enrolled)
    details = expect_invalid(match, enrolled, BAD_MEDIA[name], fields={"media"})
    assert details.message
    expect_invalid(
        enrolled.matcher.stub.EnrollTalentFace,
        pb.EnrollTalentFaceRequest(
            account_id=ACCOUNT, talent_id="astronaut", image=BAD_MEDIA[name]
        ),
        fields={"image"},
    )
    assert face_count(enrolled) == before


def test_a_video_over_the_duration_limit_is_refused(mesh, matcher_factory, clock):
    short = matcher_factory(
        mesh.consent.address, MatcherSettings(limits=Limits(max_video_seconds=2.0))
    )
    video = faces.make_video(None, [(faces.astronaut(), 3.0)])
    details = expect_invalid(
        short.stub.MatchMedia,
        pb.MatchMediaRequest(account_id=ACCOUNT, project_id=PROJECT, media=video),
        fields={"media"},
    )
    assert "limit is 2.0 s" in details.message


def test_bad_requests_name_their_fields(mesh):
    expect_invalid(
        mesh.matcher.stub.MatchMedia,
        pb.MatchMediaRequest(account_id="", project_id="bad project", media=b""),
        fields={"account_id", "project_id", "media"},
    )
    expect_invalid(
        mesh.matcher.stub.ListTalentFaces,
        pb.ListTalentFacesRequest(account_id=ACCOUNT, talent_id="x", page_size=1001),
        fields={"page_size"},
    )
    expect_invalid(
        mesh.matcher.stub.ListEnrolledTalents,
        pb.ListEnrolledTalentsRequest(page_token="bm90LWEtdG9rZW4"),
        fields={"page_token"},
    )


def test_enrolled_talents_are_listed_for_reconciliation(mesh, clock):
    for account in ("acct-a", "acct-b"):
        for talent in ("astronaut", "hopper"):
            grant(mesh, clock, talent, account=account)
            image = faces.astronaut() if talent == "astronaut" else faces.grace_hopper()
            enroll(mesh, talent, image, account=account)
    seen, token = [], ""
    while True:
        page = mesh.matcher.stub.ListEnrolledTalents(
            pb.ListEnrolledTalentsRequest(page_size=3, page_token=token)
        )
        seen += [(t.account_id, t.talent_id, t.face_count) for t in page.talents]
        token = page.next_page_token
        if not token:
            break
    # by account, then by the talent's keyed hash (the matcher stores no talent id in clear)
    assert [account for account, _, _ in seen] == ["acct-a", "acct-a", "acct-b", "acct-b"]
    assert sorted(seen) == [
        ("acct-a", "astronaut", 1),
        ("acct-a", "hopper", 1),
        ("acct-b", "astronaut", 1),
        ("acct-b", "hopper", 1),
    ]


def test_a_deletion_on_another_replica_leaves_this_replicas_memory_within_a_sweep(
    enrolled, matcher_factory, clock
):
    grant_usage(enrolled, clock, "astronaut")
    other = matcher_factory(enrolled.consent.address)
    match(enrolled, faces.encode(faces.astronaut(), ".jpg"))  # replica one caches the vector
    indexes = enrolled.matcher.app.indexes
    assert indexes.for_account(ACCOUNT).size == 1
    other.stub.DeleteTalentFaces(
        pb.DeleteTalentFacesRequest(account_id=ACCOUNT, talent_id="astronaut")
    )
    assert indexes.refresh_stale() == 1  # what the matcher's periodic sweep runs
    assert indexes._cache[ACCOUNT].index.size == 0
    assert indexes.refresh_stale() == 0


# -- video tracks that follow people (synthetic clips from the bundled faces) ------------------

BLANK = np.zeros((360, 640, 3), np.uint8)


@pytest.fixture
def both_cleared(mesh, clock):
    """The astronaut and Grace Hopper enrolled, each with consent for the project."""
    for talent, image in (("astronaut", faces.astronaut()), ("grace-hopper", faces.grace_hopper())):
        grant(mesh, clock, talent)
        grant_usage(mesh, clock, talent)
        enroll(mesh, talent, image)
    return mesh


def spans(face) -> list[tuple[float, float]]:
    return [(round(r.start_seconds, 2), round(r.end_seconds, 2)) for r in face.ranges]


def test_two_people_who_swap_places_keep_their_own_tracks_and_labels(both_cleared):
    # Each face lands where the other was, so position alone would swap the tracks.
    astronaut, hopper = faces.heads()
    side_by_side, swapped = np.hstack([astronaut, hopper]), np.hstack([hopper, astronaut])
    video = faces.make_video(None, [(side_by_side, 2.0), (swapped, 2.0)])

    reply = match(both_cleared, video)

    assert len(reply.faces) == 2
    by_talent = {face.talent_id: face for face in reply.faces}
    assert set(by_talent) == {"astronaut", "grace-hopper"}
    for face in reply.faces:
        assert face.label == CLEARED
        assert spans(face) == [(0.0, 3.5)]  # one range each: never handed to the other
    # each box is where that person was at the frame that decided the label
    for face in reply.faces:
        on_left = face.box.x < 320
        assert on_left == ((face.best_frame_seconds < 2.0) == (face.talent_id == "astronaut"))


def test_a_person_on_screen_for_one_second_is_seen_in_three_frames_and_reported(both_cleared):
    # On screen from 1.2 s to 2.2 s: the 2 Hz grid alone sees her at 1.52 and 2.0 only.
    video = faces.make_video(
        None, [(BLANK, 1.2), (faces.grace_hopper(), 1.0), (BLANK, 1.0)], fps=25
    )
    matcher = both_cleared.matcher.app.matcher

    [face] = matcher.match(ACCOUNT, PROJECT, video).faces
    without_bursts = dataclasses.replace(matcher.limits, video_burst_rate_hz=2.0)
    matcher.limits, limits = without_bursts, matcher.limits
    try:
        [sparse] = matcher.match(ACCOUNT, PROJECT, video).faces
    finally:
        matcher.limits = limits

    assert face.frames_seen >= 3 and sparse.frames_seen == 2
    assert (face.label.label, face.label.talent_id) == (CLEARED, "grace-hopper")
    assert face.ranges[0][0] >= 1.2 and face.ranges[-1][1] < 2.2
    assert 1.2 <= face.best_frame_seconds < 2.2


def test_a_face_that_leaves_and_returns_is_one_track_with_two_ranges(both_cleared):
    video = faces.make_video(
        None, [(faces.astronaut(), 1.5), (BLANK, 2.0), (faces.astronaut(), 1.5)]
    )

    [face] = match(both_cleared, video).faces

    assert (face.label, face.talent_id) == (CLEARED, "astronaut")
    assert spans(face) == [(0.0, 1.0), (3.5, 4.5)]


def test_no_file_appears_in_the_temp_dir_while_a_video_is_matched(
    both_cleared, tmp_path, monkeypatch
):
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.setenv("TMPDIR", str(root))
    engine = both_cleared.matcher.app.matcher.engine
    detect, seen = engine.detect, []

    def detect_and_look(image):
        seen.append(sorted(os.listdir(root)))
        return detect(image)

    monkeypatch.setattr(engine, "detect", detect_and_look)
    video = faces.make_video(None, [(faces.astronaut(), 1.0)])

    [face] = match(both_cleared, video).faces

    assert face.talent_id == "astronaut"
    assert len(seen) >= 2 and all(listing == [] for listing in seen)
    assert os.listdir(root) == []


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("HEIF", "image/heic"), ("TIFF", "image/tiff"), ("BMP", "image/bmp")],
)
def test_heic_tiff_and_bmp_photos_are_matched(both_cleared, fmt, content_type):
    reply = match(both_cleared, faces.encode_pillow(faces.grace_hopper(), fmt))

    assert reply.content_type == content_type and (reply.width, reply.height) == (512, 600)
    [face] = reply.faces
    assert (face.label, face.talent_id) == (CLEARED, "grace-hopper")


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_boxes_are_reported_as_the_viewer_sees_the_photo(both_cleared, fmt, orientation):
    upright = faces.composite(faces.astronaut(), faces.grace_hopper())
    expected = match(both_cleared, faces.encode(upright, ".png"))

    reply = match(both_cleared, faces.encode_pillow(upright, fmt, orientation=orientation))

    assert (reply.width, reply.height) == (expected.width, expected.height)
    assert [f.talent_id for f in reply.faces] == [f.talent_id for f in expected.faces]
    for got, want in zip(reply.faces, expected.faces, strict=True):
        assert abs(got.box.x - want.box.x) <= 6 and abs(got.box.y - want.box.y) <= 6
        assert abs(got.box.width - want.box.width) <= 6


@pytest.mark.parametrize(("codec", "suffix"), [("VP80", ".webm"), ("mp4v", ".mkv")])
def test_a_recording_without_a_declared_duration_is_matched(both_cleared, codec, suffix):
    recorded = faces.make_video(None, [(faces.astronaut(), 2.0)], codec=codec, suffix=suffix)

    reply = match(both_cleared, faces.without_duration(recorded))

    assert abs(reply.duration_seconds - 2.0) < 0.01
    [face] = reply.faces
    assert (face.label, face.talent_id) == (CLEARED, "astronaut")


def test_a_phone_video_is_matched_upright_with_boxes_in_the_viewers_frame(both_cleared):
    reply = match(both_cleared, faces.filmed_upright_on_a_phone(faces.astronaut(), 1.0))

    assert (reply.width, reply.height) == (360, 640)
    [face] = reply.faces
    assert (face.label, face.talent_id) == (CLEARED, "astronaut")
    assert face.box.x + face.box.width <= 360 and face.box.height > face.box.width * 0.9
