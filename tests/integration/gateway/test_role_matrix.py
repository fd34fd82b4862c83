"""The role matrix: every method of GatewayService, called on the owner's project, media or
talent by the owner, each collaborator role, a reviewer of another project of the same owner,
and a stranger. Project- and media-scoped calls answer by role (NOT_FOUND out of scope,
PERMISSION_DENIED in scope but not for the role); account-bound calls always answer with the
caller's own account's data, never the owner's (docs/projects.md). What each role sees in the
results it may read is the second table of docs/projects.md (gateway/role_views.py).

The methods come from the service descriptor: a new RPC without a row fails this test. The
rows run in one order on one mesh per database (later rows rely on what earlier ones left:
destructive calls come last, and within a row the owner calls last)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from gateway.store import UploadSessionRow
from mixip.common.v1 import common_pb2 as common
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.tlog.checkpoint import Checkpoint, open_checkpoint
from mixip.tlog.merkle import leaf_hash, tree_hash
from mixip.tlog.note import Ed25519Verifier
from mixip.tlog.proof import verify_consistency, verify_inclusion
from mixip.web.app import create_app
from mixip.web.sessions import Sessions
from tests.support import faces
from tests.support.gateway_calls import (
    PROJECT,
    consent,
    decide,
    enroll,
    finished_job,
    group_photo,
    invite,
    start_job,
    upload,
)
from tests.support.status import expect_error
from tests.support.web import page, serving

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
TAKEN = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT

CALLERS = ("reviewer", "uploader", "viewer", "other_reviewer", "stranger", "owner")
COLLABORATORS = ("reviewer", "uploader", "viewer")
TALENT = "astronaut"
OTHER_PROJECT = "film-2"


@dataclass
class World:
    gw: Any
    clock: Any
    accounts: dict[str, str] = field(default_factory=dict)
    metas: dict[str, tuple] = field(default_factory=dict)
    media_id: str = ""  # the owner's upload
    uploader_media_id: str = ""  # the uploader's upload in the owner's project
    guest: str = ""  # an account the owner invites and removes
    webhook_id: str = ""  # the owner's webhook
    session_id: str = ""  # the owner's upload session (_owners_session)
    job_id: str = ""  # the owner's job (ended), in the owner's project
    uploader_job_id: str = ""  # the uploader's job (ended), in the owner's project
    job_media: set[str] = field(default_factory=set)  # the media they made


def by_role(owner=OK, reviewer=OK, uploader=OK, viewer=OK, outsider=NOT_FOUND):
    return {
        "owner": owner,
        "reviewer": reviewer,
        "uploader": uploader,
        "viewer": viewer,
        "other_reviewer": outsider,
        "stranger": outsider,
    }


EVERYONE_OK = by_role(outsider=OK)
# What is bound to the owner's account (not a project): nobody else finds it
OWNERS_OWN = by_role(reviewer=NOT_FOUND, uploader=NOT_FOUND, viewer=NOT_FOUND)


@dataclass(frozen=True)
class Row:
    method: str
    call: Callable[[World, str], Any]
    expect: dict[str, grpc.StatusCode]
    # Checks an OK reply (raises AssertionError): what the caller got is its own.
    check: Callable[[World, str, Any], None] | None = None


def _setup(gw, clock) -> World:
    world = World(gw, clock)
    for name in CALLERS:
        world.accounts[name], world.metas[name] = gw.new_account(name)
    world.guest, _ = gw.new_account("guest")
    owner = world.metas["owner"]
    consent(gw, owner, clock, TALENT, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gw, owner, clock, TALENT, cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
    enroll(gw, owner, TALENT, faces.astronaut())
    for project in (PROJECT, OTHER_PROJECT):
        gw.stub.CreateProject(
            pb.CreateProjectRequest(project_id=project, display_name=project), metadata=owner
        )
    for role in COLLABORATORS:
        invite(gw, owner, world.accounts[role], getattr(pb, f"PROJECT_ROLE_{role.upper()}"))
    invite(gw, owner, world.accounts["other_reviewer"], pb.PROJECT_ROLE_REVIEWER, OTHER_PROJECT)
    world.media_id = upload(gw, owner, group_photo()).media_id
    clock.advance(seconds=1)
    uploaded = upload(gw, world.metas["uploader"], faces.encode(faces.astronaut()))
    world.uploader_media_id = uploaded.media_id
    for name, attr in (("owner", "job_id"), ("uploader", "uploader_job_id")):
        clock.advance(seconds=1)
        started = start_job(gw, world.metas[name], faces.encode(faces.astronaut()))
        assert finished_job(gw, world.metas[name], started.job_id).state == pb.JOB_STATE_DONE
        setattr(world, attr, started.job_id)
        world.job_media.add(started.media_id)
    return world


def _unary(method: str, request) -> Callable[[World, str], Any]:
    def call(world: World, caller: str) -> Any:
        return getattr(world.gw.stub, method)(request, metadata=world.metas[caller])

    return call


# -- checks of OK replies -------------------------------------------------------------------


def _sees_the_owners_media(world: World, caller: str, reply) -> None:
    assert reply.media.media_id == world.media_id
    assert any(f.talent_id == TALENT for f in reply.media.faces)


def _lists_project_media(world: World, caller: str, reply) -> None:
    listed = {m.media_id for m in reply.media} - world.job_media
    if caller == "uploader":
        assert listed == {world.uploader_media_id}, "an uploader sees its own uploads only"
    else:
        assert listed == {world.media_id, world.uploader_media_id}


def _reports_project_media(world: World, caller: str, reply) -> None:
    listed = {m.media.media_id for m in reply.media} - world.job_media
    faces = [f for m in reply.media for f in m.faces]
    if caller == "uploader":  # its own uploads, and nothing that comes from the collection
        assert listed == {world.uploader_media_id}
        assert TALENT.encode() not in reply.SerializeToString()
        assert all(f.result.label == 0 and f.release_form == 0 for f in faces)
    else:
        assert listed == {world.media_id, world.uploader_media_id}
        assert any(f.result.talent_id == TALENT for f in faces)


def _the_owners_job(world: World, caller: str, reply) -> None:
    job = reply.job if hasattr(reply, "job") else reply[-1].job  # WatchJob: its last event
    assert (job.job_id, job.state) == (world.job_id, pb.JOB_STATE_DONE)
    assert job.started_by_account_id == world.accounts["owner"]
    assert TALENT.encode() not in job.SerializeToString()


def _lists_project_jobs(world: World, caller: str, reply) -> None:
    listed = {j.job_id for j in reply.jobs}
    if caller == "uploader":
        assert listed == {world.uploader_job_id}, "an uploader sees the jobs it started only"
    else:
        assert listed == {world.job_id, world.uploader_job_id}


def _lists_own_and_invited_projects(world: World, caller: str, reply) -> None:
    got = {(p.project_id, p.owner_account_id, p.role) for p in reply.projects}
    owner = world.accounts["owner"]
    expected = {
        "owner": {
            (PROJECT, owner, pb.PROJECT_ROLE_OWNER),
            (OTHER_PROJECT, owner, pb.PROJECT_ROLE_OWNER),
        },
        "reviewer": {(PROJECT, owner, pb.PROJECT_ROLE_REVIEWER)},
        "uploader": {(PROJECT, owner, pb.PROJECT_ROLE_UPLOADER)},
        "viewer": {(PROJECT, owner, pb.PROJECT_ROLE_VIEWER)},
        "other_reviewer": {(OTHER_PROJECT, owner, pb.PROJECT_ROLE_REVIEWER)},
        "stranger": set(),
    }[caller]
    assert got == expected


def _lists_the_collaborators(world: World, caller: str, reply) -> None:
    listed = {c.account_id for c in reply.collaborators}
    assert {world.accounts[r] for r in COLLABORATORS} <= listed


def _own_events_only(world: World, caller: str, reply) -> None:
    assert all(e.account_id == world.accounts[caller] for e in reply.events)
    if caller == "owner":
        assert {e.media_id for e in reply.events} >= {world.media_id, world.uploader_media_id}
    else:
        assert list(reply.events) == [], "a collaborator's chain holds none of the owner's events"


def _own_chain_verified(world: World, caller: str, reply) -> None:
    assert reply.ok
    assert (reply.events_checked > 0) == (caller == "owner")


def _signed_tree(world: World, caller: str, note: str) -> Checkpoint:
    """The checkpoint in `note`, opened with the key the gateway publishes to `caller`."""
    key = world.gw.stub.GetAuditLogPublicKey(
        pb.GetAuditLogPublicKeyRequest(), metadata=world.metas[caller]
    )
    return open_checkpoint(note, Ed25519Verifier.from_vkey(key.verifier_key)).checkpoint


def _own_log_origin(world: World, caller: str) -> str:
    return f"mixip.example/audit/{world.accounts[caller]}"


def _own_leaves(world: World, caller: str) -> list[bytes]:
    """The leaves of the caller's tree: the exact bytes of each of its audit events."""
    events = world.gw.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(), metadata=world.metas[caller]
    ).events
    return [e.leaf for e in sorted(events, key=lambda e: e.sequence)]


