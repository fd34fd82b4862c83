"""The background worker every recurring thing runs on: when it passes, waits, backs off and
stops. Deterministic: the thread is paused at its named steps (checkpoints) and every wait the
test makes is on an event; the worker's own waits are an hour long unless the test ends them."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator

import pytest

from mixip.runtime.backoff import Backoff
from mixip.runtime.worker import Worker
from tests.support.checkpoints import TIMEOUT, Checkpoints

HOUR = 3600.0


class Script:
    """A pass that answers from a list (True, False, or an exception to raise), then False;
    `calls` counts the passes, `passed[n]` is set when pass n (from 1) has begun."""

    def __init__(self, *answers: bool | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.passed = [threading.Event() for _ in range(10)]
        self.during: Callable[[], None] | None = None

    def __call__(self) -> bool:
        self.calls += 1
        self.passed[self.calls].set()
        if self.during is not None:
            self.during()
        answer = self.answers.pop(0) if self.answers else False
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def started() -> Iterator[list[Worker]]:
    """Workers a test started, stopped at its end."""
    workers: list[Worker] = []
    yield workers
    for worker in workers:
        worker.stop()


def _worker(started: list[Worker], script: Script, **options) -> tuple[Worker, Checkpoints]:
    options.setdefault("poll_seconds", HOUR)
    worker = Worker("test-worker", script, **options)
    hooks = Checkpoints()
    worker.checkpoint = hooks
    started.append(worker)
    return worker, hooks


def test_a_pass_that_found_a_full_batch_is_followed_by_another_at_once_then_it_polls(started):
    script = Script(True, True, False)
    worker, hooks = _worker(started, script)
    waiting = hooks.pause_at("worker.waiting")
    worker.start()
    waiting.reached()
    assert script.calls == 3 and worker.waiting_seconds == HOUR
    assert hooks.passed == ["worker.running"] * 3 + ["worker.waiting"]
    waiting.release()


def test_a_wake_ends_the_wait_and_a_wake_during_a_pass_is_kept_for_the_next(started):
    script = Script()
    worker, _ = _worker(started, script)
    in_pass, go_on = threading.Event(), threading.Event()

    def hold_the_first_pass() -> None:
        if script.calls == 1:
            in_pass.set()
            assert go_on.wait(TIMEOUT)

    script.during = hold_the_first_pass
    worker.start()
    assert in_pass.wait(TIMEOUT)
    worker.wake()  # during the first pass
    go_on.set()
    assert script.passed[2].wait(TIMEOUT)  # without it, the hour's poll would still run
    worker.wake()  # during the wait after the second
    assert script.passed[3].wait(TIMEOUT)


def test_the_first_pass_waits_a_poll_when_asked(started):
    script = Script()
    worker, hooks = _worker(started, script, wait_first=True)
    waiting = hooks.pause_at("worker.waiting")
    worker.start()
    waiting.reached()
    assert script.calls == 0 and worker.waiting_seconds == HOUR
    waiting.release()
    worker.wake()
    assert script.passed[1].wait(TIMEOUT)


def test_a_failed_pass_is_reported_and_without_a_backoff_the_worker_polls_on(started):
    failures: list[Exception] = []
    script = Script(ConnectionError("database away"))
    worker, hooks = _worker(started, script, on_error=failures.append)
    waiting = hooks.pause_at("worker.waiting")
    worker.start()
    waiting.reached()
    assert [type(e) for e in failures] == [ConnectionError]
    assert worker.waiting_seconds == HOUR
    waiting.release()
    worker.wake()  # the loop is alive: the next pass runs
    assert script.passed[2].wait(TIMEOUT)


def test_failed_passes_in_a_row_back_off_with_jitter_that_a_wake_does_not_cut_short(started):
    backoff = Backoff(base_seconds=HOUR, max_seconds=4 * HOUR)
    script = Script(RuntimeError("peer down"), RuntimeError("peer down"))
    worker, hooks = _worker(
        started, script, backoff=backoff, rng=random.Random(7), on_error=lambda exc: None
    )
    expected = random.Random(7)
    waiting = hooks.pause_at("worker.waiting")
    worker.start()
    waiting.reached()
    assert worker.waiting_seconds == backoff.delay(1, expected)
    assert HOUR / 2 <= worker.waiting_seconds <= HOUR
    waiting.release()
    worker.wake()
    assert not script.passed[2].wait(0.2)  # a wake is not the end of a backoff
    worker.stop()  # a stop is
    assert script.calls == 1 and not worker.running


def test_the_backoff_grows_to_its_cap_each_delay_jittered_within_its_upper_half():
    backoff = Backoff(base_seconds=1.0, max_seconds=5.0)
    rng = random.Random(3)
    ceilings = [1.0, 2.0, 4.0, 5.0, 5.0]
    for attempt, ceiling in enumerate(ceilings, start=1):
        assert ceiling / 2 <= backoff.delay(attempt, rng) <= ceiling


def test_a_stop_during_the_linger_ends_the_worker_without_another_pass(started):
    script = Script()
    worker, hooks = _worker(started, script, linger_seconds=HOUR)
    lingering = hooks.pause_at("worker.lingering")
    worker.start()
    lingering.reached()
    stopping = threading.Thread(target=worker.stop)
    stopping.start()
    lingering.release()
    stopping.join(TIMEOUT)
    assert not stopping.is_alive() and not worker.running
    assert script.calls == 0


def test_the_thread_is_a_named_daemon_and_a_stop_joins_it(started):
    script = Script()
    worker, hooks = _worker(started, script)
    waiting = hooks.pause_at("worker.waiting")
    worker.start()
    waiting.reached()
    (thread,) = [t for t in threading.enumerate() if t.name == "test-worker"]
    assert thread.daemon
    waiting.release()
    worker.stop()
    assert not thread.is_alive() and not worker.running
    worker.start()  # a stopped worker starts again
    assert script.passed[2].wait(TIMEOUT)
    worker.start()  # and a running one is not started twice
    assert len([t for t in threading.enumerate() if t.name == "test-worker"]) == 1


def test_a_start_after_a_stop_that_timed_out_leaves_one_thread_when_the_old_pass_ends(started):
    """A stop whose join timed out (its pass still running) and then a start: the old thread
    still ends at its next wait, so one thread runs the loop, not two."""
    script = Script()
    release = threading.Event()
    script.during = lambda: release.wait(TIMEOUT)
    worker, _ = _worker(started, script, join_seconds=0.0)
    worker.start()
    assert script.passed[1].wait(TIMEOUT)  # the old thread is inside its pass
    (old,) = [t for t in threading.enumerate() if t.name == "test-worker"]
    worker.stop()  # gives up joining at once
    assert old.is_alive()
    worker.start()
    assert script.passed[2].wait(TIMEOUT)  # the new thread's first pass (released already)
    release.set()
    old.join(TIMEOUT)
    assert not old.is_alive() and worker.running
    assert len([t for t in threading.enumerate() if t.name == "test-worker"]) == 1


def test_a_start_up_task_retries_until_a_pass_succeeds_then_ends(started):
    script = Script(OSError("peer not up yet"), OSError("peer not up yet"))
    worker, _ = _worker(
        started,
        script,
        poll_seconds=None,
        backoff=Backoff(base_seconds=0.001, max_seconds=0.001),
        on_error=lambda exc: None,
    )
    worker.start()
    assert worker.join(TIMEOUT)
    assert not worker.running and script.calls == 3


def test_a_start_up_task_without_a_backoff_is_refused():
    with pytest.raises(ValueError, match="backoff"):
        Worker("test-worker", Script(), poll_seconds=None)
