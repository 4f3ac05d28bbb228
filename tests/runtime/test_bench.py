"""fastvar-bench: the figures are computed from real runs and the schedule, never asserted as timings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fastvar.export.models.infinity_config import preset
from fastvar.export.schedules import prune_plan, scale_schedule
from fastvar.runtime.bench import BenchOptions, fit_exponent, run_bench
from fastvar.runtime.flops import step_macs, total_macs


def test_exponent_fit_recovers_a_power_law():
    px = [512**2, 1024**2, 1344**2]
    assert fit_exponent(px, [3e-9 * p**1.37 for p in px]) == pytest.approx(1.37)
    assert fit_exponent(px[:1], [1.0]) is None


def test_macs_follow_the_schedule():
    cfg = preset("infinity-2b")
    sched = scale_schedule("1024")
    none, fast = prune_plan(sched, "none", 32), prune_plan(sched, "fastvar", 32)
    # the 2B at full depth: the ceiling the issue quotes (about 4.2x)
    assert total_macs(cfg, none, 2, 1, 64) / total_macs(cfg, fast, 2, 1, 64) == pytest.approx(4.23, abs=0.01)
    # step 0 by hand: 1 token, no past, every block the same
    c, h = cfg.width, cfg.mlp_hidden
    block = (3 * c * c + 2 * c + c * c) + (2 * c * c + 64 * c * 2) + 2 * c * h
    want = 2 * (32 * block + cfg.bits * c + c * cfg.vocab)
    assert step_macs(cfg, none, 2, 1, 64)[0].macs == want
    # a pruned step costs less than the same step unpruned; skipped steps cost nothing
    by_none = {s.index: s.macs for s in step_macs(cfg, none, 2, 1, 64)}
    by_fast = {s.index: s.macs for s in step_macs(cfg, fast, 2, 1, 64)}
    assert by_fast[9] < by_none[9] and 11 not in by_fast and by_fast[8] == by_none[8]


@pytest.mark.slow
def test_bench_reports_ratios_overhead_memory_and_plots(tiny_artifacts, tmp_path):
    opts = BenchOptions(model="infinity-tiny", depth=None, resolutions=("1024",), schedules=("none", "fastvar"),
                        backends=("onnxruntime", "torch"), runs=2, warmup=0, text_len=16,
                        engines=str(tmp_path / "engines"), out=str(tmp_path / "out"))
    for spec, src in tiny_artifacts.items():  # the session's exports, so the bench finds them up to date
        shutil.copytree(src, tmp_path / "engines" / f"infinity-tiny-dNone-1024-1x1-{spec}")
    logs: list[str] = []
    report = run_bench(opts, log=logs.append)
    assert not any("exported" in m and "of" in m for m in logs)  # nothing re-exported
    assert len(report["configs"]) == 4
    by = {(c["schedule"], c["backend"]): c for c in report["configs"]}
    for c in report["configs"]:
        assert c["runs"] == 2 and c["loop_min_s"] <= c["loop_median_s"] <= c["loop_max_s"]
        assert c["e2e_median_s"] > c["loop_median_s"]  # the decode comes on top
        assert 0 <= c["runtime_overhead_share"] < 1
        assert c["peak_rss_bytes"] > c["kv_cache_bytes"] > 0
        assert len(c["steps_median_s"]) == (13 if c["schedule"] == "none" else 11)
        # the loop's and the decoder's peaks apart, each within the configuration's, beside its plan
        assert 0 < c["peak_loop_bytes"] <= c["peak_rss_bytes"] and 0 < c["peak_decode_bytes"] <= c["peak_rss_bytes"]
        assert c["planned_peak_bytes"] > 0 and c["peak_vs_plan"] == pytest.approx(
            (c["peak_rss_bytes"] - c["planned_peak_bytes"]) / c["planned_peak_bytes"])
        assert 0 < c["peak_anonymous_bytes"] < c["peak_rss_bytes"]
    ort = by[("fastvar", "onnxruntime")]  # the bench process holds more than a run does (torch, earlier configs)
    assert ort["peak_decode_bytes"] > ort["peak_loop_bytes"]  # tiny: the decoder's 0.5 GiB is the largest graph
    assert by[("fastvar", "torch")]["kv_cache_bytes"] < by[("none", "torch")]["kv_cache_bytes"]
    pair = next(r for r in report["ratios"] if r.get("backend") == "onnxruntime" and "compute_ceiling" in r)
    n, f = by[("none", "onnxruntime")], by[("fastvar", "onnxruntime")]
    assert pair["loop_speedup"] == pytest.approx(n["loop_median_s"] / f["loop_median_s"])
    assert pair["compute_ceiling"] == pytest.approx(n["gmacs"] / f["gmacs"]) and pair["compute_ceiling"] > 2
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["machine"]["gemm_peak_gflops"] > 0 and np.isclose(saved["configs"][0]["gmacs"], n["gmacs"])
    assert "ceiling" in (tmp_path / "out" / "bench.txt").read_text()
    if pytest.importorskip("matplotlib", reason="plots need matplotlib"):
        assert (tmp_path / "out" / "per_step.png").stat().st_size > 1000
