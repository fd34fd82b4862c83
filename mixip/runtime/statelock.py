"""One process per state: an exclusive lock per data directory and instance.

Each service instance holds `flock(2)` on `<data dir>/run/<instance>.lock` while it runs, and
`mixip up` holds `<data dir>/run/mixip-up.lock` for its mesh; the file holds the holder's PID.
The kernel releases the lock when its process dies, however it dies (kill -9 included), so a
stale file never blocks a start, and a live holder is always found.

Replicas (`matcher`, `matcher-2`) are different instances with different locks: they share one
database by design. What the lock guards is what a data directory holds for its instance: the
SQLite files, the media store, the logs. With PostgreSQL the database is shared by every replica
on every host by design (its own transactions and locks keep their writes apart); the lock still
keeps two processes of one instance off one data directory.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from mixip.runtime.files import FILE_MODE, private_dir

RUN_DIR = "run"


class StateInUse(Exception):
    """Another live process holds the lock of this state."""

    def __init__(self, name: str, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"{name}: {holder} already runs on this state ({path} is locked)")
        self.name, self.path, self.pid = name, path, pid


@dataclass
class StateLock:
    """A held lock; released by `release()` or when its process ends."""

    path: Path
    fd: int

    def release(self) -> None:
        os.close(self.fd)


def acquire(data_dir: Path, name: str) -> StateLock:
    """Takes `name`'s lock in `data_dir` (created 0700/0600), or raises StateInUse naming the
    PID that holds it. The descriptor is not inherited by child processes."""
    path = private_dir(data_dir / RUN_DIR) / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _pid_in(fd)
        os.close(fd)
        raise StateInUse(name, path, pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(path, fd)


def holders(data_dir: Path) -> dict[str, int | None]:
    """Every lock in `data_dir` a live process holds now: name -> its PID."""
    held: dict[str, int | None] = {}
    directory = data_dir / RUN_DIR
    for path in sorted(directory.glob("*.lock")) if directory.is_dir() else []:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts only with a holder
        except BlockingIOError:
            held[path.stem] = _pid_in(fd)
        finally:
            os.close(fd)
    return held


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
