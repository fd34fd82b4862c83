"""Every variable the consent service reads, in one frozen dataclass read once at start."""

from __future__ import annotations

from dataclasses import dataclass

from mixip.runtime.config import Env, ServerConfig
from mixip.runtime.vault import VaultSettings


@dataclass(frozen=True)
class ConsentSettings:
    """The consent service's settings (docs/configuration.md)."""

    vault: VaultSettings
    """MIXIP_CONSENT_VAULT_* and MIXIP_VAULT_*: where the vault that seals talent ids keeps its
    key-encryption keys, and how soon it rotates after an erasure (mixip/runtime/vault.py)."""

    outbox_poll_seconds: float = 2.0
    """MIXIP_CONSENT_OUTBOX_POLL_SECONDS (at least 0.05): how often the outbox dispatcher looks
    for owed face deletions when nothing woke it."""

    @classmethod
    def load(cls, config: ServerConfig, env: Env) -> ConsentSettings:
        return cls(
            vault=VaultSettings.load("consent", config, env),
            outbox_poll_seconds=env.float("MIXIP_CONSENT_OUTBOX_POLL_SECONDS", 2.0, minimum=0.05),
        )