def _own_tree_signed(world: World, caller: str, reply) -> None:
    """The checkpoint of the caller's own log: its origin, and the root of its own events
    (none but the owner's hold any)."""
    signed = _signed_tree(world, caller, reply.checkpoint)
    leaves = _own_leaves(world, caller)
    assert signed.origin == _own_log_origin(world, caller)
    assert (signed.size, signed.root) == (len(leaves), tree_hash(leaves))
    assert (signed.size > 0) == (caller == "owner")


def _own_log_key(world: World, caller: str, reply) -> None:
    assert Ed25519Verifier.from_vkey(reply.verifier_key).name == _own_log_origin(world, caller)


def _owners_tree(world: World) -> Checkpoint:
    note = world.gw.stub.GetAuditCheckpoint(
        pb.GetAuditCheckpointRequest(), metadata=world.metas["owner"]
    ).checkpoint
    return _signed_tree(world, "owner", note)


def _prove_first_event(world: World, caller: str):
    """The inclusion proof of event #1 in a tree of the owner's size, asked of the caller's
    own log (which has not reached that size unless it is the owner's)."""
    return world.gw.stub.GetAuditInclusionProof(
        pb.GetAuditInclusionProofRequest(sequence=1, tree_size=_owners_tree(world).size),
        metadata=world.metas[caller],
    )


