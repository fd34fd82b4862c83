"""The gateway's domain values as the messages its servicers return, one function a message:
`GatewayService`'s (gateway/servicer.py) and `AdminService`'s (gateway/admin_servicer.py).
The account and closure messages serve both. No validation and no use case here: the servicers
check what comes in and call the use cases; this is only the way back out."""

from __future__ import annotations

from gateway.access_log import AccessEntry
from gateway.accounts import Account, ApiKey
from gateway.closures import Closure
from gateway.erasure import ErasureStep
from gateway.jobs import Job
from gateway.projects import Collaborator, Project
from gateway.reports import ReportMedia
from gateway.reviews import Decision, MediaSummary
from gateway.upload_sessions import SessionState
from gateway.uploads import StoredMedia
from gateway.webhooks import Webhook
from mixip.common.v1 import common_pb2
from mixip.gateway.v1 import admin_pb2, gateway_pb2
from mixip.runtime.times import to_timestamp

# -- accounts, API keys and closures (both servicers) -------------------------------------------


def api_key_message(key: ApiKey) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        api_key_id=key.key_id,
        account_id=key.account_id or "",
        prefix=f"mixip_{key.key_id}_",
        created_at=to_timestamp(key.created_at),
        revoked_at=to_timestamp(key.revoked_at) if key.revoked_at else None,
    )


def account_message(account: Account) -> admin_pb2.Account:
    return admin_pb2.Account(
        account_id=account.account_id,
        name=account.name,
        created_at=to_timestamp(account.created_at),
        email=account.email,
        closed_at=to_timestamp(account.closed_at) if account.closed_at else None,
    )


def profile_message(account: Account) -> gateway_pb2.AccountProfile:
    return gateway_pb2.AccountProfile(
        account_id=account.account_id,
        name=account.name,
        email=account.email,
        created_at=to_timestamp(account.created_at),
    )


def closure_message(closure: Closure) -> admin_pb2.AccountClosure:
    return admin_pb2.AccountClosure(
        receipt_id=closure.receipt_id,
        account_id=closure.account_id,
        closed_at=to_timestamp(closure.closed_at),
        completed_at=to_timestamp(closure.completed_at) if closure.completed_at else None,
        steps=[admin_pb2.AccountClosureStep(name=s.name, count=s.count) for s in closure.steps],
        talents_erased=closure.talents_erased,
    )


# -- uploads, upload sessions and jobs ----------------------------------------------------------


def upload_message(stored: StoredMedia) -> gateway_pb2.UploadMediaResponse:
    """A media stored and matched at once."""
    media = stored.media
    return gateway_pb2.UploadMediaResponse(
        media_id=media.media_id,
        kind=media.kind,  # type: ignore[arg-type]
        content_type=media.content_type,
        size_bytes=media.size_bytes,
        faces=stored.faces,
        audit_events_recorded=len(stored.faces),
        duration_seconds=media.duration_seconds,
        engine=media.engine,
        created_at=to_timestamp(media.created_at),
        project_id=media.project_id,
    )


def upload_job_message(job: Job) -> gateway_pb2.UploadMediaResponse:
    """A media accepted as a job: its ids only, the results come with the job."""
    return gateway_pb2.UploadMediaResponse(
        media_id=job.media_id, project_id=job.project_id, job_id=job.job_id
    )


def session_message(state: SessionState) -> gateway_pb2.UploadSession:
    return gateway_pb2.UploadSession(
        session_id=state.session_id,
        project_id=state.project_id,
        declared_size=state.declared_size,
        durable_offset=state.durable_offset,
        created_at=to_timestamp(state.created_at),
        last_write_at=to_timestamp(state.last_write_at),
    )


def job_message(job: Job) -> gateway_pb2.Job:
    return gateway_pb2.Job(
        job_id=job.job_id,
        project_id=job.project_id,
        media_id=job.media_id,
        state=gateway_pb2.JobState.ValueType(job.state),
        frames_done=job.frames_done,
        frames_total=job.frames_total,
        percent=job.percent,
        eta_seconds=job.eta_seconds,
        attempts=job.attempts,
        error=job.error,
        started_by_account_id=job.started_by_account_id,
        created_at=to_timestamp(job.created_at),
        started_at=to_timestamp(job.started_at) if job.started_at else None,
        finished_at=to_timestamp(job.finished_at) if job.finished_at else None,
        segments=[
            gateway_pb2.JobSegment(
                index=segment.index,
                start_seconds=segment.start_seconds,
                end_seconds=segment.end_seconds,
                state=gateway_pb2.JobState.ValueType(segment.state),
                replica=segment.replica,
                attempts=segment.attempts,
                frames_done=segment.frames_done,
            )
            for segment in job.segments
        ],
    )


