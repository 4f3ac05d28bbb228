"""Helpers for feeding hostile checkpoints through the CLI: run a command, and measure what it cost."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner, Result


def invoke(cmd, args: list[str]) -> Result:
    """A CLI command in-process; an uncaught exception stays in the result (a traceback is a failure)."""
    return CliRunner().invoke(cmd, [str(a) for a in args])


def assert_refused(r: Result, *named: str) -> str:
    """Exit 2 with ``error: ...`` naming each of ``named``, and no traceback."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "error: " in r.output, r.output
    for part in named:
        assert part in r.output, f"{part!r} not in {r.output!r}"
    return r.output


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@dataclass
class Cost:
    # CPU time of the calling thread: not inflated by other processes on a shared machine, nor by torch's
    # worker threads spinning idle after an operation (which a whole-process count would add); building
    # modules and reading files, what an absurd size would make slow, all happen on this thread
    cpu_s: float
    rss_growth_mib: float  # peak resident memory during the call (VmHWM, reset first) minus resident before


def measure(fn) -> tuple[object, Cost]:
    """Run ``fn`` and report its CPU time and its peak resident-memory growth, in this process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        field = "VmHWM"
    except OSError:
        field = "VmRSS"  # without the reset, only the growth that is still resident afterwards
    before = _status_kib("VmRSS")
    t0 = time.thread_time()
    out = fn()
    cpu = time.thread_time() - t0
    return out, Cost(cpu, (_status_kib(field) - before) / 1024)