def _first_event_included(world: World, caller: str, reply) -> None:
    signed, leaves = _owners_tree(world), _own_leaves(world, caller)
    assert (reply.leaf_index, reply.tree_size) == (0, signed.size)
    verify_inclusion(leaf_hash(leaves[0]), 0, signed.size, reply.hashes, signed.root)


def _prove_extension(world: World, caller: str):
    """The consistency proof from one event to the owner's tree size, asked of the caller's
    own log."""
    return world.gw.stub.GetAuditConsistencyProof(
        pb.GetAuditConsistencyProofRequest(from_size=1, to_size=_owners_tree(world).size),
        metadata=world.metas[caller],
    )


def _extends_the_first_event(world: World, caller: str, reply) -> None:
    signed, leaves = _owners_tree(world), _own_leaves(world, caller)
    assert (reply.from_size, reply.to_size) == (1, signed.size) and signed.size > 1
    verify_consistency(1, signed.size, tree_hash(leaves[:1]), signed.root, reply.hashes)


def _own_access_log_only(world: World, caller: str, reply) -> None:
    """A collaborator sees its own calls only; the owner sees its own and its collaborators'
    calls on its projects, never a stranger's (whose calls found nothing of the owner's)."""
    callers = {e.account_id for e in reply.entries}
    if caller != "owner":
        assert callers == {world.accounts[caller]}
        return
    members = {world.accounts[c] for c in (*COLLABORATORS, "other_reviewer")}
    assert world.accounts["owner"] in callers and callers & members
    assert callers <= members | {world.accounts["owner"]}


def _own_consents_only(world: World, caller: str, reply) -> None:
    assert all(r.account_id == world.accounts[caller] for r in reply.records)
    assert len(reply.records) == (2 if caller == "owner" else 0)


def _own_faces_only(world: World, caller: str, reply) -> None:
    assert len(reply.faces) == (1 if caller == "owner" else 0)


def _owners_export(world: World, caller: str, reply) -> None:
    document = json.loads(reply.document_json)
    assert caller == "owner" and document["account_id"] == world.accounts["owner"]


def _enrolled_in_own_account(world: World, caller: str, reply) -> None:
    assert caller == "owner"


def _consent_in_own_account(world: World, caller: str, reply) -> None:
    assert reply.record.account_id == world.accounts[caller]


def _created_own_or_returned_owners(world: World, caller: str, reply) -> None:
    owner = "owner" if caller == "owner" else caller
    assert reply.project.owner_account_id == world.accounts[owner]
    assert reply.project.role == pb.PROJECT_ROLE_OWNER


def _uploaded_without_the_owners_talents(world: World, caller: str, reply) -> None:
    if caller in ("owner", "uploader"):  # the owner's project: matched with the owner's talents
        owners = world.gw.stub.GetMediaResults(
            pb.GetMediaResultsRequest(media_id=reply.media_id), metadata=world.metas["owner"]
        )
        assert [f.talent_id for f in owners.media.faces] == [TALENT]
        if caller == "uploader":  # ... which an uploader is never told
            assert [(f.label, f.talent_id, f.similarity) for f in reply.faces] == [
                (common.FACE_LABEL_UNSPECIFIED, "", 0.0)
            ]
        listed = world.gw.stub.ListMedia(
            pb.ListMediaRequest(project_id=PROJECT), metadata=world.metas["owner"]
        )
        assert reply.media_id in {m.media_id for m in listed.media}
    else:  # its own new project: none of the owner's talents is known there
        assert [(f.label, f.talent_id) for f in reply.faces] == [(common.FACE_LABEL_UNKNOWN, "")]


def _erased_own_talent_only(world: World, caller: str, reply) -> None:
    steps = {s.name: s.count for s in reply.steps}
    if caller == "owner":
        assert steps["matcher.delete_faces"] >= 1
        return
    assert steps["matcher.delete_faces"] == 0 and steps["gateway.scrub_results"] == 0
    # the owner's talent is untouched
    world.gw.stub.ExportTalentData(
        pb.ExportTalentDataRequest(talent_id=TALENT), metadata=world.metas["owner"]
    )


# -- calls that need the world -------------------------------------------------------------


def _decide(world: World, caller: str):
    return world.gw.stub.RecordReviewDecision(
        pb.RecordReviewDecisionRequest(
            media_id=world.media_id,
            face_index=0,
            decision=common.REVIEW_DECISION_APPROVED_FOR_RELEASE,
            confirm_not_cleared=True,
        ),
        metadata=world.metas[caller],
    )


def _results(world: World, caller: str):
    return world.gw.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=world.media_id), metadata=world.metas[caller]
    )


