"""Every variable the audit service reads, in one frozen dataclass read once at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mixip.runtime.config import ConfigError, Env, ServerConfig
from mixip.runtime.vault import VaultSettings
from services.audit.signer import KEY_FILE
from services.audit.witnesses import Witnessing


@dataclass(frozen=True)
class AuditSettings:
    """The audit service's settings (docs/configuration.md)."""

    vault: VaultSettings
    """The salt vault's keys (mixip.runtime.vault.VaultSettings), under the audit service's
    older variable names: MIXIP_AUDIT_KEK_FILE (default <key dir>/audit-kek.key; rotations
    write versioned files next to it, so the directory must be the vault's own),
    MIXIP_AUDIT_KMS_KEY_ID (AWS KMS instead of key files; the vault's first KMS key, dedicated
    to it), MIXIP_AUDIT_KMS_DELETION_DAYS (the pending window of retired KMS keys, 7-30 days);
    and MIXIP_VAULT_ROTATE_WITHIN_SECONDS, MIXIP_VAULT_ROTATION_CHECK_SECONDS."""
    log_key_file: Path
    """MIXIP_AUDIT_LOG_KEY_FILE (default <key dir>/audit-log-signer.key): the Ed25519 note key
    that signs the checkpoints, made there (0600) on the first start."""
    checkpoint_seconds: float
    """MIXIP_AUDIT_CHECKPOINT_SECONDS (default 60, at least 1): how often the checkpoints of
    accounts whose tree grew are signed (besides on demand)."""
    witnessing: Witnessing | None = None
    """MIXIP_AUDIT_WITNESSES (`URL VKEY` pairs, comma-separated; default none) and
    MIXIP_AUDIT_WITNESS_QUORUM (default 1 with witnesses): the tlog-witnesses asked to cosign
    each checkpoint, and how many cosignatures it needs to be published."""

    @classmethod
    def load(cls, config: ServerConfig, env: Env) -> AuditSettings:
        vault = VaultSettings.load(
            "audit",
            config,
            env,
            kek_variable="MIXIP_AUDIT_KEK_FILE",
            kek_file_name="audit-kek.key",
            kms_variable="MIXIP_AUDIT_KMS_KEY_ID",
            deletion_variable="MIXIP_AUDIT_KMS_DELETION_DAYS",
        )
        return cls(
            vault=vault,
            log_key_file=Path(
                env.str("MIXIP_AUDIT_LOG_KEY_FILE", str(config.key_dir / KEY_FILE))
            ).expanduser(),
            checkpoint_seconds=env.float("MIXIP_AUDIT_CHECKPOINT_SECONDS", 60.0, minimum=1.0),
            witnessing=_witnessing(env),
        )


def _witnessing(env: Env) -> Witnessing | None:
    listed = env.str("MIXIP_AUDIT_WITNESSES", "")
    quorum = env.optional("MIXIP_AUDIT_WITNESS_QUORUM")
    if not listed.strip() and quorum is None:
        return None
    try:
        needed = None if quorum is None else int(quorum)
    except ValueError:
        raise ConfigError(f"MIXIP_AUDIT_WITNESS_QUORUM={quorum!r} is not a number") from None
    return Witnessing.parse(listed, needed)
