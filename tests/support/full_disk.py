"""A disk that fills up while one file is written: ``open`` in a module is replaced so that writing the temp
file of one target (``.NAME.*`` beside it, as ``fastvar.atomic`` names them) writes part of the data, then fails
with ENOSPC naming that temp file, as the kernel's error would."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path


class _FillingFile:
    def __init__(self, f, budget: int) -> None:
        self._f, self._budget = f, budget

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._budget:
            self._f.write(bytes(memoryview(data).cast("B")[: self._budget]))
            self._budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)
        self._budget -= n
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def full_disk(monkeypatch, module, target: str, budget: int = 64) -> None:
    """Make ``module``'s writes of the temp file of a file named ``target`` fail after ``budget`` bytes."""
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name.startswith(f".{target}."):
            return _FillingFile(f, budget)
        return f

    monkeypatch.setattr(module, "open", fake_open, raising=False)
