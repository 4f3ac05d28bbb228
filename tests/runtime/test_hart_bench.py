"""fastvar-bench on HART: the multiply-add model against a hand count, and one real hart-tiny bench run."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fastvar.cli import bench_cmd
from fastvar.export.kv_layout import past_lengths
from fastvar.export.models.hart_config import HARTConfig, HARTTokenizerConfig, preset
from fastvar.export.models.infinity_config import preset as infinity_preset
from fastvar.export.schedules import hart_prune_plan, hart_schedule, prune_plan, scale_schedule
from fastvar.runtime.flops import step_macs, total_macs


def _plans(cfg: HARTConfig):
    sched = hart_schedule(cfg.patch_nums)
    return (hart_prune_plan(sched, "none", cfg.depth, cfg.context_tokens),
            hart_prune_plan(sched, "fastvar", cfg.depth, cfg.context_tokens))


@pytest.mark.parametrize("rows", [2, 1])
def test_hart_macs_equal_a_hand_count(rows):
    # one block, 5 text tokens, scales 1, 2, 4: small enough to write every term out
    tok = HARTTokenizerConfig(vocab=16, cvae=4, ch=32)
    cfg = HARTConfig("hand", depth=1, width=8, heads=2, context_tokens=5, context_dim=6, patch_nums=(1, 2, 4),
                     vocab=16, cvae=4, diff_width=12, diff_depth=2, diff_steps=3, tokenizer=tok)
    none, _ = _plans(cfg)
    b, c, hid, lt, d, v, cv, w = 1, 8, 256, 5, 6, 16, 4, 12  # hid = int(8 * 4 * 2 / 3 + 255) // 256 * 256
    assert cfg.mlp_hidden == hid

    def block(q: int, keys: int) -> int:  # qkv, scores + values, output projection, SwiGLU (gate, up, down)
        return rows * (3 * c * c * q + 2 * c * q * keys + c * c * q + 3 * c * hid * q)

    denoiser = (cv * w + 256 * w + w * w + c * w  # input_proj, timestep MLP (256 -> w -> w), cond_embed
                + 2 * (3 * w * w + 2 * w * w)  # two res blocks: AdaLN modulation (w -> 3w), MLP (two w x w)
                + 2 * w * w + 2 * cv * w)  # final layer: modulation (w -> 2w), linear (w -> 2 cvae)
    want = [
        # step 0: the 5 text tokens attend to themselves; context_embed on every row; head on the last position
        block(lt, lt) + rows * lt * d * c + rows * 1 * c * v,
        # step 1: 2x2 tokens after the 5 cached text entries; word_embed of x_in on the image rows only
        block(4, lt + 4) + b * 4 * cv * c + rows * 4 * c * v,
        # step 2 (last): 4x4 after 5 + 4; then the diffusion head: its condition, 3 denoiser calls on every row
        block(16, lt + 4 + 16) + b * 16 * cv * c + rows * 16 * c * v + b * 16 * cv * c + 3 * rows * 16 * denoiser,
    ]
    got = step_macs(cfg, none, rows, b)
    assert [s.index for s in got] == [0, 1, 2] and [s.macs for s in got] == want
    assert total_macs(cfg, none, rows, b) == sum(want)
    assert past_lengths(none, 1, 1) == [lt]  # step 0's KV entries are the text's (first_step_kv), not one token


def test_fastvar_saves_exactly_the_pruned_sublayers_at_steps_12_and_13():
    cfg = preset("hart-tiny")
    none, fast = _plans(cfg)
    by_none = {s.index: s.macs for s in step_macs(cfg, none, 2, 1)}
    by_fast = {s.index: s.macs for s in step_macs(cfg, fast, 2, 1)}
    assert sorted(by_none) == sorted(by_fast) == list(range(14))  # HART skips no step
    assert all(by_fast[i] == by_none[i] for i in range(12))
    c, hid, depth, rows = cfg.width, cfg.mlp_hidden, cfg.depth, 2
    past12 = 300 + sum(p * p for p in cfg.patch_nums[1:12])

    def blocks(q: int, past: int) -> int:  # the per-token linear work plus attention over past + new
        return depth * rows * ((4 * c * c + 3 * c * hid) * q + 2 * c * q * (past + q))

    # 48x48 keeps 1152 of 2304 (same past in both); 64x64 keeps 1024 of 4096 after a past shorter by 1152
    assert by_none[12] - by_fast[12] == blocks(2304, past12) - blocks(1152, past12)
    assert by_none[13] - by_fast[13] == blocks(4096, past12 + 2304) - blocks(1024, past12 + 1152)
    # the ceilings quoted in docs/design/hart.md: hart-tiny (depth 2) and the 0.7B preset at full depth
    assert sum(by_none.values()) / sum(by_fast.values()) == pytest.approx(2.452, abs=1e-3)
    big_none, big_fast = _plans(preset("hart-0.7b"))
    big = preset("hart-0.7b")
    assert total_macs(big, big_none, 2, 1) / total_macs(big, big_fast, 2, 1) == pytest.approx(1.945, abs=1e-3)


def test_step_macs_dispatches_on_the_config_and_infinity_needs_its_text_length():
    icfg = infinity_preset("infinity-tiny")
    plan = prune_plan(scale_schedule("1024"), "none", icfg.depth)
    with pytest.raises(ValueError, match="text length"):
        step_macs(icfg, plan, 2, 1)
    assert step_macs(icfg, plan, 2, 1, 16)[0].macs > 0


def test_hart_config_from_dict_is_the_strict_inverse_of_to_dict():
    for name in ("hart-tiny", "hart-0.7b"):
        cfg = preset(name).with_depth(3)
        d = json.loads(json.dumps(cfg.to_dict()))  # as a manifest holds it: tuples become lists
        assert HARTConfig.from_dict(d) == cfg
    d = preset("hart-tiny").to_dict()
    with pytest.raises(ValueError, match="missing diff_steps"):
        HARTConfig.from_dict({k: val for k, val in d.items() if k != "diff_steps"})
    with pytest.raises(ValueError, match="unknown bits"):
        HARTConfig.from_dict({**d, "bits": 12})
    with pytest.raises(ValueError, match="tokenizer config: missing ch"):
        HARTConfig.from_dict({**d, "tokenizer": {k: val for k, val in d["tokenizer"].items() if k != "ch"}})
    with pytest.raises(ValueError, match=r"mlp_hidden=512 \(the fields give 256\)"):
        HARTConfig.from_dict({**d, "mlp_hidden": 512})


@pytest.mark.parametrize("args, message", [
    (["--text-len", "64"], "takes exactly 300 text tokens"),
    (["--res", "1024,512"], "--res 1024"),
    (["--aspect", "16:9"], "--aspect 1:1"),
])
def test_bench_refuses_what_hart_cannot_run_before_measuring(tmp_path, args, message):
    r = CliRunner().invoke(bench_cmd, ["--model", "hart-tiny", "--out", str(tmp_path / "out"), *args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert "GEMM peak" not in r.output and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def hart_bench(tmp_path_factory):
    """The brief's command at depth 1 (two hart-tiny exports, about 40 s each on 2 cores, then one run each)."""
    root = tmp_path_factory.mktemp("hart-bench")
    r = CliRunner().invoke(bench_cmd, ["--model", "hart-tiny", "--depth", "1", "--runs", "1", "--warmup", "0",
                                       "--schedules", "none,fastvar", "--backends", "onnxruntime,torch",
                                       "--engines", str(root / "engines"), "--out", str(root / "out")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads((root / "out" / "bench.json").read_text()), r.output, root


@pytest.mark.slow
def test_hart_bench_reports_every_step_ratios_and_memory(hart_bench):
    report, output, root = hart_bench
    assert report["options"]["text_len"] == 300 and report["options"]["model"] == "hart-tiny"
    by = {(c["schedule"], c["backend"]): c for c in report["configs"]}
    assert sorted(by) == [(s, b) for s in ("fastvar", "none") for b in ("onnxruntime", "torch")]
    for c in report["configs"]:
        assert c["runs"] == 1 and c["pixels"] == 1024 * 1024
        assert sorted(map(int, c["steps_median_s"])) == list(range(14))  # HART runs all 14 steps
        assert c["e2e_median_s"] > c["loop_median_s"] > 0
        assert 0 <= c["runtime_overhead_share"] < 1  # the diffusion head and next_input are graph time
        assert c["peak_rss_bytes"] > c["kv_cache_bytes"] > 0
    cfg = preset("hart-tiny").with_depth(1)
    none, fast = _plans(cfg)
    assert by[("none", "torch")]["gmacs"] == pytest.approx(total_macs(cfg, none, 2, 1) / 1e9)
    assert by[("fastvar", "onnxruntime")]["gmacs"] == pytest.approx(total_macs(cfg, fast, 2, 1) / 1e9)
    for backend in ("onnxruntime", "torch"):
        n, f = by[("none", backend)], by[("fastvar", backend)]
        assert n["kv_cache_bytes"] == f["kv_cache_bytes"] + 2 * 1152 * 2 * cfg.width * 4  # 48x48 keeps 1152
        pair = next(r for r in report["ratios"] if r.get("backend") == backend and "compute_ceiling" in r)
        assert pair["pair"] == "none / fastvar"
        assert pair["compute_ceiling"] == pytest.approx(n["gmacs"] / f["gmacs"]) and pair["compute_ceiling"] > 1
        assert pair["loop_speedup"] == pytest.approx(n["loop_median_s"] / f["loop_median_s"])
        assert pair["kv_ratio"] > 1
    assert any(r["pair"] == "torch / onnxruntime (loop time)" for r in report["ratios"])
    assert "ceiling" in output and "1024" in (root / "out" / "bench.txt").read_text()
