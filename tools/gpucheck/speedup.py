"""Sections 4 and 5: FastVAR inside Infinity and HART through the runtime's chain loop on the torch backend:
the fused kernel as the model's restore must leave logits and tokens bit-identical (gating), and schedules
``none`` and ``fastvar`` are timed side by side (``fastvar.runtime.timing``, the bench's loop)."""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from collections.abc import Callable
from unittest import mock

import numpy as np
import torch

from fastvar.export.models.checkpoint import build_random_infinity, build_random_vae
from fastvar.export.models.hart_checkpoint import build_random_hart, build_random_tokenizer
from fastvar.export.models.hart_config import preset as hart_preset
from fastvar.export.models.hart_fastvar import HARTPruneStep
from fastvar.export.models.infinity import PruneStep
from fastvar.export.models.infinity_config import preset as infinity_preset
from fastvar.export.schedules import hart_prune_plan, hart_schedule, prune_plan, scale_schedule
from fastvar.family import family
from fastvar.runtime.backends import hart_torch, torch_ref
from fastvar.runtime.chain import GenerationResult, Geometry, SamplingSettings, generate
from fastvar.runtime.flops import step_macs
from fastvar.runtime.io import load_text_embeddings
from fastvar.runtime.timing import Timing, time_generations
from gpucheck.report import Context, error
from gpucheck.restore import kernel_fns


def _free(device: str) -> None:
    """Collect the dropped weights and backends (they may sit in reference cycles), then the CUDA cache."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def build_model(cfg, seed: int, precision: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``export/models/factory.py``'s ``build_pair`` for random weights, built directly on ``device`` (the
    factory builds on the CPU: 2B parameters would take minutes to initialise and copy there)."""
    model = build_random_infinity(cfg, seed, device=device).set_precision(precision)
    return model, build_random_vae(cfg.vae, seed + 1, device=device)


def tokens_equal(a: GenerationResult, b: GenerationResult) -> bool:
    return a.tokens.keys() == b.tokens.keys() and all(np.array_equal(a.tokens[k], b.tokens[k]) for k in a.tokens)


def logits_diff(a: GenerationResult, b: GenerationResult) -> float | None:
    if not a.logits or a.logits.keys() != b.logits.keys():
        return None
    return max(float(np.max(np.abs(a.logits[k].astype(np.float64) - b.logits[k]))) if a.logits[k].size else 0.0
               for k in a.logits)


def in_model_check(ctx: Context, make_backend: Callable[[], object], patch_restore: Callable[[Callable], object],
                   gen: Callable, expected: int, block_range: tuple[int, int]) -> dict:
    """The fastvar run with the fused kernel as the model's restore (what the TensorRT plugin does) must
    give the reference run's logits and tokens bit for bit, provided the reference repeats itself.
    ``patch_restore(fn)``: a context in which the backend's prune steps restore with ``fn``."""
    fused = kernel_fns()["fused"]
    calls = [0]

    def counted(*a, **kw):
        calls[0] += 1
        return fused(*a, **kw)

    def run(patched: bool):
        with patch_restore(counted) if patched else contextlib.nullcontext():
            be = make_backend()
            return time_generations(lambda: gen(be, True), 0, 1, device=ctx.device, keep_results=True).runs[0]

    ref_a = run(False)
    if ctx.device == "cuda":
        run(True)  # compiles the kernel's specialisations outside the timed run
    calls[0] = 0
    tri = run(True)
    ref_b = run(False)
    a, t, b = ref_a.result, tri.result, ref_b.result
    res = {"kernel": "restore_triton_fused", "plan_block_range": list(block_range),
           "kernel_calls": calls[0], "expected_calls": expected,
           "reference_repeats_itself": tokens_equal(a, b) and logits_diff(a, b) == 0.0,
           "tokens_equal": tokens_equal(a, t), "logits_max_abs_diff": logits_diff(a, t),
           "images_equal": bool(np.array_equal(a.images, t.images)),
           "reference_wall_s": ref_a.wall_s, "kernel_wall_s": tri.wall_s}
    exact = res["tokens_equal"] and res["logits_max_abs_diff"] == 0.0
    if calls[0] != expected:
        res["status"], res["why"] = "failed", f"the kernel ran {calls[0]} times, {expected} expected"
    elif exact:
        res["status"] = "passed"
    elif not res["reference_repeats_itself"]:
        res["status"], res["why"] = "inconclusive", "two reference runs already differ (device nondeterminism)"
    else:
        res["status"], res["why"] = "failed", "the kernel changed the logits/tokens of a deterministic run"
    return res


