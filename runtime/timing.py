"""Timed generations: ``warmup + runs`` calls of one generation, each run's result and the chain's timings.

One loop for ``fastvar-bench`` and ``tools/gpu_check.py``, so that a warmup, a timed run and a median mean
the same in both. The loop, decode and step times are the chain's own (``GenerationResult.timings``, CUDA
events on a GPU); the wall time around each call is the host's, with the device synchronised on both sides.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fastvar.runtime.chain import GenerationResult


@dataclass
class TimedRun:
    timings: dict  # the chain's: loop_s, decode_s, steps [{index, seconds}]
    wall_s: float
    result: GenerationResult | None = None  # kept only when asked: a bench holds no images between runs


@dataclass
class Timing:
    warmup_s: list[float] = field(default_factory=list)  # wall time of each warmup run
    runs: list[TimedRun] = field(default_factory=list)
    stopped_early: bool = False

    def seconds(self, key: str) -> list[float]:
        """Each timed run's ``wall_s`` or chain timing ``key`` (``loop_s``, ``decode_s``)."""
        return [r.wall_s if key == "wall_s" else r.timings[key] for r in self.runs]

    def median(self, key: str) -> float:
        return statistics.median(self.seconds(key))

    def steps_median(self) -> dict[str, float]:
        """Step index (a string, as in JSON) -> the median of its seconds over the timed runs."""
        steps: dict[int, list[float]] = {}
        for r in self.runs:
            for s in r.timings["steps"]:
                steps.setdefault(s["index"], []).append(s["seconds"])
        return {str(k): statistics.median(v) for k, v in sorted(steps.items())}


def time_generations(generate_once: Callable[[], GenerationResult], warmup: int, runs: int, *,
                     device: str | torch.device = "cpu", stop: Callable[[Timing], bool] | None = None,
                     keep_results: bool = False) -> Timing:
    """Call ``generate_once`` ``warmup + runs`` times; ``stop(timing)``, asked before each timed run after the
    first, ends the runs early (a time limit), so at least one timed run is always kept."""
    cuda = torch.device(device).type == "cuda"
    timing = Timing()
    for r in range(warmup + runs):
        if r > warmup and stop is not None and stop(timing):
            timing.stopped_early = True
            break
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = generate_once()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        if r < warmup:
            timing.warmup_s.append(wall)
        else:
            timing.runs.append(TimedRun(out.timings, wall, out if keep_results else None))
    return timing