def _preview(world: World, caller: str):
    return world.gw.stub.GetMediaPreview(
        pb.GetMediaPreviewRequest(media_id=world.media_id), metadata=world.metas[caller]
    )


def _job_call(method: str, request_type) -> Callable[[World, str], Any]:
    def call(world: World, caller: str) -> Any:
        reply = getattr(world.gw.stub, method)(
            request_type(job_id=world.job_id), metadata=world.metas[caller]
        )
        return list(reply) if method == "WatchJob" else reply

    return call


def _accept(world: World, caller: str):
    return world.gw.stub.AcceptInvitation(
        pb.AcceptInvitationRequest(project_id=PROJECT, owner_account_id=world.accounts["owner"]),
        metadata=world.metas[caller],
    )


def _accepted_the_owners_project(world: World, caller: str, reply) -> None:
    project = reply.project
    assert (project.owner_account_id, project.project_id) == (world.accounts["owner"], PROJECT)
    assert project.role == getattr(pb, f"PROJECT_ROLE_{caller.upper()}") and not project.pending


def _invite_guest(world: World, caller: str):
    return world.gw.stub.InviteCollaborator(
        pb.InviteCollaboratorRequest(
            project_id=PROJECT, account_id=world.guest, role=pb.PROJECT_ROLE_VIEWER
        ),
        metadata=world.metas[caller],
    )


def _remove_guest(world: World, caller: str):
    if caller == "owner":
        _invite_guest(world, "owner")  # so there is someone to remove
    return world.gw.stub.RemoveCollaborator(
        pb.RemoveCollaboratorRequest(project_id=PROJECT, account_id=world.guest),
        metadata=world.metas[caller],
    )


def _enroll(world: World, caller: str):
    return enroll(world.gw, world.metas[caller], TALENT, faces.scaled(faces.astronaut(), 0.9))


def _consent(world: World, caller: str):
    return consent(
        world.gw, world.metas[caller], world.clock, TALENT, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING
    )


def _upload(world: World, caller: str):
    return upload(world.gw, world.metas[caller], faces.encode(faces.astronaut()))


def _delete_face(world: World, caller: str):
    owner_faces = world.gw.stub.ListTalentFaces(
        pb.ListTalentFacesRequest(talent_id=TALENT), metadata=world.metas["owner"]
    ).faces
    return world.gw.stub.DeleteTalentFace(
        pb.DeleteTalentFaceRequest(talent_id=TALENT, face_id=owner_faces[-1].face_id),
        metadata=world.metas[caller],
    )


def _add_webhook(world: World, caller: str):
    reply = world.gw.stub.AddWebhook(
        pb.AddWebhookRequest(url=f"https://hooks.example.com/{caller}"),
        metadata=world.metas[caller],
    )
    if caller == "owner":
        world.webhook_id = reply.webhook.webhook_id
    return reply


def _owners_webhook(method: str, request_type) -> Callable[[World, str], Any]:
    def call(world: World, caller: str) -> Any:
        request = request_type(webhook_id=world.webhook_id)
        return getattr(world.gw.stub, method)(request, metadata=world.metas[caller])

    return call


def _own_webhooks_only(world: World, caller: str, reply) -> None:
    urls = [w.url for w in reply.webhooks]
    assert urls == [f"https://hooks.example.com/{caller}"], urls


def _own_profile(world: World, caller: str, reply) -> None:
    assert reply.account.account_id == world.accounts[caller]


def _renamed_self(world: World, caller: str):
    request = pb.UpdateAccountRequest(name=f"{caller} renamed")
    return world.gw.stub.UpdateAccount(request, metadata=world.metas[caller])


def _own_renamed_profile(world: World, caller: str, reply) -> None:
    assert reply.account.account_id == world.accounts[caller]
    assert reply.account.name == f"{caller} renamed"


def _own_account_export(world: World, caller: str, reply) -> None:
    document = json.loads(reply.document_json)
    assert document["account"]["account_id"] == world.accounts[caller]
    owns = caller == "owner"  # a collaborator's export holds no media of the owner's
    assert (world.media_id in {m["media_id"] for m in document["media"]}) == owns


def _close_the_owners_account(world: World, caller: str):
    """Everyone confirms the owner's id: only the owner's own key closes it (the last row)."""
    request = pb.CloseOwnAccountRequest(confirm_account_id=world.accounts["owner"])
    return world.gw.stub.CloseOwnAccount(request, metadata=world.metas[caller])


def _owner_closed(world: World, caller: str, reply) -> None:
    assert reply.closure.account_id == world.accounts["owner"] and reply.closure.completed_at


SESSION_MEDIA = faces.encode(faces.astronaut())


def _create_session(world: World, caller: str):
    return world.gw.stub.CreateUploadSession(
        pb.CreateUploadSessionRequest(project_id=PROJECT, declared_size=len(SESSION_MEDIA)),
        metadata=world.metas[caller],
    )


def _owners_session(world: World) -> str:
    if not world.session_id:
        world.session_id = _create_session(world, "owner").session.session_id
    return world.session_id


