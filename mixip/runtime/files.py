"""Files that hold data or secrets: created 0600, in directories created 0700.

Databases, logs, key files, stored media, exports and the mesh's data directory are readable by
their owner only. The modes are set explicitly (not left to the umask), and a file that
already exists with wider permissions is narrowed when it is written again.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Creates `path` (and missing parents) mode 0700; narrows it if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def open_private(path: Path, *, exclusive: bool = False, append: bool = False) -> int:
    """A file descriptor for writing `path`, created 0600 (refused if it exists and
    `exclusive`; truncated unless `append`). An existing file is narrowed to 0600."""
    flags = os.O_WRONLY | os.O_CREAT
    if exclusive:
        flags |= os.O_EXCL
    flags |= os.O_APPEND if append else (0 if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def write_private(path: Path, data: bytes | str, *, exclusive: bool = False) -> None:
    """Writes `data` to `path` (mode 0600; FileExistsError if `exclusive` and it exists)."""
    fd = open_private(path, exclusive=exclusive)
    with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)


def touch_private(path: Path) -> None:
    """Makes sure `path` exists with mode 0600, without changing its contents."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
