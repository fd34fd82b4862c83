"""Test hooks at step boundaries: a use case or a background worker calls its `checkpoint` with
the name of the step it is about to take ("upload.started", "erase.consent", "job.claimed",
"worker.waiting", ...). In production the hook is `no_checkpoint`; tests install one that
pauses the thread there until they release it (tests/support/checkpoints.py), so that every
interleaving they prove is deterministic."""

from __future__ import annotations

from collections.abc import Callable

Checkpoint = Callable[[str], None]


def no_checkpoint(name: str) -> None:
    """The production checkpoint: nothing pauses."""
