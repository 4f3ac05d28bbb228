"""One writer per artifact: export, engine builds and golden recording hold an exclusive lock on it.

Two exports into one directory would interleave a manifest from one with graphs from the other. The lock
is ``flock`` on a file inside the artifact (released by the kernel when the process dies, so a crash leaves
no stale lock); the holder writes its PID there so a refused writer can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK = ".fastvar.lock"


class LockedError(OSError):
    """Another process holds the artifact's lock."""


@contextlib.contextmanager
def artifact_lock(root: str | os.PathLike, wait: bool = False) -> Iterator[None]:
    """Hold ``root``'s writer lock for the block; refuse at once (naming the holder) unless ``wait``."""
    path = Path(root) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(f"{root} is being written by another fastvar process (PID {holder}); let it finish, "
                              "or pass --wait to wait for it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