def _session_in_the_projects_account(world: World, caller: str, reply) -> None:
    """The owner's project holds an uploader's session; an outsider's goes to its own."""
    with world.gw.app.db.read() as session:
        row = session.get(UploadSessionRow, reply.session.session_id)
    owner = "owner" if caller in ("owner", "uploader") else caller
    assert (row.account_id, row.created_by_account_id) == (
        world.accounts[owner],
        world.accounts[caller],
    )


def _append(world: World, caller: str):
    request = pb.AppendUploadChunksRequest(
        session_id=_owners_session(world), offset=0, data=SESSION_MEDIA
    )
    return world.gw.stub.AppendUploadChunks(iter([request]), metadata=world.metas[caller])


def _get_session(world: World, caller: str):
    return world.gw.stub.GetUploadSession(
        pb.GetUploadSessionRequest(session_id=_owners_session(world)),
        metadata=world.metas[caller],
    )


def _finish(world: World, caller: str):
    return world.gw.stub.FinishUploadSession(
        pb.FinishUploadSessionRequest(
            session_id=_owners_session(world),
            sha256=hashlib.sha256(SESSION_MEDIA).hexdigest(),
        ),
        metadata=world.metas[caller],
    )


def _all_bytes_in(world: World, caller: str, reply) -> None:
    assert reply.session.durable_offset == len(SESSION_MEDIA)


def _finished_in_the_owners_project(world: World, caller: str, reply) -> None:
    listed = world.gw.stub.ListMedia(
        pb.ListMediaRequest(project_id=PROJECT), metadata=world.metas["owner"]
    )
    assert reply.media.media_id in {m.media_id for m in listed.media}


# Sessions belong to the account that created them: the owner's answers NOT_FOUND to anyone else.
ONLY_ITS_CREATOR = by_role(reviewer=NOT_FOUND, uploader=NOT_FOUND, viewer=NOT_FOUND)

