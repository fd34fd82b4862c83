"""Retries that wait longer each time, spread out at random: one rule for every retry loop (the
background workers after a failed pass, the outboxes' rows, the Rekognition engine's calls)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with "equal jitter": the n-th retry in a row waits between half of
    and all of `min(max_seconds, base_seconds * 2**(n-1))`, so that delays grow and replicas
    (or rows) that failed together spread out."""

    base_seconds: float
    """The first retry's ceiling."""
    max_seconds: float
    """No retry waits longer."""

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before retry number `attempt` (1 for the first)."""
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + rng.random() / 2)
