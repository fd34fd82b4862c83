"""The gateway's tables: accounts and API keys, stored media and their results, erasure
receipts (its own database; no other service reads it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    func,
    select,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql import Executable

from mixip.common.v1 import common_pb2
from mixip.runtime.db import UtcDateTime
from mixip.runtime.vault import TalentKey, TalentKeyColumns, VaultStateColumns


class Base(DeclarativeBase):
    pass


# Sequences: SQLite only auto-increments an INTEGER PRIMARY KEY.
LogSequence = BigInteger().with_variant(Integer, "sqlite")


class AccountRow(Base):
    __tablename__ = "gateway_accounts"

    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    # The contact email (personal data), sealed under the account's own data key
    # (gateway/seals.py: `ACCOUNT_SUBJECT`), which a closure destroys; NULL when none.
    email_ref: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    sealed_email: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Set by the first step of a closure (gateway/closures.py): its keys are revoked then, and
    # the row goes with the rest of the account when the closure completes.
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AccountClosureRow(Base):
    """An account's closure (gateway/closures.py), journaled in the transaction that fences the
    account (keys revoked, collaborations ended) so a resumer finishes it; kept as its receipt
    once completed: ids, times and counts, nothing personal (the account row is gone by then).
    `pending_objects` lists the stored objects whose rows the closure deleted and whose bytes
    it has still to delete (random object keys, JSON), so a crash in between loses none."""

    __tablename__ = "gateway_account_closures"

    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    receipt_id: Mapped[str] = mapped_column(String(32), unique=True)
    requested_by_key_id: Mapped[str] = mapped_column(String(32))  # the account's or the admin's
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    pending_objects: Mapped[str | None] = mapped_column(Text)
    # Talents erased so far (counted as each erasure completes, so a resumed closure counts
    # each talent once).
    talents_erased: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[str] = mapped_column(Text, default="[]")  # JSON: [{"name", "count", ...}]
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ApiKeyRow(Base):
    """An API key: its public id and the SHA-256 of its secret part (never the secret)."""

    __tablename__ = "gateway_api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # NULL for the admin credential, which belongs to no account.
    account_id: Mapped[str | None] = mapped_column(ForeignKey("gateway_accounts.account_id"))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class MediaRow(Base):
    __tablename__ = "gateway_media"

    media_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str] = mapped_column(String(128))
    # The caller's file name (it may name a talent) sealed under the media's own data key
    # (gateway/seals.py, `filename_ref` names it), which an erasure of a talent matched in the
    # media destroys; NULL when none. Before sealing: the name in clear, NULL once sealed.
    legacy_filename: Mapped[str | None] = mapped_column("filename", String(255))
    filename_ref: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    sealed_filename: Mapped[bytes | None] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String(64))
    kind: Mapped[int] = mapped_column(SmallInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(64), index=True)
    engine: Mapped[str] = mapped_column(String(16), default="")
    duration_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # The account that uploaded it: the owner or one of the project's uploaders (NULL for media
    # uploaded before projects had collaborators: the owner). Request ids are the uploader's.
    uploaded_by_account_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index(
            "ix_gateway_media_request",
            "account_id",
            "uploaded_by_account_id",
            "request_id",
            unique=True,
        ),
        # The retention purge reads the oldest media first.
        Index("ix_gateway_media_created", "created_at", "media_id"),
        # ListMedia: a project's media, newest first.
        Index("ix_gateway_media_project", "account_id", "project_id", "created_at", "media_id"),
    )


class UploadDigestRow(Base):
    """The content digest (project and media bytes) of an upload made with a request id, so a
    reused request id with other content is refused instead of answered with the first
    upload's results (mixip.runtime.idempotency). Deleted with its media."""

    __tablename__ = "gateway_upload_digests"

    media_id: Mapped[str] = mapped_column(
        ForeignKey("gateway_media.media_id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(64))


class UploadSessionRow(Base):
    """An open resumable upload (gateway/upload_sessions.py): where its bytes go in the media
    store. The bytes themselves say how far it got (the store's durable parts); the row says
    when it was last written, for the retention of abandoned sessions."""

    __tablename__ = "gateway_upload_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The owner of the project (the media's account) and the account that created the session
    # (the only one that may write or finish it).
    account_id: Mapped[str] = mapped_column(String(64))
    created_by_account_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str] = mapped_column(String(128))
    filename: Mapped[str] = mapped_column(String(255))
    declared_size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(64), index=True)
    # The store's id of the upload (an S3 multipart upload id; empty for the local store).
    upload_id: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_write_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    # True once the store made its parts one object (finishing went that far).
    completed: Mapped[bool] = mapped_column(Boolean, default=False)