ROWS = [
    Row(
        "ListProjects",
        _unary("ListProjects", pb.ListProjectsRequest()),
        EVERYONE_OK,
        _lists_own_and_invited_projects,
    ),
    Row("GetMediaResults", _results, by_role(uploader=NOT_FOUND), _sees_the_owners_media),
    Row("GetMediaPreview", _preview, by_role(uploader=NOT_FOUND)),
    Row(
        "GetJob",
        _job_call("GetJob", pb.GetJobRequest),
        by_role(uploader=NOT_FOUND),
        _the_owners_job,
    ),
    Row(
        "WatchJob",
        _job_call("WatchJob", pb.WatchJobRequest),
        by_role(uploader=NOT_FOUND),
        _the_owners_job,
    ),
    Row(
        "ListJobs",
        _unary("ListJobs", pb.ListJobsRequest(project_id=PROJECT)),
        by_role(),
        _lists_project_jobs,
    ),
    # the job ended: cancelling it returns it as it is, to whoever may cancel it
    Row(
        "CancelJob",
        _job_call("CancelJob", pb.CancelJobRequest),
        by_role(reviewer=DENIED, viewer=DENIED, uploader=NOT_FOUND),
        _the_owners_job,
    ),
    Row(
        "ListMedia",
        _unary("ListMedia", pb.ListMediaRequest(project_id=PROJECT)),
        by_role(),
        _lists_project_media,
    ),
    Row(
        "ListClearanceReport",
        _unary("ListClearanceReport", pb.ListClearanceReportRequest(project_id=PROJECT)),
        by_role(),
        _reports_project_media,
    ),
    Row(
        "ListCollaborators",
        _unary("ListCollaborators", pb.ListCollaboratorsRequest(project_id=PROJECT)),
        by_role(reviewer=DENIED, uploader=DENIED, viewer=DENIED),
        _lists_the_collaborators,
    ),
    Row(
        "InviteCollaborator",
        _invite_guest,
        by_role(reviewer=DENIED, uploader=DENIED, viewer=DENIED),
    ),
    Row(
        "AcceptInvitation",  # the collaborators accepted already: again, the same project
        _accept,
        by_role(owner=NOT_FOUND),
        _accepted_the_owners_project,
    ),
    Row(
        "RemoveCollaborator",
        _remove_guest,
        by_role(reviewer=DENIED, uploader=DENIED, viewer=DENIED),
    ),
    Row("RecordReviewDecision", _decide, by_role(uploader=NOT_FOUND, viewer=DENIED)),
    Row(
        "ListAuditEvents",
        _unary("ListAuditEvents", pb.ListAuditEventsRequest(project_id=PROJECT)),
        EVERYONE_OK,
        _own_events_only,
    ),
    Row(
        "ListAuditEvents",
        _unary("ListAuditEvents", pb.ListAuditEventsRequest(talent_id=TALENT)),
        EVERYONE_OK,
        _own_events_only,
    ),
    Row(
        "VerifyAuditLog",
        _unary("VerifyAuditLog", pb.VerifyAuditLogRequest()),
        EVERYONE_OK,
        _own_chain_verified,
    ),
    Row(
        "GetAuditCheckpoint",
        _unary("GetAuditCheckpoint", pb.GetAuditCheckpointRequest()),
        EVERYONE_OK,
        _own_tree_signed,
    ),
    Row(
        "GetAuditLogPublicKey",
        _unary("GetAuditLogPublicKey", pb.GetAuditLogPublicKeyRequest()),
        EVERYONE_OK,
        _own_log_key,
    ),
    # account-bound too: a collaborator's own log holds none of the owner's events, so the
    # owner's tree size is beyond it (and no proof of the owner's tree is ever given to it)
    Row(
        "GetAuditInclusionProof",
        _prove_first_event,
        by_role(reviewer=INVALID, uploader=INVALID, viewer=INVALID, outsider=INVALID),
        _first_event_included,
    ),
    Row(
        "GetAuditConsistencyProof",
        _prove_extension,
        by_role(reviewer=INVALID, uploader=INVALID, viewer=INVALID, outsider=INVALID),
        _extends_the_first_event,
    ),
    Row(
        "ListAccessLog",
        _unary("ListAccessLog", pb.ListAccessLogRequest(project_id=PROJECT)),
        by_role(reviewer=NOT_FOUND, uploader=NOT_FOUND, viewer=NOT_FOUND),
        _own_access_log_only,
    ),
    Row(
        "ListAccessLog",
        _unary("ListAccessLog", pb.ListAccessLogRequest()),
        EVERYONE_OK,
        _own_access_log_only,
    ),
    # Webhooks are account-bound: each caller adds its own; the owner's are the owner's alone
    Row("AddWebhook", _add_webhook, EVERYONE_OK),
    Row(
        "ListWebhooks",
        _unary("ListWebhooks", pb.ListWebhooksRequest()),
        EVERYONE_OK,
        _own_webhooks_only,
    ),
    Row("TestWebhook", _owners_webhook("TestWebhook", pb.TestWebhookRequest), OWNERS_OWN),
    Row(
        "RotateWebhookSecret",
        _owners_webhook("RotateWebhookSecret", pb.RotateWebhookSecretRequest),
        OWNERS_OWN,
    ),
    Row("RemoveWebhook", _owners_webhook("RemoveWebhook", pb.RemoveWebhookRequest), OWNERS_OWN),
    Row(
        "ListConsents",
        _unary("ListConsents", pb.ListConsentsRequest(talent_id=TALENT)),
        EVERYONE_OK,
        _own_consents_only,
    ),
    Row(
        "ListTalentFaces",
        _unary("ListTalentFaces", pb.ListTalentFacesRequest(talent_id=TALENT)),
        EVERYONE_OK,
        _own_faces_only,
    ),
    Row(
        "ExportTalentData",
        _unary("ExportTalentData", pb.ExportTalentDataRequest(talent_id=TALENT)),
        by_role(reviewer=NOT_FOUND, uploader=NOT_FOUND, viewer=NOT_FOUND),
        _owners_export,
    ),
    # no biometric consent in the collaborator's own account: the owner's does not count
    Row(
        "EnrollTalent",
        _enroll,
        by_role(reviewer=TAKEN, uploader=TAKEN, viewer=TAKEN, outsider=TAKEN),
        _enrolled_in_own_account,
    ),
    Row("RecordConsent", _consent, EVERYONE_OK, _consent_in_own_account),
    Row(
        "CreateProject",
        _unary("CreateProject", pb.CreateProjectRequest(project_id=PROJECT, display_name="x")),
        by_role(reviewer=TAKEN, uploader=TAKEN, viewer=TAKEN, outsider=OK),
        _created_own_or_returned_owners,
    ),
    # outsiders upload into the project of their own CreateProject made just above
    Row(
        "UploadMedia",
        _upload,
        by_role(reviewer=DENIED, viewer=DENIED, outsider=OK),
        _uploaded_without_the_owners_talents,
    ),
    Row(
        "CreateUploadSession",
        _create_session,
        by_role(reviewer=DENIED, viewer=DENIED, outsider=OK),
        _session_in_the_projects_account,
    ),
    Row("AppendUploadChunks", _append, ONLY_ITS_CREATOR),
    Row("GetUploadSession", _get_session, ONLY_ITS_CREATOR, _all_bytes_in),
    Row("FinishUploadSession", _finish, ONLY_ITS_CREATOR, _finished_in_the_owners_project),
    Row(
        "DeleteTalentFace",
        _delete_face,
        by_role(reviewer=NOT_FOUND, uploader=NOT_FOUND, viewer=NOT_FOUND),
    ),
    Row(
        "EraseTalent",
        _unary("EraseTalent", pb.EraseTalentRequest(talent_id=TALENT)),
        EVERYONE_OK,
        _erased_own_talent_only,
    ),
    # the calling account's own profile and data (docs/accounts.md)
    Row("GetAccount", _unary("GetAccount", pb.GetAccountRequest()), EVERYONE_OK, _own_profile),
    Row("UpdateAccount", _renamed_self, EVERYONE_OK, _own_renamed_profile),
    Row(
        "ExportOwnAccount",
        _unary("ExportOwnAccount", pb.ExportOwnAccountRequest()),
        EVERYONE_OK,
        _own_account_export,
    ),
    # last: the owner's account closes (nobody else can close it)
    Row(
        "CloseOwnAccount",
        _close_the_owners_account,
        by_role(reviewer=INVALID, uploader=INVALID, viewer=INVALID, outsider=INVALID),
        _owner_closed,
    ),
]


