"""Projects and collaborators: creation, invitations, how a project id resolves for a caller,
and the conflicts that keep one id naming one project per account (docs/projects.md)."""

from __future__ import annotations

import re

import grpc

from gateway.store import MediaRow
from mixip.common.v1 import common_pb2 as common
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.checkpoints import no_checkpoint
from mixip.runtime.paging import encode_page_token
from tests.support import faces
from tests.support.checkpoints import Checkpoints, Outcome
from tests.support.gateway_calls import PROJECT, group_photo, invite, upload
from tests.support.status import expect_error, expect_invalid

REVIEWER = pb.PROJECT_ROLE_REVIEWER
UPLOADER = pb.PROJECT_ROLE_UPLOADER
VIEWER = pb.PROJECT_ROLE_VIEWER


def create(gw, meta, project_id="", name="Film") -> pb.Project:
    return gw.stub.CreateProject(
        pb.CreateProjectRequest(project_id=project_id, display_name=name), metadata=meta
    ).project


def listed(gw, meta, page_size=0) -> list[pb.Project]:
    projects, token = [], ""
    while True:
        reply = gw.stub.ListProjects(
            pb.ListProjectsRequest(page_size=page_size, page_token=token), metadata=meta
        )
        projects += reply.projects
        token = reply.next_page_token
        if not token:
            return projects


def test_creating_a_project_is_idempotent_and_an_empty_id_is_generated(gateway, clock):
    account, meta = gateway.new_account("studio")
    made = create(gateway, meta, "film-1", "Film One")
    assert (made.project_id, made.display_name, made.owner_account_id, made.role) == (
        "film-1",
        "Film One",
        account,
        pb.PROJECT_ROLE_OWNER,
    )
    clock.advance(minutes=1)
    again = create(gateway, meta, "film-1", "Another name")
    assert again == made  # the existing project, unchanged
    generated = create(gateway, meta, "", "Untitled")
    assert re.fullmatch(r"prj_[0-9a-f]{24}", generated.project_id)
    assert [p.project_id for p in listed(gateway, meta)] == ["film-1", generated.project_id]
    expect_invalid(
        gateway.stub.CreateProject,
        pb.CreateProjectRequest(project_id="bad id", display_name=""),
        metadata=meta,
        fields={"project_id", "display_name"},
    )


def test_an_owners_first_upload_creates_the_project(gateway, studio):
    account, meta = studio
    upload(gateway, meta, group_photo(), project="film-9")
    [project] = [p for p in listed(gateway, meta) if p.project_id == "film-9"]
    assert (project.display_name, project.owner_account_id) == ("film-9", account)


def test_projects_list_own_first_then_invited_each_in_creation_order(gateway, clock):
    owner, owner_meta = gateway.new_account("owner")
    other, other_meta = gateway.new_account("other")
    member, member_meta = gateway.new_account("member")
    for name in ("b-2", "a-1"):
        clock.advance(seconds=1)
        create(gateway, owner_meta, name)
    clock.advance(seconds=1)
    create(gateway, other_meta, "shared")
    for name in ("mine-2", "mine-1"):
        clock.advance(seconds=1)
        create(gateway, member_meta, name)
    invite(gateway, other_meta, member, VIEWER, project="shared")
    invite(gateway, owner_meta, member, REVIEWER, project="a-1")
    invite(gateway, owner_meta, member, UPLOADER, project="b-2")
    expected = [
        ("mine-2", member, pb.PROJECT_ROLE_OWNER),
        ("mine-1", member, pb.PROJECT_ROLE_OWNER),
        ("b-2", owner, UPLOADER),
        ("a-1", owner, REVIEWER),
        ("shared", other, VIEWER),
    ]
    for page_size in (0, 1, 2):
        got = [
            (p.project_id, p.owner_account_id, p.role)
            for p in listed(gateway, member_meta, page_size)
        ]
        assert got == expected, page_size
    assert [p.project_id for p in listed(gateway, owner_meta)] == ["b-2", "a-1"]