def _in_model(ctx: Context, res: dict, check: Callable[[], dict]) -> None:
    """Run an in-model kernel check into ``res``, an error reported rather than raised."""
    try:
        res["in_model_kernel"] = check()
        ctx.log(f"fused kernel inside the model: {res['in_model_kernel']['status']} "
                f"({res['in_model_kernel'].get('why', 'logits and tokens equal the reference')})")
    except Exception as err:  # noqa: BLE001
        res["in_model_kernel"] = {"status": "error", **error(err)}
        ctx.log(f"fused kernel inside the model: ERROR {res['in_model_kernel']['error']}")
    ctx.write()


def time_schedule(ctx: Context, spec: str, backend, gen: Callable, macs: int, executed: int,
                  est_fast: float | None) -> dict:
    """Warmup and timed generations of one schedule through the chain loop, trimmed to the time limit
    (keeping room for the fastvar runs after ``none``); the row the report and the summary read."""
    device, a = ctx.device, ctx.args
    if device == "cuda":
        _free(device)  # earlier backends may sit in reference cycles: free them first
        torch.cuda.reset_peak_memory_stats()

    def stop(t: Timing) -> bool:
        per = t.median("wall_s")
        after = (a.warmup + 1) * (est_fast or per) if spec == "none" else 0.0
        return ctx.time_left() < per + after

    t = time_generations(lambda: gen(backend, False), a.warmup, a.runs, device=device, stop=stop, keep_results=True)
    outs = [r.result for r in t.runs]
    wall, loop = t.median("wall_s"), t.median("loop_s")
    row = {"runs": len(t.runs), "warmup_s": t.warmup_s, "seconds_per_image": wall, "wall_s": t.seconds("wall_s"),
           "loop_median_s": loop, "decode_median_s": t.median("decode_s"), "steps_median_s": t.steps_median(),
           "steps_note": "the chain's per-step times (CUDA events on a GPU)",
           "executed_steps": executed, "gmacs": macs / 1e9,
           "achieved_tflops_loop": 2 * macs / loop / 1e12 if loop > 0 else None,
           "kv_cache_bytes": backend.kv_bytes,
           "runs_repeat_bit_for_bit": all(tokens_equal(outs[0], o) for o in outs[1:])}
    if t.stopped_early:
        row["notes"] = [f"{spec}: {len(t.runs)} of {a.runs} timed runs (time limit)"]
    if device == "cuda":
        row["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
        row["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
    ctx.log(f"{spec:>8}: {wall:.3f} s/image (loop {loop:.3f}s, decode {row['decode_median_s']:.3f}s) over "
            f"{len(t.runs)} runs" + (f", peak {row['peak_gpu_allocated_bytes'] / 2**30:.1f} GiB"
                                     if device == "cuda" else ""))
    ctx.write()
    return row


def time_both(ctx: Context, res: dict, make: Callable[[str], tuple]) -> None:
    """Time ``none`` then ``fastvar`` (``make(spec)``: backend, generation, multiply-adds, executed steps)
    into ``res["schedules"]``, then the speedup. Each backend is dropped before the next is made."""
    est_fast = None
    for spec in ("none", "fastvar"):
        backend, gen, macs, executed = make(spec)
        row = time_schedule(ctx, spec, backend, gen, macs, executed, est_fast)
        del backend
        res["schedules"][spec] = row
        est_fast = row["seconds_per_image"] / 2 if spec == "none" else est_fast
    n, f = res["schedules"]["none"], res["schedules"]["fastvar"]
    res["speedup"] = s = {"seconds_per_image": n["seconds_per_image"] / f["seconds_per_image"],
                          "transformer_loop": n["loop_median_s"] / f["loop_median_s"],
                          "compute_ceiling": n["gmacs"] / f["gmacs"]}
    res["status"] = "done"
    ctx.log(f"FastVAR speedup: {s['seconds_per_image']:.2f}x per image, {s['transformer_loop']:.2f}x transformer "
            f"loop (multiply-add ceiling {s['compute_ceiling']:.2f}x)")


def _config(preset: Callable, name: str, depth: int | None) -> tuple:
    """(the preset, the model at ``depth`` blocks: the preset's own depth when None)."""
    base = preset(name)
    return base, base.with_depth(depth) if depth and depth != base.depth else base


def _start(ctx: Context, name: str, base, cfg, model: torch.nn.Module, precision: str, resolution: str,
           t0: float) -> dict:
    """The section's row, in the report from here on, with the model built since ``t0``."""
    if ctx.device == "cuda":
        torch.cuda.synchronize()
    res: dict = {"status": "running", "model": cfg.name, "depth": cfg.depth, "full_depth": base.depth,
                 "width": cfg.width, "heads": cfg.heads, "parameters": sum(p.numel() for p in model.parameters()),
                 "precision": precision, "resolution": resolution, "weights": "random (seed 0)",
                 "build_s": time.perf_counter() - t0, "device": ctx.device, "warmup": ctx.args.warmup,
                 "runs_requested": ctx.args.runs, "schedules": {}}
    ctx.report["sections"][name] = res
    ctx.log(f"built {cfg.name} depth {cfg.depth}/{base.depth} ({res['parameters'] / 1e6:.1f}M parameters) on "
            f"{ctx.device} in {res['build_s']:.1f}s")
    return res


def _check_and_time(ctx: Context, res: dict, sched, geom, text_channels: int, gen_args: dict,
                    backend_for: Callable, patch: Callable, checked, plan_for: Callable, sublayers: int,
                    macs_for: Callable) -> None:
    """The fused kernel inside the model on the ``checked`` plan (``sublayers`` restores per pruned step and
    block), then ``none`` and ``fastvar`` timed; ``backend_for(plan)`` opens the torch backend of a plan."""
    text, lengths = load_text_embeddings(None, 1, text_channels)
    settings = SamplingSettings.uniform(1, **gen_args)
    res.update(text_len=int(text.shape[1]), **gen_args)

    def gen_for(plan):
        return lambda be, keep_logits: generate(be, sched, plan, geom, text, lengths, settings,
                                                keep_logits=keep_logits)

    lo, hi = checked.block_range
    _in_model(ctx, res, lambda: in_model_check(
        ctx, lambda: backend_for(checked), patch, gen_for(checked),
        sum(st.pruned for st in checked.steps) * (hi - lo) * sublayers, checked.block_range))

    def make(spec: str):
        plan = plan_for(spec)
        return backend_for(plan), gen_for(plan), macs_for(plan, int(text.shape[1])), len(plan.executed)

    time_both(ctx, res, make)


def section_speedup(ctx: Context) -> dict:
    a, device = ctx.args, ctx.device
    base, cfg = _config(infinity_preset, a.model, a.depth)
    t0 = time.perf_counter()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, vae = build_model(cfg, 0, "bf16", device)
    res = _start(ctx, "speedup", base, cfg, model, "bf16", a.res, t0)
    if device == "cuda":
        res["weights_gpu_bytes"] = torch.cuda.memory_allocated()
    sched = scale_schedule(a.res)
    geom = Geometry(bits=cfg.bits, codebook_dim=cfg.vae.codebook_dim, patchify=cfg.spatial_patchify)
    block_range = (0, 1) if device == "cpu" and ctx.quick else None  # interpreter time: one block in CI
    _check_and_time(
        ctx, res, sched, geom, cfg.text_channels, {"seed": 0, "cfg": 4.0, "tau": 0.5},
        lambda plan: torch_ref.TorchBackend(model, vae, sched, plan),
        lambda fn: mock.patch.object(torch_ref, "PruneStep", functools.partial(PruneStep, restore=fn)),
        prune_plan(sched, "fastvar", cfg.depth, block_range=block_range),
        lambda spec: prune_plan(sched, spec, cfg.depth), 3,  # attention, cross-attention, MLP
        lambda plan, text_len: sum(m.macs for m in step_macs(cfg, plan, 2, 1, text_len)))
    model = vae = None  # the weights go before the cache is emptied (closures above hold these cells)
    _free(device)
    return res


def section_hart(ctx: Context) -> dict:
    """HART at its released geometry (hart-0.7b, full depth, 1024, fp32 as exported; random weights): the
    fused kernel as every pruned sub-layer's restore must leave logits and tokens bit-identical (gating),
    then schedules ``none`` and ``fastvar`` timed through the chain loop with the multiply-add ceiling."""
    a, device = ctx.args, ctx.device
    base, cfg = _config(hart_preset, a.hart_model, a.hart_depth)
    t0 = time.perf_counter()
    model, tok = build_random_hart(cfg, 0).to(device), build_random_tokenizer(cfg.tokenizer, 1).to(device)
    res = _start(ctx, "hart", base, cfg, model, "fp32", "1024", t0)
    sched = hart_schedule(cfg.patch_nums)
    plans = {spec: hart_prune_plan(sched, spec, cfg.depth, cfg.context_tokens) for spec in ("none", "fastvar")}
    _check_and_time(
        ctx, res, sched, family("hart").geometry(cfg.to_dict()), cfg.context_dim, {"seed": 0, "cfg": 4.5, "tau": None},
        lambda plan: hart_torch.HARTTorchBackend(model, tok, plan),
        lambda fn: mock.patch.object(hart_torch, "HARTPruneStep", functools.partial(HARTPruneStep, restore=fn)),
        plans["fastvar"], plans.__getitem__, 2,  # attention and MLP
        lambda plan, _text_len: sum(m.macs for m in step_macs(cfg, plan, 2, 1)))
    model = tok = None  # the weights go before the cache is emptied (closures above hold these cells)
    _free(device)
    return res
