"""Atomic, durable file writes shared by every stage: readers never see half a file."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".fastvar.tmp"  # ours alone: a sweep after an interrupted write removes only these


class WriteError(OSError):
    """A write that failed (a full disk, a read-only folder), naming what was being written and the user's
    path, never the hidden temp file the bytes went to first; ``errno`` is the original one."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "") -> Iterator[str]:
    """Yield a temp path beside ``path``; on success fsync it, give it normal permissions, rename it.

    Only a regular file (or nothing) is ever replaced: an existing character device or FIFO (``/dev/null``,
    a pipe another process reads) is written through, not atomically since there is nothing to replace; a
    directory, socket or block device is refused. An ``OSError`` while the caller writes the temp file or
    while it is made final becomes a ``WriteError`` naming ``what`` (e.g. "graph step_03") and ``path``."""
    path = Path(path)
    kind = _special_kind(path)
    tmp = None
    try:
        if kind is not None:
            with _written_through(path, kind, what) as tmp:
                yield tmp
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        try:
            yield tmp
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except WriteError:
        raise
    except OSError as err:
        raise _write_error(path, what, err, tmp) from None


def _write_error(path: Path, what: str, err: OSError, tmp: str | None) -> WriteError:
    """``err`` told in terms of the user's path: its reason without any file name of ours."""
    reason = err.strerror or str(err)
    if tmp:
        reason = reason.replace(tmp, str(path))
    out = WriteError(f"writing {what + ' to ' if what else ''}{path} failed: {reason}"
                     + (" (the disk is full: free space, then run the same command again)"
                        if err.errno == errno.ENOSPC else ""))
    out.errno = err.errno
    return out


def _special_kind(path: Path) -> str | None:
    """``None`` for a regular file or no file; the kind of a file we write through; an error for the rest."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "character device" if stat.S_ISCHR(mode) else "FIFO"
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path} is a directory; give a file path (e.g. {path / 'out.png'})")
    what = "socket" if stat.S_ISSOCK(mode) else "block device" if stat.S_ISBLK(mode) else "special file"
    raise OSError(f"{path} is a {what}; give a regular file path (a FIFO or a character device such as "
                  "/dev/null is written through)")


@contextlib.contextmanager
def _written_through(path: Path, kind: str, what: str) -> Iterator[str]:
    """Collect the output in a private temp file, then copy it into the device or FIFO as it stands."""
    fd, tmp = tempfile.mkstemp(prefix=".fastvar-out.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp
        try:
            with open(tmp, "rb") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except OSError as err:  # the copy into the device or FIFO (the caller's own errors are told by atomic_path)
            out = WriteError(f"writing {what + ' to ' if what else ''}{path} ({kind}) failed: could not write "
                             f"through it: {err.strerror or err}")
            out.errno = err.errno
            raise out from None
    finally:
        os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "") -> Path:
    """Write ``data`` to ``path`` atomically; ``what`` names it in an error (e.g. "image", "graph step_03")."""
    with atomic_path(path, what) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, what: str = "") -> Path:
    import json

    return atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode(), what)