class VaultStateRow(VaultStateColumns, Base):
    """The gateway vault's one row (mixip/runtime/vault.py): its key version and wrapped keys."""

    __tablename__ = "gateway_vault_state"


class TalentKeyRow(TalentKeyColumns, Base):
    """One talent's data key (and each account's own, under `ACCOUNT_SUBJECT`), sealed under
    the vault's key: what the gateway stores naming a talent is sealed under it
    (gateway/seals.py)."""

    __tablename__ = "gateway_talent_keys"


class MediaFaceRow(Base):
    """One face result of a stored media, as returned to the client. Its talent is stored as
    its key's ref (`talent_ref`) and the id sealed under the talent's data key; a face
    whose key is gone reads as UNKNOWN / TALENT_ERASED (gateway/seals.py)."""

    __tablename__ = "gateway_media_faces"

    media_id: Mapped[str] = mapped_column(
        ForeignKey("gateway_media.media_id", ondelete="CASCADE"), primary_key=True
    )
    face_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    label: Mapped[int] = mapped_column(SmallInteger)
    reason: Mapped[int] = mapped_column(SmallInteger)
    similarity: Mapped[float] = mapped_column(Float)
    # Before sealing: the talent id in clear; NULL once sealed at start-up (gateway/seals.py).
    legacy_talent_id: Mapped[str | None] = mapped_column("talent_id", String(128))
    talent_ref: Mapped[bytes | None] = mapped_column(LargeBinary(32))  # NULL: UNKNOWN or erased
    sealed_talent_id: Mapped[bytes | None] = mapped_column(LargeBinary)
    box: Mapped[str] = mapped_column(String(64))  # "x,y,w,h"
    detection_score: Mapped[float] = mapped_column(Float)
    best_frame_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    ranges: Mapped[str] = mapped_column(Text, default="")  # "s-e;s-e" (video)

    __table_args__ = (Index("ix_gateway_faces_talent_ref", "account_id", "talent_ref"),)


class ErasureReceiptRow(Base):
    """Proof that an erasure ran: when and how much, never whom (no talent id)."""

    __tablename__ = "gateway_erasure_receipts"

    receipt_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    completed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    steps: Mapped[str] = mapped_column(Text)  # JSON: [{"name", "count", "completed_at"}]
    request_id: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (Index("ix_gateway_receipt_request", "account_id", "request_id", unique=True),)


class AccountRetentionRow(Base):
    """An account's own retention period for stored media and their results (absent: the
    gateway's default, MIXIP_GATEWAY_MEDIA_RETENTION_DAYS)."""

    __tablename__ = "gateway_account_retention"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("gateway_accounts.account_id"), primary_key=True
    )
    retention_days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_by: Mapped[str] = mapped_column(String(32))  # the admin key id


class ErasureIntentRow(Base):
    """An erasure, journaled before its first step so that it finishes even if its caller
    stops retrying (the resumer runs the steps of every intent not completed).

    The talent id is kept, sealed under the talent's data key, only while the erasure is in
    progress (the resumer needs it); the completion destroys the key. `talent_key` (HMAC of
    account and talent under the gateway's fence key) lets an upload
    that started before the erasure refuse the talent at commit; it is cleared `FENCE_WINDOW`
    after completion, once no upload that started before the erasure can still commit."""

    __tablename__ = "gateway_erasure_intents"

    intent_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    # Before sealing: the talent id in clear; NULL once sealed at start-up (gateway/seals.py).
    legacy_talent_id: Mapped[str | None] = mapped_column("talent_id", String(128))
    talent_ref: Mapped[bytes | None] = mapped_column(LargeBinary(32))  # NULL once completed
    sealed_talent_id: Mapped[bytes | None] = mapped_column(LargeBinary)  # NULL once completed
    talent_key: Mapped[bytes | None] = mapped_column(LargeBinary(32))  # NULL after the window
    receipt_id: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_gateway_intents_fence", "account_id", "talent_key"),
        Index("ix_gateway_intents_open", "completed_at"),
    )