# -- erasure --------------------------------------------------------------------------------------


def erasure_step_message(step: ErasureStep) -> gateway_pb2.ErasureStep:
    return gateway_pb2.ErasureStep(
        name=step.name, count=step.count, completed_at=to_timestamp(step.completed_at)
    )


# -- projects, media, reviews and the clearance report ------------------------------------------


def project_message(project: Project) -> gateway_pb2.Project:
    return gateway_pb2.Project(
        project_id=project.project_id,
        display_name=project.display_name,
        owner_account_id=project.owner_account_id,
        role=gateway_pb2.ProjectRole.ValueType(project.role),
        created_at=to_timestamp(project.created_at),
        pending=project.pending,
    )


def collaborator_message(
    collaborator: Collaborator, profile: Account | None = None
) -> gateway_pb2.Collaborator:
    """A collaborator, with its account's name and email where the profile is given."""
    return gateway_pb2.Collaborator(
        project_id=collaborator.project_id,
        account_id=collaborator.account_id,
        role=gateway_pb2.ProjectRole.ValueType(collaborator.role),
        invited_at=to_timestamp(collaborator.invited_at),
        invited_by_key_id=collaborator.invited_by_key_id,
        accepted_at=to_timestamp(collaborator.accepted_at),
        account_name=profile.name if profile else "",
        account_email=profile.email if profile else "",
    )


def media_summary_message(media: MediaSummary) -> gateway_pb2.MediaSummary:
    return gateway_pb2.MediaSummary(
        media_id=media.media_id,
        project_id=media.project_id,
        filename=media.filename,
        kind=common_pb2.MediaKind.ValueType(media.kind),
        content_type=media.content_type,
        created_at=to_timestamp(media.created_at),
        face_count=media.face_count,
        cleared_faces=media.cleared_faces,
        possible_faces=media.possible_faces,
        unknown_faces=media.unknown_faces,
        undecided_faces=media.undecided_faces,
        uploaded_by_account_id=media.uploaded_by_account_id,
    )


def decision_message(decision: Decision) -> gateway_pb2.ReviewDecisionRecord:
    return gateway_pb2.ReviewDecisionRecord(
        decision_id=decision.decision_id,
        media_id=decision.media_id,
        face_index=decision.face_index,
        decision=common_pb2.ReviewDecision.ValueType(decision.decision),
        note=decision.note,
        decided_by_account_id=decision.decided_by_account_id,
        decided_by_key_id=decision.decided_by_key_id,
        decided_at=to_timestamp(decision.decided_at),
        decided_by_name=decision.decided_by_name,
    )


def report_media_message(media: ReportMedia) -> gateway_pb2.ClearanceReportMedia:
    return gateway_pb2.ClearanceReportMedia(
        media=media_summary_message(media.summary),
        faces=[
            gateway_pb2.ClearanceReportFace(
                result=face.result,
                decision=decision_message(face.decision) if face.decision else None,
                release_form=gateway_pb2.ReleaseFormStatus.ValueType(face.release_form),
            )
            for face in media.faces
        ],
    )


# -- webhooks and the access log ------------------------------------------------------------------


def webhook_message(webhook: Webhook) -> gateway_pb2.Webhook:
    return gateway_pb2.Webhook(
        webhook_id=webhook.webhook_id,
        url=webhook.url,
        event_types=webhook.event_types,
        created_at=to_timestamp(webhook.created_at),
        disabled_at=to_timestamp(webhook.disabled_at),
        previous_secret_expires_at=to_timestamp(webhook.previous_secret_expires_at),
    )


def access_entry_message(entry: AccessEntry) -> gateway_pb2.AccessLogEntry:
    return gateway_pb2.AccessLogEntry(
        sequence=entry.sequence,
        account_id=entry.account_id,
        api_key_id=entry.api_key_id,
        peer=entry.peer,
        rpc=entry.rpc,
        project_id=entry.project_id,
        media_id=entry.media_id,
        status_code=entry.status_code,
        occurred_at=to_timestamp(entry.occurred_at),
    )
