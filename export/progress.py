"""The export's progress: which graph is being built, what it costs, and about how long the graphs have left.

Work is counted in traces, the export's dominant cost: a graph traced whole counts ``WHOLE`` forms (the
text conditioning and the decoder are each a few forms' worth), a stamped graph counts the forms it traces
that no earlier graph traced plus ``STAMP`` for composing and checking it. The time per unit is measured as
the export goes, so the estimate is in this machine's seconds; it is an estimate, said as one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WHOLE = 4.0
STAMP = 0.5


class ExportProgress:
    def __init__(self, costs: dict[str, float], log: Callable[[str], None]) -> None:
        self.costs, self.log = costs, log
        self.left = sum(costs.values())
        self.done = 0.0
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._first: float | None = None

    def start(self, i: int, n: int, name: str, what: str) -> None:
        now = time.perf_counter()
        self._started[name] = now
        if self._first is None:
            self._first = now
        self.log(f"[{i}/{n}] {name}: {what} ...")

    def finish(self, i: int, n: int, name: str) -> float:
        now = time.perf_counter()
        took = now - self._started.pop(name)
        self.seconds[name] = took
        cost = self.costs.get(name, 0.0)
        self.done += cost
        self.left -= cost
        eta = ""
        if self.left > 0 and self.done > 0:  # wall time per unit: right whether graphs run one or several at once
            eta = f"; graphs: about {self.left * (now - self._first) / self.done:.0f}s left"
        self.log(f"[{i}/{n}] {name} exported in {took:.1f}s{eta}")
        return took


def graph_costs(stale: list, parts_of: Callable[[object], list | None]) -> dict[str, float]:
    """Units of work per stale graph, in export order (``parts_of`` gives a graph's parts, None if traced whole)."""
    seen: set = set()
    out: dict[str, float] = {}
    for g in stale:
        parts = parts_of(g)
        name = g.definition().name
        if parts is None:
            out[name] = WHOLE
            continue
        new = {p.key for p in parts} - seen
        seen |= new
        out[name] = len(new) + STAMP
    return out