class GatewaySecretRow(Base):
    """A secret of the gateway made at first start (the erasure fence's HMAC key)."""

    __tablename__ = "gateway_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ProjectRow(Base):
    """A project, owned by one account (its id is unique within the owner's account)."""

    __tablename__ = "gateway_projects"

    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ProjectMemberRow(Base):
    """A collaborator of a project: another account invited with a role, pending until it
    accepts. An account has accepted at most one project per project id (and owns none with
    that id), so the id it names resolves to one project; pending invitations count for
    nothing."""

    __tablename__ = "gateway_project_members"

    owner_account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    member_account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[int] = mapped_column(SmallInteger)  # gateway.v1.ProjectRole
    invited_at: Mapped[datetime] = mapped_column(UtcDateTime)
    invited_by_key_id: Mapped[str] = mapped_column(String(32))
    accepted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # NULL: pending

    __table_args__ = (
        ForeignKeyConstraint(
            ["owner_account_id", "project_id"],
            ["gateway_projects.account_id", "gateway_projects.project_id"],
            ondelete="CASCADE",
        ),
        Index("ix_gateway_members_member", "member_account_id", "project_id"),
    )


class ReviewDecisionRow(Base):
    """One review decision on a face of a media (append-only: the latest per face is current).
    Deleted with its media."""

    __tablename__ = "gateway_review_decisions"

    # The order decisions were recorded in (decided_at may repeat within a clock tick).
    sequence: Mapped[int] = mapped_column(LogSequence, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(String(32), unique=True)
    account_id: Mapped[str] = mapped_column(String(64))  # the media's owner
    media_id: Mapped[str] = mapped_column(
        ForeignKey("gateway_media.media_id", ondelete="CASCADE"), index=True
    )
    face_index: Mapped[int] = mapped_column(Integer)
    decision: Mapped[int] = mapped_column(SmallInteger)  # common.v1.ReviewDecision
    # Before sealing: the note in clear; NULL once sealed at start-up (gateway/seals.py).
    legacy_note: Mapped[str | None] = mapped_column("note", Text)
    # The note sealed under the face's talent's data key, else the account's (`note_ref`
    # names which); NULL for no note.
    note_ref: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    sealed_note: Mapped[bytes | None] = mapped_column(LargeBinary)
    decided_by_account_id: Mapped[str] = mapped_column(String(64))
    decided_by_key_id: Mapped[str] = mapped_column(String(32))
    decided_at: Mapped[datetime] = mapped_column(UtcDateTime)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # The retry digest of a decision made with a request id (mixip.runtime.idempotency), keyed
    # with the note's key, else the account's (gateway/seals.py: `decision_digest`). Before
    # keying: a plain SHA-256 (`legacy_digest`), NULL once keyed at start-up.
    legacy_digest: Mapped[str | None] = mapped_column("digest", String(64))
    digest: Mapped[str | None] = mapped_column("keyed_digest", String(64))

    __table_args__ = (
        Index("ix_gateway_decisions_request", "decided_by_account_id", "request_id", unique=True),
    )


class AuditOutboxRow(Base):
    """An audit event owed to the audit service, written in the transaction that stores the
    upload's results (under the erasure fence lock) and deleted once the audit service has
    recorded it (gateway/audit_outbox.py). `sealed_event` is the serialized `MatchEventInput`,
    which names the talent, sealed under the account's data key; a row lives only until its
    delivery (seconds), and an erasure delivers the account's rows before it shreds the
    talent's salt."""

    __tablename__ = "gateway_audit_outbox"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    account_id: Mapped[str] = mapped_column(String(64))
    # Before sealing: the event in clear; NULL once sealed at start-up (gateway/seals.py).
    legacy_event: Mapped[bytes | None] = mapped_column("event", LargeBinary)
    sealed_event: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A deliverer's claim (another replica skips the row until then); after a failure, the
    # time of the next attempt.
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_gateway_audit_outbox_account", "account_id", "id"),
        Index("ix_gateway_audit_outbox_due", "lease_until"),
    )


