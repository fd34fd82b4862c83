"""Deterministic interleavings: a checkpoint hook that pauses a thread at a named step boundary
until the test releases it (no sleeps: every wait is on an event, bounded by a timeout so a
broken interleaving fails instead of hanging)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

TIMEOUT = 60.0


class Pause:
    def __init__(self, name: str) -> None:
        self.name = name
        self._reached = threading.Event()
        self._released = threading.Event()

        self.hit = False

    def reached(self) -> None:
        """Waits until a thread stops here (or the call it was armed for ended first: see
        Outcome's `signals`; `hit` tells which)."""
        assert self._reached.wait(TIMEOUT), f"nothing reached {self.name}"

    def release(self) -> None:
        self._released.set()


class Checkpoints:
    """Install as a service's `checkpoint` hook; `pause_at(name)` arms one pause, taken by the
    first thread that passes `name` (later passes go straight through)."""

    def __init__(self) -> None:
        self._armed: dict[str, Pause] = {}
        self._lock = threading.Lock()
        self.passed: list[str] = []

    def pause_at(self, name: str) -> Pause:
        pause = Pause(name)
        with self._lock:
            self._armed[name] = pause
        return pause

    def __call__(self, name: str) -> None:
        with self._lock:
            self.passed.append(name)
            pause = self._armed.pop(name, None)
        if pause is not None:
            pause.hit = True
            pause._reached.set()
            assert pause._released.wait(TIMEOUT), f"{name} was never released"


class Outcome:
    """A call run on its own thread: its result or the exception it raised."""

    def __init__(self, call: Callable[[], Any], signals: Pause | None = None) -> None:
        """`signals`: a pause armed for this call, marked reached if the call ends without
        passing it (e.g. refused before that step), so the test never waits for nothing."""
        self.result: Any = None
        self.error: BaseException | None = None
        self._signals = signals
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # reported to the test by join()
            self.error = exc
        finally:
            if self._signals is not None:
                self._signals._reached.set()

    def finishes_within(self, seconds: float) -> bool:
        """Whether the call ends within `seconds` (to show that it waits on a lock: a call
        that must not finish yet is given time it would need, and must still be running)."""
        self._thread.join(seconds)
        return not self._thread.is_alive()

    def join(self) -> Outcome:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the call did not finish"
        return self
