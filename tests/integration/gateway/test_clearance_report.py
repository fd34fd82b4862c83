"""Safe-by-default review and the clearance report against a real gateway and mesh: approving a
face that is not CLEARED needs `confirm_not_cleared` (else INVALID_ARGUMENT naming it, and
nothing is recorded); decisions carry the decider's name and results the file name;
ListClearanceReport gives every media and face with its current decision and release form, in
pages, as the caller's role sees them (an uploader: no talent, label or decision)."""

from __future__ import annotations

from mixip.common.v1 import common_pb2 as common
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from tests.support import faces
from tests.support.gateway_calls import PROJECT, consent, decide, group_photo, invite, upload
from tests.support.status import expect_invalid

APPROVED = common.REVIEW_DECISION_APPROVED_FOR_RELEASE
BLOCKED = common.REVIEW_DECISION_BLOCKED


def by_label(media: pb.UploadMediaResponse) -> dict[int, int]:
    return {f.label: f.face_index for f in media.faces}


def decisions(gw, meta, media_id) -> list[pb.ReviewDecisionRecord]:
    return list(
        gw.stub.GetMediaResults(
            pb.GetMediaResultsRequest(media_id=media_id), metadata=meta
        ).decisions
    )


def report(gw, meta, page_size=0) -> tuple[pb.Project, list[pb.ClearanceReportMedia]]:
    project, media, token = pb.Project(), [], ""
    while True:
        reply = gw.stub.ListClearanceReport(
            pb.ListClearanceReportRequest(
                project_id=PROJECT, page_size=page_size, page_token=token
            ),
            metadata=meta,
        )
        project, media, token = reply.project, media + list(reply.media), reply.next_page_token
        if not token:
            return project, media


def test_approving_a_face_that_is_not_cleared_needs_the_confirmation(gateway, studio):
    _, meta = studio
    media = upload(gateway, meta, group_photo(), filename="group.jpg")
    labels = by_label(media)
    unknown, cleared = labels[common.FACE_LABEL_UNKNOWN], labels[common.FACE_LABEL_CLEARED]
    refused = expect_invalid(
        decide,
        gateway,
        meta,
        media.media_id,
        unknown,
        APPROVED,
        confirm_not_cleared=False,
        fields={"confirm_not_cleared"},
    )
    assert refused.reason == "NOT_CLEARED_UNCONFIRMED"
    assert refused.metadata["label"] == "UNKNOWN" and "not CLEARED" in refused.message
    assert decisions(gateway, meta, media.media_id) == []  # nothing recorded
    # blocking needs no confirmation, nor approving a CLEARED face; a confirmed approval passes
    decide(gateway, meta, media.media_id, unknown, BLOCKED, confirm_not_cleared=False)
    decide(gateway, meta, media.media_id, cleared, APPROVED, confirm_not_cleared=False)
    decide(gateway, meta, media.media_id, unknown, APPROVED, confirm_not_cleared=True)
    assert [(d.face_index, d.decision) for d in decisions(gateway, meta, media.media_id)] == [
        (unknown, BLOCKED),
        (cleared, APPROVED),
        (unknown, APPROVED),
    ]


def test_decisions_name_the_person_and_results_the_file_name(gateway, studio):
    _, meta = studio
    reviewer_id, reviewer = gateway.new_account("Rita Reviewer")
    media = upload(gateway, meta, group_photo(), filename="scene 12 take 3.jpg")
    invite(gateway, meta, reviewer_id, pb.PROJECT_ROLE_REVIEWER)
    made = decide(gateway, reviewer, media.media_id, 0, BLOCKED)
    assert made.decided_by_name == "Rita Reviewer"
    reply = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media.media_id), metadata=meta
    )
    assert reply.filename == "scene 12 take 3.jpg"
    assert [d.decided_by_name for d in reply.decisions] == ["Rita Reviewer"]


def test_the_report_gives_every_face_its_decision_and_release_form_as_the_role_sees_it(
    gateway, studio, clock
):
    owner_id, meta = studio
    reviewer_id, reviewer = gateway.new_account("Rita Reviewer")
    uploader_id, uploader = gateway.new_account("Uma Uploader")
    group = upload(gateway, meta, group_photo(), filename="group.jpg")
    invite(gateway, meta, reviewer_id, pb.PROJECT_ROLE_REVIEWER)
    invite(gateway, meta, uploader_id, pb.PROJECT_ROLE_UPLOADER)
    clock.advance(minutes=1)
    alone = upload(gateway, meta, faces.encode(faces.astronaut()), filename="alone.jpg")
    clock.advance(minutes=1)
    own = upload(gateway, uploader, faces.encode(faces.astronaut()), filename="own.jpg")
    cleared = by_label(group)[common.FACE_LABEL_CLEARED]
    decide(gateway, reviewer, group.media_id, cleared, APPROVED)

    project, media = report(gateway, reviewer, page_size=1)  # three pages
    assert (project.display_name or project.project_id, project.role) == (
        PROJECT,
        pb.PROJECT_ROLE_REVIEWER,
    )
    assert [m.media.filename for m in media] == ["own.jpg", "alone.jpg", "group.jpg"]
    faces_of = {m.media.media_id: list(m.faces) for m in media}
    [decided] = [f for f in faces_of[group.media_id] if f.result.face_index == cleared]
    assert decided.decision.decided_by_name == "Rita Reviewer"
    assert decided.release_form == pb.RELEASE_FORM_STATUS_SIGNED
    [stranger] = [f for f in faces_of[group.media_id] if f.result.face_index != cleared]
    assert not stranger.HasField("decision")
    assert stranger.release_form == pb.RELEASE_FORM_STATUS_UNSPECIFIED  # no talent

    # the release form is the ledger's now: revoked since the match
    consent(
        gateway,
        meta,
        clock,
        "astronaut",
        cpb.CONSENT_SCOPE_FACE_USAGE,
        decision=cpb.CONSENT_DECISION_REVOKED,
        project=PROJECT,
    )
    _, media = report(gateway, meta)
    assert {f.release_form for m in media for f in m.faces if f.result.talent_id} == {
        pb.RELEASE_FORM_STATUS_REVOKED
    }

    # an uploader: its own upload only, nothing that comes from the collection
    _, media = report(gateway, uploader)
    assert [m.media.media_id for m in media] == [own.media_id]
    assert b"astronaut" not in b"".join(m.SerializeToString() for m in media)
    assert all(
        f.result.label == 0 and not f.HasField("decision") and f.release_form == 0
        for m in media
        for f in m.faces
    )
    assert owner_id not in {m.media.uploaded_by_account_id for m in media}
    assert alone.media_id not in {m.media.media_id for m in media}