class WebhookRow(Base):
    """An account's webhook endpoint (gateway/webhooks.py). Its signing secret, and for a while
    after a rotation the previous one, are sealed under the account's data key; the URL is the
    account's, not a talent's."""

    __tablename__ = "gateway_webhooks"

    webhook_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[str] = mapped_column(String(256))  # comma-separated; "": every type
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_previous_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # it answered 410 Gone
    request_id: Mapped[str | None] = mapped_column(String(128))
    rotation_request_id: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_gateway_webhooks_account", "account_id", "created_at", "webhook_id"),
        Index("ix_gateway_webhooks_request", "account_id", "request_id", unique=True),
    )


class WebhookDeliveryRow(Base):
    """One event owed to (or sent to) one endpoint: the webhooks' outbox, written in the
    transaction of the event it announces. The payload holds ids only (never a talent id).
    `due_at` is the next attempt's time, or a deliverer's lease; a finished delivery
    (delivered, failed after the last retry, or its endpoint disabled) has `finished_at` and is
    purged MIXIP_GATEWAY_WEBHOOKS_RETENTION_DAYS later."""

    __tablename__ = "gateway_webhook_deliveries"

    id: Mapped[int] = mapped_column(LogSequence, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(32))  # the webhook-id header, every attempt
    webhook_id: Mapped[str] = mapped_column(
        ForeignKey("gateway_webhooks.webhook_id", ondelete="CASCADE")
    )
    account_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed | disabled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_outcome: Mapped[str | None] = mapped_column(String(64))  # "HTTP 500", "timeout", ...

    __table_args__ = (
        Index("ix_gateway_webhook_deliveries_due", "state", "due_at"),
        Index("ix_gateway_webhook_deliveries_webhook", "webhook_id", "state"),
        Index("ix_gateway_webhook_deliveries_finished", "finished_at"),
    )


class JobRow(Base):
    """An analysis job (gateway/jobs.py): the stored bytes of an upload made `as_job`, matched
    by whichever gateway replica's worker holds its lease. It names no talent: its results are
    written as the media's, in the commit that ends it DONE. The file name is kept only until
    that commit (it goes to the media row); finished rows are purged after
    MIXIP_GATEWAY_JOB_RETENTION_DAYS. A video's time segments are rows of their own
    (`JobSegmentRow`), each with its own lease."""

    __tablename__ = "gateway_jobs"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))  # the project's owner
    project_id: Mapped[str] = mapped_column(String(128))
    media_id: Mapped[str] = mapped_column(String(64), unique=True)
    started_by_account_id: Mapped[str] = mapped_column(String(64))
    started_by_key_id: Mapped[str] = mapped_column(String(32))  # the audit events' actor
    # The file name, sealed under the media's own key (gateway/seals.py) until the job ends.
    filename_ref: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    sealed_filename: Mapped[bytes | None] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(64), index=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # The content digest of a job started with a request id (mixip.runtime.idempotency).
    digest: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[int] = mapped_column(SmallInteger)  # gateway.v1.JobState
    frames_done: Mapped[int] = mapped_column(BigInteger, default=0)
    frames_total: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(String(64), default="")
    # The worker holding the job (a replica's random id) and until when; a worker that dies
    # stops renewing it, and another claims the job once it has passed. While QUEUED after a
    # failed attempt, `lease_until` is the time of the next attempt.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        # ListJobs: a project's jobs, newest first.
        Index("ix_gateway_jobs_project", "account_id", "project_id", "created_at", "job_id"),
        # The workers' claim: the due jobs of a state.
        Index("ix_gateway_jobs_due", "state", "lease_until"),
        # The retention purge: ended jobs, oldest first.
        Index("ix_gateway_jobs_finished", "finished_at"),
    )


