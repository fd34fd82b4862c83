"""One background worker: a named daemon thread that runs a pass of some work, again and again.

Every recurring thing in the mesh is this loop with its own pass: the gateway's audit outbox
(deliver a batch of queued events), the consent outbox (deliver owed face deletions), the
gateway's access-log writer (write the queued entries), job worker (run one attempt of one due
job), webhook deliverer (send a batch of due deliveries) and erasure resumer (finish the
erasures and account closures left incomplete), the matcher's index sweep (refresh the
collections other replicas changed), the vaults' rotation keepers and audit's checkpoint
signer (a check on a timer). A pass is `run_once() -> bool`: True when more may be waiting (a
full batch), so the next pass starts at once; False when the work is done for now, and the
worker waits.

The loop, per pass:
1. wait: before the first pass only if `wait_first`; after a pass that said False,
   `poll_seconds` or until `wake()`; after a failed pass, the `backoff` (jittered, growing
   with the failures in a row; a wake does not cut it short) or, without one, as after False;
2. linger `linger_seconds` (not cut short by a wake), so that the work of that moment is done
   in one pass (the audit outbox: the uploads of one moment, one batch);
3. the pass. A wake that arrives during it is kept: the next wait returns at once.
A pass that raises is logged (its type and where, never its message) and the loop goes on:
the database or a peer may be away for a while. `poll_seconds=None` makes a start-up task: the
worker ends after its first pass that does not raise (retried with `backoff` until then).

`stop()` ends the loop at its next wait (a pass in progress finishes; no new one starts) and
joins the thread for at most `join_seconds`; `join(seconds)` waits for a start-up task to end
by itself. What is owed when it stops is the owner's to say: the outboxes' rows are durable and
wait for the next start; the access-log writer writes its queue itself after the thread has
stopped.

Leases: a worker that must not do the same work as another replica's (the outboxes, jobs,
webhook deliveries) claims it inside its pass: `run_once` claims a batch (or a job) with a
short lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, a conditional UPDATE elsewhere), works on
it and releases or deletes it; a replica that dies mid-pass leaves the lease to expire. The
worker itself holds no lease: it only decides when the next claim is made. The gateway's job
worker's pass claims one due job (True when it ran one), the webhook deliverer's one batch
(True when full; its hourly purge inside the pass). The erasure resumer claims nothing: its
steps are idempotent and completion is conditional, so replicas race harmlessly; it polls every
`resume_seconds` (None: at start-up only) with `Backoff(2, max(resume_seconds, 2))` while the
peers are not up yet.

Tests drive a pass by calling the owner's `run_once` directly (no thread), or pause the thread
at a named step through `checkpoint`: "worker.waiting" (`waiting_seconds` holds the wait it is
about to make), "worker.lingering", "worker.running" (before each pass).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from mixip.runtime.backoff import Backoff
from mixip.runtime.checkpoints import Checkpoint, no_checkpoint

logger = logging.getLogger("mixip.runtime.worker")


class Worker:
    """A daemon thread named `name` that runs `run_once` (see the module docstring)."""

    def __init__(
        self,
        name: str,
        run_once: Callable[[], bool],
        *,
        poll_seconds: float | None,
        linger_seconds: float = 0.0,
        wait_first: bool = False,
        backoff: Backoff | None = None,
        on_error: Callable[[Exception], None] | None = None,
        join_seconds: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if poll_seconds is None and backoff is None:
            raise ValueError("a start-up task (poll_seconds=None) retries with a backoff")
        self.name = name
        self.run_once = run_once
        self.poll_seconds = poll_seconds
        self.linger_seconds = linger_seconds
        self.wait_first = wait_first
        self.backoff = backoff
        self.on_error = on_error or self._log_failure
        self.join_seconds = join_seconds
        self.rng = rng or random.Random()
        # Tests pause the thread at its steps through this hook (see the module docstring).
        self.checkpoint: Checkpoint = no_checkpoint
        self.waiting_seconds = 0.0  # the wait the thread is making (or about to make)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Starts the thread (nothing if it runs already); after a `stop`, a new one."""
        if self.running:
            return
        # Events of each thread's own: a thread whose stop gave up joining it (its pass ran
        # on) still ends at its next wait, though a new one started meanwhile.
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(self._stop, self._wake), name=self.name, daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        """Ends the current wait for new work (not a linger, not a backoff); a wake during a
        pass makes the next pass start at once."""
        self._wake.set()

    def stop(self) -> None:
        """Ends the loop at its next wait and joins the thread (at most `join_seconds`)."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.join_seconds)

    def join(self, seconds: float) -> bool:
        """Waits at most `seconds` for the thread to end by itself (a start-up task after its
        first pass that did not raise); whether it has (or none runs)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout=seconds)
        return thread is None or not thread.is_alive()

    def _loop(self, stop: threading.Event, wake: threading.Event) -> None:
        failures = 0
        wait: float | None = self.poll_seconds if self.wait_first else 0.0
        backing_off = False
        while True:
            if wait:
                self.waiting_seconds = wait
                self.checkpoint("worker.waiting")
                (stop if backing_off else wake).wait(wait)
            if stop.is_set():
                return
            if self.linger_seconds:
                self.checkpoint("worker.lingering")
                if stop.wait(self.linger_seconds):
                    return
            wake.clear()
            self.checkpoint("worker.running")
            try:
                more = self.run_once()
            except Exception as exc:  # the database or a peer may be away: keep the loop alive
                self.on_error(exc)
                failures += 1
                backing_off = self.backoff is not None
                wait = (
                    self.backoff.delay(failures, self.rng)
                    if self.backoff is not None
                    else self.poll_seconds
                )
                continue
            failures, backing_off = 0, False
            if self.poll_seconds is None:  # a start-up task, done
                return
            wait = 0.0 if more else self.poll_seconds

    def _log_failure(self, exc: Exception) -> None:
        logger.warning(
            "background pass failed",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"fields": {"worker": self.name}},
        )