def _status(world: World, row: Row, caller: str) -> tuple[grpc.StatusCode, Any]:
    try:
        return OK, row.call(world, caller)
    except grpc.RpcError as exc:
        return exc.code(), None


def test_every_method_answers_each_role_as_the_matrix_says(gateway, clock):
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["GatewayService"].methods}
    assert {row.method for row in ROWS} == methods, "every RPC needs a row in the role matrix"
    world = _setup(gateway, clock)
    failures: list[str] = []
    for row in ROWS:
        for caller in CALLERS:  # each reply is checked at once: later calls change the world
            code, reply = _status(world, row, caller)
            if code != row.expect[caller]:
                expected = row.expect[caller].name
                failures.append(f"{row.method} by {caller}: expected {expected}, got {code.name}")
            elif code == OK and row.check is not None:
                try:
                    row.check(world, caller, reply)
                except (AssertionError, grpc.RpcError) as exc:
                    failures.append(f"{row.method} by {caller}: {exc!r}")
    assert not failures, "\n".join(failures)


def test_an_uploader_may_not_review_even_its_own_upload(gateway, clock):
    world = _setup(gateway, clock)
    reply = world.gw.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=world.uploader_media_id),
        metadata=world.metas["uploader"],
    )
    assert reply.media.media_id == world.uploader_media_id
    expect_error(
        DENIED,
        world.gw.stub.RecordReviewDecision,
        pb.RecordReviewDecisionRequest(
            media_id=world.uploader_media_id,
            face_index=0,
            decision=common.REVIEW_DECISION_BLOCKED,
        ),
        metadata=world.metas["uploader"],
    )


# -- what each role sees in results ---------------------------------------------------------

SEES_MATCHES = {"owner": True, "reviewer": True, "viewer": True, "uploader": False}
WITHHELD = (common.FACE_LABEL_UNSPECIFIED, common.LABEL_REASON_UNSPECIFIED, 0.0, "")


def _listed(gw, meta, media_id: str) -> pb.MediaSummary:
    listed = gw.stub.ListMedia(pb.ListMediaRequest(project_id=PROJECT), metadata=meta).media
    [summary] = [m for m in listed if m.media_id == media_id]
    return summary


def test_each_role_sees_in_results_what_its_row_of_the_table_says(gateway, clock):
    """docs/projects.md#what-each-role-sees: the owner, a reviewer and a viewer see labels,
    talents, similarities, per-label counts and decisions; an uploader, on its own upload, what
    detection alone gives (the faces and their boxes), and may not filter by label or decision."""
    world = _setup(gateway, clock)
    owner = world.metas["owner"]
    media_id = upload(
        gateway, world.metas["uploader"], group_photo(), filename="take-7.jpg"
    ).media_id
    full = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media_id), metadata=owner
    )
    [cleared] = [f.face_index for f in full.media.faces if f.talent_id == TALENT]
    decide(gateway, owner, media_id, cleared, common.REVIEW_DECISION_BLOCKED, note="no release")
    previews = {}
    for caller, sees in SEES_MATCHES.items():
        meta = world.metas[caller]
        got = gateway.stub.GetMediaResults(
            pb.GetMediaResultsRequest(media_id=media_id), metadata=meta
        )
        summary = _listed(gateway, meta, media_id)
        # what detection gives, every role sees
        assert [f.box for f in got.media.faces] == [f.box for f in full.media.faces], caller
        assert (summary.face_count, summary.filename) == (2, "take-7.jpg"), caller
        by_label = pb.ListMediaRequest(project_id=PROJECT, label=common.FACE_LABEL_CLEARED)
        undecided = pb.ListMediaRequest(project_id=PROJECT, undecided=True)
        if sees:
            assert got.media.faces == full.media.faces, caller
            assert [(d.face_index, d.note) for d in got.decisions] == [(cleared, "no release")]
            counts = (summary.cleared_faces, summary.unknown_faces, summary.undecided_faces)
            assert counts == (1, 1, 1), caller
            for request in (by_label, undecided):
                listed = gateway.stub.ListMedia(request, metadata=meta).media
                assert media_id in {m.media_id for m in listed}, caller
        else:
            shown = {(f.label, f.reason, f.similarity, f.talent_id) for f in got.media.faces}
            assert shown == {WITHHELD}
            assert list(got.decisions) == []
            counts = (
                summary.cleared_faces,
                summary.possible_faces,
                summary.unknown_faces,
                summary.undecided_faces,
            )
            assert counts == (0, 0, 0, 0)
            for request in (by_label, undecided):
                denied = expect_error(DENIED, gateway.stub.ListMedia, request, metadata=meta)
                assert denied.reason == "ROLE_NOT_ALLOWED"
        previews[caller] = gateway.stub.GetMediaPreview(
            pb.GetMediaPreviewRequest(media_id=media_id), metadata=meta
        ).image
    assert previews["owner"] == previews["reviewer"] == previews["viewer"]
    assert previews["uploader"] != previews["owner"]  # boxes without labels