class JobSegmentRow(Base):
    """One time segment of a video job (gateway/jobs.py, docs/jobs.md#segments), analysed by
    one matcher call under its own lease. It holds no result: what the matcher found in it
    stays sealed in the job worker's memory until the stitch. Kept with a DONE job (which
    replica ran what), deleted when the job is cancelled or fails, purged with its job."""

    __tablename__ = "gateway_job_segments"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    segment_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_seconds: Mapped[float] = mapped_column(Float)
    end_seconds: Mapped[float] = mapped_column(Float)
    frames_expected: Mapped[int] = mapped_column(BigInteger)
    frames_done: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[int] = mapped_column(SmallInteger)  # gateway.v1.JobState: QUEUED, RUNNING, DONE
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The matcher replica that ran it last (its MIXIP_INSTANCE), once it answered.
    replica: Mapped[str] = mapped_column(String(128), default="")
    # This segment's current claim (one per matcher call) and until when it holds.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)


# -- queries ------------------------------------------------------------------------------------


def open_erasures(session: Session) -> int:
    """Erasure intents not completed yet (for metrics)."""
    count = session.scalar(select(func.count()).where(ErasureIntentRow.completed_at.is_(None)))
    return int(count or 0)


def account_closed(session: Session, account_id: str) -> bool:
    """Whether a closure of the account has begun (gateway/closures.py): nothing more is kept
    for it."""
    return session.get(AccountClosureRow, account_id) is not None


def affected(session: Session, statement: Executable) -> int:
    """Runs an UPDATE or DELETE; how many rows it changed."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def media_faces(session: Session, media_id: str) -> list[MediaFaceRow]:
    """A media's face results, in face order."""
    return list(
        session.scalars(
            select(MediaFaceRow)
            .where(MediaFaceRow.media_id == media_id)
            .order_by(MediaFaceRow.face_index)
        )
    )


def upload_digest(session: Session, media_id: str) -> str | None:
    digest: str | None = session.scalar(
        select(UploadDigestRow.digest).where(UploadDigestRow.media_id == media_id)
    )
    return digest


def is_referenced(session: Session, storage_key: str) -> bool:
    """Whether a media row, an upload session or a job that has not ended refers to the
    stored object."""
    found = session.scalar(select(MediaRow.media_id).where(MediaRow.storage_key == storage_key))
    if found is None:
        found = session.scalar(
            select(UploadSessionRow.session_id).where(UploadSessionRow.storage_key == storage_key)
        )
    if found is None:
        found = session.scalar(
            select(JobRow.job_id).where(
                JobRow.storage_key == storage_key, JobRow.finished_at.is_(None)
            )
        )
    return found is not None


def talent_results(
    session: Session, account_id: str, talent_ref: bytes
) -> list[tuple[MediaFaceRow, str, datetime]]:
    """(face result, project id, upload time) of every stored result naming the talent (its
    key's ref `talent_ref`), oldest upload first."""
    rows = session.execute(
        select(MediaFaceRow, MediaRow.project_id, MediaRow.created_at)
        .join(MediaRow, MediaRow.media_id == MediaFaceRow.media_id)
        .where(MediaFaceRow.account_id == account_id, MediaFaceRow.talent_ref == talent_ref)
        .order_by(MediaRow.created_at, MediaFaceRow.face_index)
    ).all()
    return [(face, project_id, created_at) for face, project_id, created_at in rows]


def face_decisions(session: Session, media_id: str, face_index: int) -> list[ReviewDecisionRow]:
    """The review decisions on one face of a media, oldest first."""
    return list(
        session.scalars(
            select(ReviewDecisionRow)
            .where(
                ReviewDecisionRow.media_id == media_id,
                ReviewDecisionRow.face_index == face_index,
            )
            .order_by(ReviewDecisionRow.sequence)
        )
    )


# -- face results: row <-> the client's FaceResult -----------------------------------------------


def face_context(media_id: str, face_index: int) -> bytes:
    """What a face's sealed talent id is bound to: its row."""
    return f"gateway_media_faces/{media_id}/{face_index}".encode()


def face_row(
    account_id: str, media_id: str, face: common_pb2.FaceResult, key: TalentKey | None
) -> MediaFaceRow:
    """A face result as stored: its talent (if any) sealed under `key`, the talent's."""
    b = face.box
    sealed = None
    if key is not None:
        sealed = key.seal_text(face.talent_id, face_context(media_id, face.face_index))
    return MediaFaceRow(
        media_id=media_id,
        face_index=face.face_index,
        account_id=account_id,
        label=face.label,
        reason=face.reason,
        similarity=face.similarity,
        talent_ref=key.ref if key else None,
        sealed_talent_id=sealed,
        box=f"{b.x},{b.y},{b.width},{b.height}",
        detection_score=face.detection_score,
        best_frame_seconds=face.best_frame_seconds,
        ranges=";".join(f"{r.start_seconds}-{r.end_seconds}" for r in face.ranges),
    )