def test_invitations_change_roles_and_removal_puts_the_project_out_of_scope(gateway, studio):
    _, meta = studio
    media_id = upload(gateway, meta, group_photo()).media_id
    member, member_meta = gateway.new_account("crew")
    first = invite(gateway, meta, member, VIEWER)
    assert (first.project_id, first.account_id, first.role) == (PROJECT, member, VIEWER)
    assert first.invited_by_key_id
    results = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media_id), metadata=member_meta
    )
    assert results.media.media_id == media_id
    again = invite(gateway, meta, member, REVIEWER)
    assert again.role == REVIEWER
    listing = gateway.stub.ListCollaborators(
        pb.ListCollaboratorsRequest(project_id=PROJECT), metadata=meta
    ).collaborators
    assert [(c.account_id, c.role) for c in listing] == [(member, REVIEWER)]

    removed = gateway.stub.RemoveCollaborator(
        pb.RemoveCollaboratorRequest(project_id=PROJECT, account_id=member), metadata=meta
    ).collaborator
    assert removed.role == REVIEWER
    for call, request in (
        (gateway.stub.GetMediaResults, pb.GetMediaResultsRequest(media_id=media_id)),
        (gateway.stub.ListMedia, pb.ListMediaRequest(project_id=PROJECT)),
    ):
        expect_error(grpc.StatusCode.NOT_FOUND, call, request, metadata=member_meta)
    assert listed(gateway, member_meta) == []
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.RemoveCollaborator,
        pb.RemoveCollaboratorRequest(project_id=PROJECT, account_id=member),
        metadata=meta,
    )


def test_collaborators_page_in_invitation_order(gateway, clock):
    _, meta = gateway.new_account("owner")
    create(gateway, meta, PROJECT)
    members = []
    for name in ("m1", "m2", "m3"):
        account, _ = gateway.new_account(name)
        clock.advance(seconds=1)
        invite(gateway, meta, account, VIEWER)
        members.append(account)
    got, token = [], ""
    while True:
        reply = gateway.stub.ListCollaborators(
            pb.ListCollaboratorsRequest(project_id=PROJECT, page_size=2, page_token=token),
            metadata=meta,
        )
        got += [c.account_id for c in reply.collaborators]
        token = reply.next_page_token
        if not token:
            break
    assert got == members
    first = gateway.stub.ListCollaborators(
        pb.ListCollaboratorsRequest(project_id=PROJECT, page_size=1), metadata=meta
    )
    create(gateway, meta, "film-2")
    expect_invalid(
        gateway.stub.ListCollaborators,
        pb.ListCollaboratorsRequest(project_id="film-2", page_token=first.next_page_token),
        metadata=meta,
        fields={"page_token"},
    )


def test_bad_invitations_are_refused_with_their_fields_and_write_nothing(gateway, clock):
    owner, meta = gateway.new_account("owner")
    create(gateway, meta, PROJECT)
    member, _ = gateway.new_account("crew")
    for role in (pb.PROJECT_ROLE_UNSPECIFIED, pb.PROJECT_ROLE_OWNER, 99):
        expect_invalid(
            gateway.stub.InviteCollaborator,
            pb.InviteCollaboratorRequest(project_id=PROJECT, account_id=member, role=role),
            metadata=meta,
            fields={"role"},
        )
    expect_invalid(
        gateway.stub.InviteCollaborator,
        pb.InviteCollaboratorRequest(project_id=PROJECT, account_id=owner, role=VIEWER),
        metadata=meta,
        fields={"account_id"},
    )
    expect_invalid(
        gateway.stub.InviteCollaborator,
        pb.InviteCollaboratorRequest(project_id="", account_id="", role=VIEWER),
        metadata=meta,
        fields={"project_id", "account_id"},
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        invite,
        gateway,
        meta,
        "acct_0000000000000000",
        VIEWER,
    )
    expect_error(grpc.StatusCode.NOT_FOUND, invite, gateway, meta, member, VIEWER, project="nope")
    assert not gateway.stub.ListCollaborators(
        pb.ListCollaboratorsRequest(project_id=PROJECT), metadata=meta
    ).collaborators


def _accept(gateway, meta, owner, project=PROJECT):
    return gateway.stub.AcceptInvitation(
        pb.AcceptInvitationRequest(project_id=project, owner_account_id=owner), metadata=meta
    ).project


