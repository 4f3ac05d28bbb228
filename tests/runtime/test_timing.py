"""runtime/timing.py: the one loop of timed generations that fastvar-bench and tools/gpu_check.py share."""

from __future__ import annotations

import numpy as np

from fastvar.runtime.chain import GenerationResult
from fastvar.runtime.timing import time_generations


def _fake_generations():
    calls = []

    def once() -> GenerationResult:
        n = len(calls)
        calls.append(n)
        return GenerationResult(images=np.zeros((1, 2, 2, 3), np.uint8),
                                timings={"loop_s": 1.0 + n, "decode_s": 0.5,
                                         "steps": [{"index": 0, "seconds": 0.1 * n}, {"index": 2, "seconds": 1.0}]})

    return once, calls


def test_warmups_are_left_out_and_the_timed_runs_kept():
    once, calls = _fake_generations()
    t = time_generations(once, 2, 3)
    assert len(calls) == 5 and len(t.warmup_s) == 2 and len(t.runs) == 3 and not t.stopped_early
    assert t.seconds("loop_s") == [3.0, 4.0, 5.0] and t.median("loop_s") == 4.0 and t.median("decode_s") == 0.5
    assert all(r.wall_s >= 0 and r.result is None for r in t.runs)  # no images held unless asked
    assert t.steps_median() == {"0": 0.1 * 3, "2": 1.0}


def test_stop_ends_the_runs_early_but_keeps_one_timed_run():
    once, calls = _fake_generations()
    asked = []

    def stop(t) -> bool:
        asked.append(len(t.runs))
        return True

    t = time_generations(once, 1, 4, stop=stop, keep_results=True)
    assert asked == [1] and len(calls) == 2 and len(t.runs) == 1 and t.stopped_early
    assert t.runs[0].result.timings["loop_s"] == 2.0