def face_result(row: MediaFaceRow, key: TalentKey | None) -> common_pb2.FaceResult:
    """A stored face result as the client sees it, its talent opened with `key`; a face whose
    talent's key is gone (None) as UNKNOWN / TALENT_ERASED, without the talent."""
    x, y, w, h = (int(v) for v in row.box.split(","))
    ranges = []
    for part in filter(None, row.ranges.split(";")):
        start, end = part.split("-")
        ranges.append(common_pb2.TimeRange(start_seconds=float(start), end_seconds=float(end)))
    sealed = row.sealed_talent_id if row.talent_ref is not None else None
    talent = ""
    if sealed is not None and key is not None:
        talent = key.open_text(sealed, face_context(row.media_id, row.face_index))
    face = common_pb2.FaceResult(
        face_index=row.face_index,
        box=common_pb2.BoundingBox(x=x, y=y, width=w, height=h),
        label=row.label,  # type: ignore[arg-type]
        reason=row.reason,  # type: ignore[arg-type]
        similarity=row.similarity,
        talent_id=talent,
        ranges=ranges,
        best_frame_seconds=row.best_frame_seconds,
        detection_score=row.detection_score,
    )
    return erased_face(face) if sealed is not None and key is None else face


def erased_face(face: common_pb2.FaceResult) -> common_pb2.FaceResult:
    """What a face looks like once its talent is erased, wherever it is shown, kept or audited:
    UNKNOWN / TALENT_ERASED, without the talent or its similarity; where and when it was seen
    stay. The one rule for a result an upload or a job keeps under the erasure fence
    (gateway/uploads.py), a review decision's event (gateway/reviews.py), a stored face whose
    talent's key is gone (`face_result`) and the erasure's scrub (`erased_face_columns`)."""
    return common_pb2.FaceResult(
        face_index=face.face_index,
        box=face.box,
        label=common_pb2.FACE_LABEL_UNKNOWN,
        reason=common_pb2.LABEL_REASON_TALENT_ERASED,
        ranges=face.ranges,
        best_frame_seconds=face.best_frame_seconds,
        detection_score=face.detection_score,
    )


def erased_face_columns() -> dict[str, Any]:
    """`erased_face` as the values of a stored face (MediaFaceRow) that the erasure's scrub sets:
    its label, reason and similarity, and no talent (neither its key's ref nor its sealed id)."""
    erased = erased_face(common_pb2.FaceResult())
    return {
        "label": erased.label,
        "reason": erased.reason,
        "similarity": erased.similarity,
        "talent_ref": None,
        "sealed_talent_id": None,
    }


class AccessLogRow(Base):
    """One call to the gateway's client port (gateway/access_log.py): who called, from where,
    which RPC on which project and media, and how it ended. Never a talent id, media bytes,
    notes or a key's secret. `owner_account_id` is the tenant whose data the call touched (the
    caller's own account unless the call worked on another account's project); the owner and
    the caller both see the entry. Purged after MIXIP_GATEWAY_ACCESS_LOG_RETENTION_DAYS."""

    __tablename__ = "gateway_access_log"

    sequence: Mapped[int] = mapped_column(LogSequence, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(64))  # "" when not authenticated
    owner_account_id: Mapped[str] = mapped_column(String(64))
    api_key_id: Mapped[str] = mapped_column(String(32))
    peer: Mapped[str] = mapped_column(String(128))
    rpc: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(128))
    media_id: Mapped[str] = mapped_column(String(128))
    status_code: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        # ListAccessLog reads an account's entries in order, as caller and as owner.
        Index("ix_gateway_access_log_account", "account_id", "sequence"),
        Index("ix_gateway_access_log_owner", "owner_account_id", "sequence"),
        # The purge deletes the oldest first.
        Index("ix_gateway_access_log_time", "occurred_at", "sequence"),
    )