def test_one_project_id_names_one_project_for_an_account(gateway):
    a, meta_a = gateway.new_account("a")
    b, meta_b = gateway.new_account("b")
    for meta in (meta_a, meta_b):
        create(gateway, meta, PROJECT)
    # an invitation is never refused for what the invitee holds: the inviter learns nothing
    invite(gateway, meta_a, b, VIEWER, accept=False)
    # accepting it would make the id name two projects: refused, to the invitee only
    taken = expect_error(grpc.StatusCode.FAILED_PRECONDITION, _accept, gateway, meta_b, a)
    assert taken.reason == "PROJECT_ID_TAKEN" and a not in taken.message
    # two owners may invite one account to the same id; it accepts one of them
    d, meta_d = gateway.new_account("d")
    invite(gateway, meta_a, d, VIEWER, accept=False)
    invite(gateway, meta_b, d, REVIEWER, accept=False)
    pending = gateway.stub.ListProjects(pb.ListProjectsRequest(), metadata=meta_d).projects
    assert sorted((p.owner_account_id, p.pending) for p in pending) == sorted(
        [(a, True), (b, True)]
    )
    assert _accept(gateway, meta_d, a).role == VIEWER
    taken = expect_error(grpc.StatusCode.FAILED_PRECONDITION, _accept, gateway, meta_d, b)
    assert taken.reason == "PROJECT_ID_TAKEN"
    # a collaborator cannot create (nor upload into a new) project with an accepted id
    taken = expect_error(grpc.StatusCode.FAILED_PRECONDITION, create, gateway, meta_d, PROJECT)
    assert taken.reason == "PROJECT_ID_TAKEN" and a not in taken.message
    # an unknown invitation is NOT_FOUND
    expect_error(grpc.StatusCode.NOT_FOUND, _accept, gateway, meta_d, a, "nope")


def test_a_pending_invitation_gives_no_access_and_captures_no_upload(gateway, studio):
    """Nobody can draw another account's uploads into its project by inviting it: until the
    invited account accepts, the id still names the invited account's own project."""
    owner, meta = studio
    create(gateway, meta, PROJECT)
    media = upload(gateway, meta, group_photo())
    victim, victim_meta = gateway.new_account("victim")
    invite(gateway, meta, victim, UPLOADER, accept=False)
    [seen] = gateway.stub.ListProjects(pb.ListProjectsRequest(), metadata=victim_meta).projects
    assert seen.pending and seen.owner_account_id == owner
    reply = upload(gateway, victim_meta, faces.encode(faces.astronaut()), project=PROJECT)
    with gateway.app.db.read() as session:
        assert session.get(MediaRow, reply.media_id).account_id == victim
    assert all(f.talent_id == "" for f in reply.faces)  # not matched against the owner's talents
    listed = gateway.stub.ListMedia(pb.ListMediaRequest(project_id=PROJECT), metadata=meta).media
    assert reply.media_id not in {m.media_id for m in listed}
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.GetMediaResults,
        pb.GetMediaResultsRequest(media_id=media.media_id),
        metadata=victim_meta,
    )
    # the victim's own project now holds the id: accepting is refused, to the victim only
    taken = expect_error(grpc.StatusCode.FAILED_PRECONDITION, _accept, gateway, victim_meta, owner)
    assert taken.reason == "PROJECT_ID_TAKEN"


def test_a_removed_uploaders_retry_reads_nothing_and_creates_nothing(gateway, studio):
    _, meta = studio
    create(gateway, meta, PROJECT)
    crew, crew_meta = gateway.new_account("crew")
    invite(gateway, meta, crew, UPLOADER)
    upload(gateway, crew_meta, group_photo(), request_id="take-1")
    gateway.stub.RemoveCollaborator(
        pb.RemoveCollaboratorRequest(project_id=PROJECT, account_id=crew), metadata=meta
    )
    reused = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        upload,
        gateway,
        crew_meta,
        group_photo(),
        request_id="take-1",
    )
    assert reused.reason == "IDEMPOTENCY_KEY_REUSED"
    own = gateway.stub.ListProjects(pb.ListProjectsRequest(), metadata=crew_meta).projects
    assert list(own) == []  # the refused retry created no project of the crew's


def test_an_uploaders_media_belong_to_the_owner_and_match_the_owners_talents(gateway, studio):
    owner, meta = studio  # owns film-1, with the astronaut enrolled and consented
    create(gateway, meta, PROJECT)
    uploader, uploader_meta = gateway.new_account("crew")
    invite(gateway, meta, uploader, UPLOADER)
    reply = upload(gateway, uploader_meta, group_photo(), request_id="crew-1")
    owners = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=reply.media_id), metadata=meta
    ).media.faces
    labels = sorted((f.label, f.talent_id) for f in owners)
    assert labels == [(common.FACE_LABEL_CLEARED, "astronaut"), (common.FACE_LABEL_UNKNOWN, "")]
    # the uploader is told the faces, never their labels (docs/projects.md)
    assert [f.box for f in reply.faces] == [f.box for f in owners]
    assert {(f.label, f.talent_id) for f in reply.faces} == {(common.FACE_LABEL_UNSPECIFIED, "")}
    with gateway.app.db.read() as session:
        row = session.get(MediaRow, reply.media_id)
        assert (row.account_id, row.uploaded_by_account_id) == (owner, uploader)
    # the events are in the owner's chain, with the uploader's key as actor
    owner_events = gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=meta).events
    assert {e.media_id for e in owner_events} == {reply.media_id}
    assert gateway.stub.VerifyAuditLog(pb.VerifyAuditLogRequest(), metadata=meta).ok
    own = gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=uploader_meta)
    assert list(own.events) == []
    # a retry with the uploader's request id returns it (as the uploader sees it); the
    # owner's own use of the same request id is another upload
    again = upload(gateway, uploader_meta, group_photo(), request_id="crew-1")
    assert (again.media_id, again.faces) == (reply.media_id, reply.faces)
    mine = upload(gateway, meta, group_photo(), request_id="crew-1")
    assert mine.media_id != reply.media_id
    # an uploader sees only its own uploads
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        gateway.stub.GetMediaResults,
        pb.GetMediaResultsRequest(media_id=mine.media_id),
        metadata=uploader_meta,
    )
    listing = gateway.stub.ListMedia(
        pb.ListMediaRequest(project_id=PROJECT), metadata=uploader_meta
    )
    assert [(m.media_id, m.uploaded_by_account_id) for m in listing.media] == [
        (reply.media_id, uploader)
    ]
    assert (
        len(gateway.stub.ListMedia(pb.ListMediaRequest(project_id=PROJECT), metadata=meta).media)
        == 2
    )


