"""Every variable the audit service reads, in one frozen dataclass read once at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mixip.runtime.config import ConfigError, Env, ServerConfig


@dataclass(frozen=True)
class AuditSettings:
    """The audit service's settings (docs/configuration.md)."""

    kek_file: Path
    """MIXIP_AUDIT_KEK_FILE (default <key dir>/audit-kek.key, see MIXIP_KEY_DIR): the vault's
    first key file; rotations write versioned files next to it, so the directory must be the
    vault's own."""
    kms_key_id: str | None
    """MIXIP_AUDIT_KMS_KEY_ID: use AWS KMS instead of key files; the vault's first KMS key,
    dedicated to it (the first rotation schedules its deletion)."""
    aws_region: str | None
    """AWS_REGION (else AWS_DEFAULT_REGION): the KMS region."""
    aws_endpoint_url: str | None
    """MIXIP_AWS_ENDPOINT_URL: another AWS endpoint (tests, LocalStack)."""
    kms_deletion_days: int = 7
    """MIXIP_AUDIT_KMS_DELETION_DAYS: the pending window of retired KMS keys, 7-30 days."""

    @classmethod
    def load(cls, config: ServerConfig, env: Env) -> AuditSettings:
        return cls(
            kek_file=Path(env.str("MIXIP_AUDIT_KEK_FILE", str(config.key_dir / "audit-kek.key"))),
            kms_key_id=env.optional("MIXIP_AUDIT_KMS_KEY_ID"),
            aws_region=env.optional("AWS_REGION") or env.optional("AWS_DEFAULT_REGION"),
            aws_endpoint_url=env.optional("MIXIP_AWS_ENDPOINT_URL"),
            kms_deletion_days=_deletion_days(env),
        )


def _deletion_days(env: Env) -> int:
    days = env.int("MIXIP_AUDIT_KMS_DELETION_DAYS", 7, minimum=7)
    if days > 30:
        raise ConfigError(f"MIXIP_AUDIT_KMS_DELETION_DAYS={days} must be 7-30 (AWS KMS's limits)")
    return days
