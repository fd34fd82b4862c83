"""The gateway's settings: every `MIXIP_GATEWAY_*` variable it reads, read once at start-up.

A bad value is a `ConfigError` naming the variable, raised by `GatewaySettings.load` (never
later). Besides these, the gateway reads what every service reads (`ServerConfig`: data dir,
listen address, database URL, MIXIP_TLS_DIR, ...), MIXIP_INSECURE_DEV (its internal port
without mutual TLS, on loopback only) and the four peers' MIXIP_<SERVICE>_ADDRESS
(`mixip.runtime.client.peer_channel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mixip.runtime.config import ADMIN_KEY_FILE, ConfigError, Env, ServerConfig, variable
from mixip.runtime.limits import GiB, MiB
from mixip.runtime.vault import VaultSettings

DEFAULT_RETENTION_DAYS = 365
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 3650
DEFAULT_ACCESS_LOG_RETENTION_DAYS = 90
DEFAULT_JOB_RETENTION_DAYS = 30
DEFAULT_VAULT = VaultSettings(kek_file=Path("var-keys") / "gateway-vault.key", name="gateway")


@dataclass(frozen=True)
class GatewaySettings:
    max_upload_bytes: int = 64 * MiB
    """MIXIP_GATEWAY_MAX_UPLOAD_BYTES (64 MiB): the largest upload or enrollment accepted."""

    max_chunk_bytes: int = 4 * MiB
    """MIXIP_GATEWAY_MAX_CHUNK_BYTES (4 MiB, at least 1024): the largest chunk of a stream."""

    max_session_bytes: int = 10 * GiB
    """MIXIP_GATEWAY_MAX_SESSION_BYTES (10 GiB): the largest media a resumable upload session
    takes (docs/jobs.md)."""

    session_idle_hours: float = 24.0
    """MIXIP_GATEWAY_SESSION_IDLE_HOURS (24, more than 0): an upload session without a byte
    appended for this long is abandoned; the retention purge deletes it and its parts."""

    admin_key_file: Path = Path("var") / ADMIN_KEY_FILE
    """<key dir>/gateway-admin.key (see MIXIP_KEY_DIR): where the admin credential is kept
    when MIXIP_GATEWAY_ADMIN_KEY is not set (made, mode 0600, at the first start)."""

    admin_key: str | None = None
    """MIXIP_GATEWAY_ADMIN_KEY: the admin credential; setting a new one revokes the old."""

    media_retention_days: int = DEFAULT_RETENTION_DAYS
    """MIXIP_GATEWAY_MEDIA_RETENTION_DAYS (365, 1-3650): how long stored media and their
    results are kept for accounts without their own period."""

    internal_listen: str = "127.0.0.1:0"
    """MIXIP_GATEWAY_INTERNAL_LISTEN (127.0.0.1:50056): the internal port (mutual TLS with
    caller rules when MIXIP_TLS_DIR is set, loopback only otherwise)."""

    erasure_resume_seconds: float = 300.0
    """MIXIP_GATEWAY_ERASURE_RESUME_SECONDS (300): how often abandoned erasures are finished
    (they also are at start-up); 0: only at start-up."""

    audit_outbox_poll_seconds: float = 1.0
    """MIXIP_GATEWAY_AUDIT_OUTBOX_POLL_SECONDS (1, at least 0.05): how often the audit outbox's
    deliverer looks for owed events (every upload's commit also wakes it)."""

    storage: Literal["local", "s3"] = "local"
    """MIXIP_GATEWAY_STORAGE (local | s3): where uploaded media are stored, encrypted."""

    media_dir: Path = Path("var") / "media"
    """MIXIP_GATEWAY_MEDIA_DIR (<data dir>/media): the local store's directory."""

    kek_file: Path = Path("var-keys") / "gateway-kek.key"
    """MIXIP_GATEWAY_KEK_FILE (<key dir>/gateway-kek.key, see MIXIP_KEY_DIR): the local store's
    key-encryption key."""

    s3_bucket: str | None = None
    """MIXIP_GATEWAY_S3_BUCKET: the bucket (required with MIXIP_GATEWAY_STORAGE=s3)."""

    s3_kms_key_id: str | None = None
    """MIXIP_GATEWAY_S3_KMS_KEY_ID: the KMS key of SSE-KMS (required with s3)."""

    s3_prefix: str = "media/"
    """MIXIP_GATEWAY_S3_PREFIX (media/): the object keys' prefix."""

    aws_endpoint_url: str | None = None
    """MIXIP_AWS_ENDPOINT_URL: another S3 endpoint (tests, S3-compatible stores)."""

    tls_cert: Path | None = None
    """MIXIP_GATEWAY_TLS_CERT: server TLS certificate of the client-facing port (with
    MIXIP_GATEWAY_TLS_KEY; neither: plaintext)."""

    tls_key: Path | None = None
    """MIXIP_GATEWAY_TLS_KEY: its private key."""

    access_log_retention_days: int = DEFAULT_ACCESS_LOG_RETENTION_DAYS
    """MIXIP_GATEWAY_ACCESS_LOG_RETENTION_DAYS (90, 1-3650): how long access-log entries are
    kept (the retention service's purge deletes older ones through PurgeAccessLog)."""

    webhooks_allow_private: bool = False
    """MIXIP_GATEWAY_WEBHOOKS_ALLOW_PRIVATE (false): development only: webhook URLs may be
    http and reach private, loopback and link-local addresses (a receiver on this machine)."""

    webhooks_timeout_seconds: float = 10.0
    """MIXIP_GATEWAY_WEBHOOKS_TIMEOUT_SECONDS (10, 0.1-60): how long a delivery waits to connect
    and for the answer before it counts as failed (and is retried)."""

    webhooks_secret_overlap_hours: float = 24.0
    """MIXIP_GATEWAY_WEBHOOKS_SECRET_OVERLAP_HOURS (24, 0-720): how long after a rotation
    deliveries are signed with the previous secret too."""

    webhooks_retention_days: int = 30
    """MIXIP_GATEWAY_WEBHOOKS_RETENTION_DAYS (30, 1-3650): how long finished webhook deliveries
    (delivered, given up, or to a disabled endpoint) are kept."""

    job_retention_days: int = DEFAULT_JOB_RETENTION_DAYS
    """MIXIP_GATEWAY_JOB_RETENTION_DAYS (30, 1-3650): how long ended analysis jobs are kept
    (the media purge deletes older ones, docs/jobs.md)."""

    segment_seconds: float = 60.0
    """MIXIP_GATEWAY_SEGMENT_SECONDS (60, >= 0.1): a video job is cut into segments of about
    this length (at the first keyframe after it), each analysed by one matcher call."""

    segment_overlap_seconds: float = 2.0
    """MIXIP_GATEWAY_SEGMENT_OVERLAP_SECONDS (2, >= 0): seconds a segment's analysis starts
    before the segment, so that tracks cross the cut as a whole pass would link them."""

    segment_concurrency: int = 2
    """MIXIP_GATEWAY_SEGMENT_CONCURRENCY (2, >= 1): a video job's segments analysed at once,
    spread round-robin over the matcher replicas the channel resolves."""

    vault: VaultSettings = DEFAULT_VAULT
    """The vault sealing what names a talent (gateway/seals.py): MIXIP_GATEWAY_VAULT_KEK_FILE
    (<key dir>/gateway-vault.key), MIXIP_GATEWAY_VAULT_KMS_KEY_ID, ... (VaultSettings)."""

    @classmethod
    def load(cls, config: ServerConfig, env: Env) -> GatewaySettings:
        days = env.int("MIXIP_GATEWAY_MEDIA_RETENTION_DAYS", DEFAULT_RETENTION_DAYS, minimum=1)
        if days > MAX_RETENTION_DAYS:
            raise ConfigError(
                f"MIXIP_GATEWAY_MEDIA_RETENTION_DAYS={days} must be at most {MAX_RETENTION_DAYS}"
            )
        log_days = env.int(
            "MIXIP_GATEWAY_ACCESS_LOG_RETENTION_DAYS",
            DEFAULT_ACCESS_LOG_RETENTION_DAYS,
            minimum=MIN_RETENTION_DAYS,
        )
        if log_days > MAX_RETENTION_DAYS:
            raise ConfigError(
                f"MIXIP_GATEWAY_ACCESS_LOG_RETENTION_DAYS={log_days} must be at most "
                f"{MAX_RETENTION_DAYS}"
            )
        job_days = env.int(
            "MIXIP_GATEWAY_JOB_RETENTION_DAYS",
            DEFAULT_JOB_RETENTION_DAYS,
            minimum=MIN_RETENTION_DAYS,
        )
        if job_days > MAX_RETENTION_DAYS:
            raise ConfigError(
                f"MIXIP_GATEWAY_JOB_RETENTION_DAYS={job_days} must be at most {MAX_RETENTION_DAYS}"
            )
        storage = env.choice("MIXIP_GATEWAY_STORAGE", "local", ("local", "s3"))
        bucket = env.optional("MIXIP_GATEWAY_S3_BUCKET")
        key_id = env.optional("MIXIP_GATEWAY_S3_KMS_KEY_ID")
        if storage == "s3" and (not bucket or not key_id):
            raise ConfigError(
                "MIXIP_GATEWAY_STORAGE=s3 needs MIXIP_GATEWAY_S3_BUCKET and "
                "MIXIP_GATEWAY_S3_KMS_KEY_ID"
            )
        cert, key = env.optional("MIXIP_GATEWAY_TLS_CERT"), env.optional("MIXIP_GATEWAY_TLS_KEY")
        if bool(cert) != bool(key):
            raise ConfigError(
                "set both MIXIP_GATEWAY_TLS_CERT and MIXIP_GATEWAY_TLS_KEY, or neither"
            )
        hook_days = env.int("MIXIP_GATEWAY_WEBHOOKS_RETENTION_DAYS", 30, minimum=1)
        hook_timeout = env.float("MIXIP_GATEWAY_WEBHOOKS_TIMEOUT_SECONDS", 10.0, minimum=0.1)
        overlap = env.float("MIXIP_GATEWAY_WEBHOOKS_SECRET_OVERLAP_HOURS", 24.0, minimum=0.0)
        for name, value, most in (
            ("MIXIP_GATEWAY_WEBHOOKS_RETENTION_DAYS", hook_days, MAX_RETENTION_DAYS),
            ("MIXIP_GATEWAY_WEBHOOKS_TIMEOUT_SECONDS", hook_timeout, 60),
            ("MIXIP_GATEWAY_WEBHOOKS_SECRET_OVERLAP_HOURS", overlap, 720),
        ):
            if value > most:
                raise ConfigError(f"{name}={value} must be at most {most}")
        root = config.data_dir
        return cls(
            max_upload_bytes=env.int("MIXIP_GATEWAY_MAX_UPLOAD_BYTES", 64 * MiB, minimum=1),
            max_chunk_bytes=env.int("MIXIP_GATEWAY_MAX_CHUNK_BYTES", 4 * MiB, minimum=1024),
            max_session_bytes=env.int("MIXIP_GATEWAY_MAX_SESSION_BYTES", 10 * GiB, minimum=1),
            session_idle_hours=env.float("MIXIP_GATEWAY_SESSION_IDLE_HOURS", 24.0, minimum=0.01),
            admin_key_file=config.key_dir / ADMIN_KEY_FILE,
            admin_key=env.optional("MIXIP_GATEWAY_ADMIN_KEY"),
            media_retention_days=days,
            internal_listen=env.str(variable("gateway_internal", "LISTEN"), "127.0.0.1:50056"),
            erasure_resume_seconds=env.float(
                "MIXIP_GATEWAY_ERASURE_RESUME_SECONDS", 300.0, minimum=0.0
            ),
            audit_outbox_poll_seconds=env.float(
                "MIXIP_GATEWAY_AUDIT_OUTBOX_POLL_SECONDS", 1.0, minimum=0.05
            ),
            storage="s3" if storage == "s3" else "local",
            media_dir=Path(env.str("MIXIP_GATEWAY_MEDIA_DIR", str(root / "media"))),
            kek_file=Path(
                env.str("MIXIP_GATEWAY_KEK_FILE", str(config.key_dir / "gateway-kek.key"))
            ),
            s3_bucket=bucket,
            s3_kms_key_id=key_id,
            s3_prefix=env.str("MIXIP_GATEWAY_S3_PREFIX", "media/"),
            aws_endpoint_url=env.optional("MIXIP_AWS_ENDPOINT_URL"),
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
            access_log_retention_days=log_days,
            webhooks_allow_private=env.bool("MIXIP_GATEWAY_WEBHOOKS_ALLOW_PRIVATE", False),
            webhooks_timeout_seconds=hook_timeout,
            webhooks_secret_overlap_hours=overlap,
            webhooks_retention_days=hook_days,
            job_retention_days=job_days,
            segment_seconds=env.float("MIXIP_GATEWAY_SEGMENT_SECONDS", 60.0, minimum=0.1),
            segment_overlap_seconds=env.float(
                "MIXIP_GATEWAY_SEGMENT_OVERLAP_SECONDS", 2.0, minimum=0.0
            ),
            segment_concurrency=env.int("MIXIP_GATEWAY_SEGMENT_CONCURRENCY", 2, minimum=1),
            vault=VaultSettings.load("gateway", config, env),
        )