FORGED_TIMES = [
    "9" * 128,  # a well-formed identifier, far past any calendar
    "9" * 19,  # fits a BIGINT, not a datetime
    "253402300800000000",  # 10000-01-01: one past the calendar
    "-1",  # negative
    "0x10",
]


def test_forged_page_tokens_with_impossible_times_are_invalid_not_internal(gateway):
    """A page token is the client's to forge: one carrying the right filters and a time no
    listing could have issued is INVALID_ARGUMENT on page_token, never an overflow."""
    _, meta = gateway.new_account("owner")
    create(gateway, meta, PROJECT)
    for moment in FORGED_TIMES:
        forged = [
            (
                gateway.stub.ListProjects,
                pb.ListProjectsRequest(page_token=encode_page_token(["0", moment, "a", "b"], {})),
            ),
            (
                gateway.stub.ListCollaborators,
                pb.ListCollaboratorsRequest(
                    project_id=PROJECT,
                    page_token=encode_page_token([moment, "acct_x"], {"p": PROJECT}),
                ),
            ),
            (
                gateway.stub.ListMedia,
                pb.ListMediaRequest(
                    project_id=PROJECT,
                    page_token=encode_page_token(
                        [moment, "med_x"], {"p": PROJECT, "l": 0, "u": False}
                    ),
                ),
            ),
        ]
        for call, request in forged:
            expect_invalid(call, request, metadata=meta, fields={"page_token"})
    # the same tokens with a time that could have been issued are accepted
    accepted = gateway.stub.ListMedia(
        pb.ListMediaRequest(
            project_id=PROJECT,
            page_token=encode_page_token(["0", "med_x"], {"p": PROJECT, "l": 0, "u": False}),
        ),
        metadata=meta,
    )
    assert list(accepted.media) == []


def test_a_member_removed_or_made_a_viewer_while_its_upload_runs_keeps_nothing(gateway, studio):
    """The project is read before the bytes come (with the key, in one read) and checked again
    in the upload's commit: access lost meanwhile keeps no media, no results, no events."""
    _, meta = studio
    create(gateway, meta, PROJECT)
    member, member_meta = gateway.new_account("crew")
    invite(gateway, meta, member, UPLOADER)
    hooks = Checkpoints()
    gateway.app.uploads.checkpoint = hooks
    try:
        for lose_access, code in (
            (lambda: invite(gateway, meta, member, VIEWER), grpc.StatusCode.PERMISSION_DENIED),
            (
                lambda: gateway.stub.RemoveCollaborator(
                    pb.RemoveCollaboratorRequest(project_id=PROJECT, account_id=member),
                    metadata=meta,
                ),
                grpc.StatusCode.PERMISSION_DENIED,
            ),
        ):
            started = hooks.pause_at("upload.started")  # admitted, not yet matched
            running = Outcome(lambda: upload(gateway, member_meta, group_photo()), started)
            started.reached()
            lose_access()
            started.release()
            error = running.join().error
            assert isinstance(error, grpc.RpcError) and error.code() == code
            invite(gateway, meta, member, UPLOADER)  # back, for the next case
    finally:
        gateway.app.uploads.checkpoint = no_checkpoint
    with gateway.app.db.read() as session:
        assert session.query(MediaRow).count() == 0
    assert list(gateway.app.media_store.root.glob("??/*")) == []
    assert not gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=meta).events
