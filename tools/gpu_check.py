"""Prepared GPU check (CUDA machine with torch, no TensorRT): one command, a few minutes.

1. FastVARRestore reference on CUDA vs CPU (must be exact), and its bandwidth vs a device copy.
2. The torch backend's FastVAR speedup at Infinity-2B geometry (random bf16 weights, 1024, 1:1):
   schedule ``fastvar`` vs ``none``, transformer loop and end to end, medians of timed runs.

Usage: python tools/gpu_check.py [--depth 32] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fastvar.export.models.checkpoint import build_random_infinity, build_random_vae
from fastvar.export.models.infinity_config import preset
from fastvar.export.schedules import prune_plan, scale_schedule
from fastvar.plugins.restore import restore_reference
from fastvar.runtime.backends.torch_ref import TorchBackend
from fastvar.runtime.chain import Geometry, generate


def _cuda_time(fn, reps=20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def restore_check() -> dict:
    out = {}
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for (hc, h, k) in ((24, 40, 800), (24, 32, 615), (36, 64, 1024)):
            cache = torch.randn(2, hc * hc, 2048, generator=g).to(dtype)
            kept = torch.randn(2, k, 2048, generator=g).to(dtype)
            idx = torch.stack([torch.randperm(h * h, generator=g)[:k] for _ in range(2)])
            cpu = restore_reference(kept, idx, cache, (hc, hc), (h, h))
            gpu = restore_reference(kept.cuda(), idx.cuda(), cache.cuda(), (hc, hc), (h, h))
            diff = (gpu.cpu().float() - cpu.float()).abs().max().item()
            args = (kept.cuda(), idx.cuda(), cache.cuda(), (hc, hc), (h, h))
            t = _cuda_time(lambda a=args: restore_reference(*a))
            moved = (cache.numel() + kept.numel() + 2 * h * h * 2048) * cache.element_size() + idx.numel() * 8
            dst = torch.empty(2, h * h, 2048, dtype=dtype, device="cuda")
            src = torch.empty_like(dst)
            t_copy = _cuda_time(lambda d=dst, s=src: d.copy_(s))
            key = f"{str(dtype).split('.')[-1]} {hc}->{h} K={k}"
            out[key] = {"max_abs_diff_vs_cpu": diff, "seconds": t, "GB_per_s": moved / t / 1e9,
                        "copy_seconds_same_output": t_copy}
            print(f"restore {key}: cuda-vs-cpu max diff {diff:.3g}; {t * 1e6:.1f} us, {moved / t / 1e9:.0f} GB/s; "
                  f"copy of the output {t_copy * 1e6:.1f} us")
    return out


def speed_check(depth: int, runs: int) -> dict:
    cfg = preset("infinity-2b").with_depth(depth)
    t0 = time.perf_counter()
    model = build_random_infinity(cfg, 0, device="cuda").set_precision("bf16")
    vae = build_random_vae(cfg.vae, 1, device="cuda")
    print(f"built infinity-2b geometry, depth {depth}, in {time.perf_counter() - t0:.1f}s")
    sched = scale_schedule(1024)
    geom = Geometry(cfg.bits, cfg.vae.codebook_dim, cfg.spatial_patchify)
    text = torch.randn(1, 32, 2048, generator=torch.Generator().manual_seed(0)).cuda()
    lengths = torch.tensor([32], device="cuda")
    res = {}
    for spec in ("none", "fastvar"):
        plan = prune_plan(sched, spec, cfg.depth)
        backend = TorchBackend(model, vae, sched, plan)
        loops, totals, steps = [], [], []
        for r in range(runs + 1):
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = generate(backend, sched, plan, geom, text, lengths, 0, 4.0, 0.5)
            torch.cuda.synchronize()
            if r:
                loops.append(out.timings["loop_s"])
                totals.append(time.perf_counter() - t)
                steps.append(out.timings["steps"])
        per_step = {s["index"]: statistics.median(run[i]["seconds"] for run in steps)
                    for i, s in enumerate(steps[0])}
        res[spec] = {"loop_s": statistics.median(loops), "total_s": statistics.median(totals),
                     "decode_s": out.timings["decode_s"], "steps": per_step,
                     "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "kv_bytes": backend.kv.nbytes}
        print(f"{spec}: loop {res[spec]['loop_s']:.3f}s, end to end {res[spec]['total_s']:.3f}s, "
              f"KV {backend.kv.nbytes / 2**30:.2f} GiB; per step "
              + ", ".join(f"{i}:{v * 1e3:.0f}ms" for i, v in per_step.items()))
    res["speedup_loop"] = res["none"]["loop_s"] / res["fastvar"]["loop_s"]
    res["speedup_total"] = res["none"]["total_s"] / res["fastvar"]["total_s"]
    print(f"FastVAR speedup: transformer loop {res['speedup_loop']:.2f}x, end to end {res['speedup_total']:.2f}x")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "restore": restore_check()}
    with torch.inference_mode():
        report["speed"] = speed_check(args.depth, args.runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