def _without_ids(reply: Message) -> dict[str, Any]:
    """A reply as a dict without the ids and times that differ between two projects."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: strip(v)
                for k, v in value.items()
                if k not in ("mediaId", "projectId", "createdAt")
            }
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(MessageToDict(reply))


def test_an_uploader_learns_nothing_of_the_owners_collection_from_any_call(gateway, clock):
    """Finding #4: an uploader uploads a photo of the owner's enrolled, consented talent. Every
    call it can make about it answers exactly as for the same photo in a project whose owner
    enrolled no one: a neutral label, no talent id, no similarity, no decision (nor does the
    review page show one); while the owner sees CLEARED for the same media."""
    _, studio = gateway.new_account("studio")
    consent(gateway, studio, clock, TALENT, cpb.CONSENT_SCOPE_BIOMETRIC_PROCESSING)
    consent(gateway, studio, clock, TALENT, cpb.CONSENT_SCOPE_FACE_USAGE, project=PROJECT)
    enroll(gateway, studio, TALENT, faces.astronaut())
    _, empty = gateway.new_account("empty")
    crew, crew_meta = gateway.new_account("crew")
    for meta, project in ((studio, PROJECT), (empty, OTHER_PROJECT)):
        gateway.stub.CreateProject(
            pb.CreateProjectRequest(project_id=project, display_name="Film"), metadata=meta
        )
        invite(gateway, meta, crew, pb.PROJECT_ROLE_UPLOADER, project)
    photo = faces.encode(faces.astronaut())

    def replies(owner, project: str) -> Iterator[Message]:
        """Every reply the uploader gets about its upload of the photo into `project`."""
        sent = {"project": project, "request_id": f"probe-{project}", "filename": "probe.jpg"}
        uploaded = upload(gateway, crew_meta, photo, **sent)
        media_id = uploaded.media_id
        # the owner records a decision with a note: the uploader never sees it
        decide(gateway, owner, media_id, 0, common.REVIEW_DECISION_BLOCKED, note="no release")
        yield uploaded
        yield upload(gateway, crew_meta, photo, **sent)  # a retry: the stored upload
        yield gateway.stub.GetMediaResults(
            pb.GetMediaResultsRequest(media_id=media_id), metadata=crew_meta
        )
        yield gateway.stub.ListMedia(pb.ListMediaRequest(project_id=project), metadata=crew_meta)
        for side in (0, 2048):
            yield gateway.stub.GetMediaPreview(
                pb.GetMediaPreviewRequest(media_id=media_id, max_side=side), metadata=crew_meta
            )
        expect_error(
            DENIED,
            gateway.stub.RecordReviewDecision,
            pb.RecordReviewDecisionRequest(
                media_id=media_id, face_index=0, decision=common.REVIEW_DECISION_BLOCKED
            ),
            metadata=crew_meta,
        )
        for request in (
            pb.ListMediaRequest(project_id=project, label=common.FACE_LABEL_CLEARED),
            pb.ListMediaRequest(project_id=project, undecided=True),
        ):
            expect_error(DENIED, gateway.stub.ListMedia, request, metadata=crew_meta)

    enrolled = list(replies(studio, PROJECT))
    nobody = list(replies(empty, OTHER_PROJECT))
    assert [_without_ids(r) for r in enrolled] == [_without_ids(r) for r in nobody]
    media_id = enrolled[0].media_id
    assert {(f.label, f.reason, f.similarity, f.talent_id) for f in enrolled[0].faces} == {WITHHELD}
    # the account-bound calls hold nothing of the owner's either
    for reply in (
        *enrolled,
        gateway.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=crew_meta),
        gateway.stub.ListAccessLog(pb.ListAccessLogRequest(), metadata=crew_meta),
        gateway.stub.ListProjects(pb.ListProjectsRequest(), metadata=crew_meta),
    ):
        assert TALENT.encode() not in reply.SerializeToString()
    sessions = Sessions()
    with serving(create_app(gateway.channel, sessions)) as base:
        session_id = sessions.new(crew_meta[0][1].removeprefix("Bearer ")).session_id
        html = page(base, session_id, f"/projects/{PROJECT}")
        html += page(base, session_id, f"/media/{media_id}")
    assert TALENT not in html and "no release" not in html
    assert "not shown to uploaders" in html and "undecided" not in html
    owners = gateway.stub.GetMediaResults(
        pb.GetMediaResultsRequest(media_id=media_id), metadata=studio
    )
    assert [(f.label, f.talent_id) for f in owners.media.faces] == [
        (common.FACE_LABEL_CLEARED, TALENT)
    ]
    assert [d.note for d in owners.decisions] == ["no release"]
