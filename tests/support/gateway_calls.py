"""Calls to the gateway as a client makes them: streamed uploads and enrollments, consent."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gateway.settings import DEFAULT_VAULT
from mixip.consent.v1 import consent_pb2 as cpb
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.runtime.times import to_timestamp
from mixip.runtime.vault import VaultSettings
from tests.support import faces

PROJECT = "film-1"
CHUNK = 64 * 1024


def gateway_vault(tmp_path: Path) -> VaultSettings:
    """The gateway vault's settings in a test: its KEK beside the media key, in the test's key
    directory (the replicas of one test share it)."""
    return replace(DEFAULT_VAULT, kek_file=tmp_path / "keys" / "gateway-vault.key")


def upload_requests(
    data: bytes, project=PROJECT, request_id="", chunk=CHUNK, filename="a.jpg", as_job=False
):
    yield pb.UploadMediaRequest(
        header=pb.UploadHeader(
            project_id=project, filename=filename, request_id=request_id, as_job=as_job
        )
    )
    for start in range(0, len(data), chunk):
        yield pb.UploadMediaRequest(chunk=data[start : start + chunk])


def upload(gw, meta, data, **kwargs) -> pb.UploadMediaResponse:
    return gw.stub.UploadMedia(upload_requests(data, **kwargs), metadata=meta)


def start_job(gw, meta, data, **kwargs) -> pb.UploadMediaResponse:
    """An upload made `as_job`: its reply names the job (and the media it will make)."""
    return upload(gw, meta, data, as_job=True, **kwargs)


def finished_job(gw, meta, job_id: str) -> pb.Job:
    """The job once it ended (watched to its last event)."""
    return list(gw.stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=meta))[-1].job


def consent(gw, meta, clock, talent, scope, decision=cpb.CONSENT_DECISION_GRANTED, project=""):
    return gw.stub.RecordConsent(
        pb.RecordConsentRequest(
            talent_id=talent,
            scope=scope,
            project_id=project,
            decision=decision,
            evidence=cpb.Evidence(
                method="signed-release",
                policy_version="v3",
                actor="staff-1",
                captured_at=to_timestamp(clock()),
            ),
        ),
        metadata=meta,
    )


def enroll(gw, meta, talent, image, chunk=CHUNK):
    data = faces.encode(image, ".png")

    def requests():
        yield pb.EnrollTalentRequest(header=pb.EnrollHeader(talent_id=talent))
        for start in range(0, len(data), chunk):
            yield pb.EnrollTalentRequest(chunk=data[start : start + chunk])

    return gw.stub.EnrollTalent(requests(), metadata=meta)


def group_photo() -> bytes:
    return faces.encode(faces.composite(faces.astronaut(), faces.grace_hopper()), ".jpg")


def invite(gw, meta, account_id, role, project=PROJECT, accept=True) -> pb.Collaborator:
    """Invites the account (a `gw.new_account`) and, unless `accept=False`, has it accept."""
    invited = gw.stub.InviteCollaborator(
        pb.InviteCollaboratorRequest(project_id=project, account_id=account_id, role=role),
        metadata=meta,
    ).collaborator
    if accept:
        owner = gw.stub.ListProjects(pb.ListProjectsRequest(), metadata=meta).projects
        [owner_account] = {
            p.owner_account_id
            for p in owner
            if p.project_id == project and p.role == pb.PROJECT_ROLE_OWNER
        }
        gw.stub.AcceptInvitation(
            pb.AcceptInvitationRequest(project_id=project, owner_account_id=owner_account),
            metadata=gw.keys[account_id],
        )
    return invited


def decide(gw, meta, media_id, face_index, decision, **fields) -> pb.ReviewDecisionRecord:
    """Records a decision, confirming (unless told otherwise) an approval of a face that is not
    CLEARED: the tests of that rule pass confirm_not_cleared=False."""
    fields.setdefault("confirm_not_cleared", True)
    return gw.stub.RecordReviewDecision(
        pb.RecordReviewDecisionRequest(
            media_id=media_id, face_index=face_index, decision=decision, **fields
        ),
        metadata=meta,
    ).decision
