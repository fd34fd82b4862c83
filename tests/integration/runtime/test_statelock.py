"""One process per state (mixip.runtime.statelock): a held lock is refused naming its holder's
PID, seen by `holders`, and free again once released or once its process is gone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mixip.runtime import statelock


def test_a_held_lock_is_refused_naming_the_pid_that_holds_it(tmp_path):
    lock = statelock.acquire(tmp_path, "matcher")
    with pytest.raises(statelock.StateInUse) as refused:
        statelock.acquire(tmp_path, "matcher")
    assert refused.value.pid == os.getpid()
    assert str(refused.value) == (
        f"matcher: pid {os.getpid()} already runs on this state "
        f"({tmp_path / 'run' / 'matcher.lock'} is locked)"
    )
    assert statelock.holders(tmp_path) == {"matcher": os.getpid()}
    lock.release()
    assert statelock.holders(tmp_path) == {}
    statelock.acquire(tmp_path, "matcher").release()


def test_replicas_of_one_service_hold_locks_of_their_own(tmp_path):
    first, second = statelock.acquire(tmp_path, "matcher"), statelock.acquire(tmp_path, "matcher-2")
    assert statelock.holders(tmp_path) == {"matcher": os.getpid(), "matcher-2": os.getpid()}
    first.release()
    second.release()


def test_the_lock_of_a_killed_process_is_free_and_its_stale_file_blocks_nothing(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from mixip.runtime import statelock; "
            f"statelock.acquire(pathlib.Path({str(tmp_path)!r}), 'audit'); "
            "print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    assert statelock.holders(tmp_path) == {"audit": holder.pid}
    holder.kill()
    holder.wait()
    assert (tmp_path / "run" / "audit.lock").read_text() == f"{holder.pid}\n"  # stale file
    assert statelock.holders(tmp_path) == {}
    statelock.acquire(tmp_path, "audit").release()
