"""This process's resident memory as the kernel counts it, and its peak per phase of a generation.

``/proc/self/status`` gives the resident set (VmRSS), its high-water mark (VmHWM, what ``/usr/bin/time -v``
reports as maximum resident set size) and the anonymous and file-backed parts. Linux lets a process reset
its own high-water mark (``/proc/self/clear_refs``, "5"), so ``PhasePeaks`` can measure the peak of each step
and of the decoder on its own. Resetting lowers what ``/usr/bin/time`` would report afterwards, so only
benchmarks and tests use it; ``fastvar-run`` reads the mark once, at the end.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProcessMemory:
    rss: int  # resident now
    peak: int  # the high-water mark of the resident set since start (or the last reset)
    anonymous: int  # resident pages not backed by a file (heap, tensors): what cannot be reclaimed
    file: int  # resident file-backed pages (libraries, memory-mapped files): reclaimable under pressure


def process_memory() -> ProcessMemory:
    """The resident-memory figures of this process; outside Linux the peak from ``getrusage`` only."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    fields[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = fields.get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return ProcessMemory(rss=fields.get("VmRSS", 0), peak=peak, anonymous=fields.get("RssAnon", 0),
                         file=fields.get("RssFile", 0))


def reset_peak() -> bool:
    """Reset this process's high-water mark to its current resident set; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class PhasePeaks:
    """The resident peak of each phase of a generation: ``mark(label)`` closes the phase running since the
    previous mark (or since ``start``) and opens the next. The chain marks the conditioning, each step and the
    decoder."""

    phases: list[tuple[str, int, int]] = field(default_factory=list)  # (label, peak, resident at its end)
    supported: bool = True

    def start(self) -> None:
        self.supported = reset_peak()

    def mark(self, label: str) -> None:
        now = process_memory()
        self.phases.append((label, now.peak, now.rss))
        self.supported = reset_peak() and self.supported

    def peak(self, prefix: str = "") -> int:
        """The largest peak over the phases whose label starts with ``prefix``."""
        return max((p for label, p, _ in self.phases if label.startswith(prefix)), default=0)
