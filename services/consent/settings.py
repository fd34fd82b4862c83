"""Every variable the consent service reads, in one frozen dataclass read once at start."""

from __future__ import annotations

from dataclasses import dataclass

from mixip.runtime.config import Env


@dataclass(frozen=True)
class ConsentSettings:
    """The consent service's settings (docs/configuration.md)."""

    outbox_poll_seconds: float = 2.0
    """MIXIP_CONSENT_OUTBOX_POLL_SECONDS (at least 0.05): how often the outbox dispatcher looks
    for owed face deletions when nothing woke it."""

    @classmethod
    def load(cls, env: Env) -> ConsentSettings:
        return cls(
            outbox_poll_seconds=env.float("MIXIP_CONSENT_OUTBOX_POLL_SECONDS", 2.0, minimum=0.05)
        )
