#!/usr/bin/env python3
"""Prepared GPU check: one command, under 6 minutes on one H100; CUDA, PyTorch and Triton, no TensorRT.

    python tools/gpu_check.py --out DIR [--quick]
    TRITON_INTERPRET=1 python tools/gpu_check.py --device cpu --quick --out DIR   # CI: toy sizes, same code

1. environment: Python, torch, CUDA, Triton, GPU name, compute capability, memory, the code's git commit.
2. restore_exactness: the FastVARRestore Triton kernels (two launches, ``restore_triton``; one fused launch,
   ``restore_triton_fused``) on the device against ``restore_reference`` computed on the CPU (the definition),
   torch.equal: fp32/fp16/bf16, batch 1 and 3, K = L and K = 1, non-dividing windows (24->40, 36->64),
   int32 indices, and the geometries of Infinity-2B's fastvar plans (B = 2 CFG rows, C = 2048) and of
   HART-0.7B's (36x36 -> 48x48 and 64x64, C = 1536), random kept-index permutations. The kernels against
   the CUDA reference are reported too (not gating).
3. bandwidth: the fused and two-launch kernels, the torch reference and a device-to-device copy of the
   output at the 2B geometries (bf16): median CUDA-event times with L2 flushed ("cold") and from a CUDA graph
   of back-to-back launches ("hot"), compulsory bytes (read cache + kept + idx, write output) -> GB/s.
4. speedup: the torch reference backend (the runtime's own chain loop) at Infinity-2B geometry with random
   bf16 weights, 1024, schedule fastvar vs none, same seed: seconds per image, transformer loop and decode
   (synchronised), peak GPU memory, the multiply-add ceiling; and the fastvar run with the fused kernel
   patched into the model's restore, whose logits and tokens must equal the reference's (gating when the
   reference itself repeats bit for bit).
5. hart: the same two checks for hart-0.7b at full depth (fp32, as exported), 1024, guidance 4.5.

Writes DIR/gpu_check.json after every section (a killed run keeps what finished) and DIR/gpu_check.txt.
Exit status: 0 every exactness check passed and every section ran; 1 an exactness check failed or could
not run; 2 exactness passed but another section failed (its error text is in the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.abc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# pyproject.toml's [tool.setuptools.package-dir], used when tomllib cannot read it (Python 3.10)
PACKAGE_DIRS = {"fastvar": "fastvar", "fastvar.export": "export", "fastvar.runtime": "runtime",
                "fastvar.plugins": "plugins", "fastvar.validate": "validate", "fastvar.builder": "builder"}
SECTIONS = ("environment", "restore_exactness", "bandwidth", "speedup", "hart")
KERNELS = ("two-launch", "fused", "fused-add")  # fused-add: FastVARRestoreAdd, on an fp32 residual
DTYPES = ("float32", "float16", "bfloat16")


# ---- the repository's package, installed or not --------------------------------------------------------

class _RepoFinder(importlib.abc.MetaPathFinder):
    """Maps ``fastvar`` and its top-level sub-packages onto this checkout's folders (what the editable
    install does), so the check runs the code next to it on a machine where nothing is installed."""

    def __init__(self, root: Path, dirs: dict[str, str]) -> None:
        self.root, self.dirs = root, dirs

    def find_spec(self, fullname, path=None, target=None):
        rel = self.dirs.get(fullname)
        init = self.root / rel / "__init__.py" if rel is not None else None
        if init is None or not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def _package_dirs(root: Path) -> dict[str, str]:
    try:
        import tomllib

        with open(root / "pyproject.toml", "rb") as f:
            return dict(tomllib.load(f)["tool"]["setuptools"]["package-dir"])
    except Exception:  # noqa: BLE001 - Python 3.10, or no pyproject: the known layout
        return dict(PACKAGE_DIRS)


def use_repo_package(root: Path = REPO) -> str:
    if not any(isinstance(f, _RepoFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _RepoFinder(root, _package_dirs(root)))
    import fastvar

    return str(Path(fastvar.__file__).resolve().parent.parent)


# ---- run context, report, output --------------------------------------------------------------------

@dataclass
class Context:
    args: argparse.Namespace
    device: str
    started: float
    deadline: float
    report: dict
    notes: list[str] = field(default_factory=list)

    @property
    def quick(self) -> bool:
        return self.args.quick

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f}s] {msg}", flush=True)

    def write(self) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        self.report["elapsed_s"] = time.perf_counter() - self.started
        tmp = out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        os.replace(tmp, out / "gpu_check.json")


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _error(err: BaseException) -> dict:
    return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=12)}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---- 1. environment ---------------------------------------------------------------------------------

def _run_text(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def section_environment(ctx: Context) -> dict:
    import torch

    info: dict = {"status": "done", "python": sys.version.split()[0], "platform": platform.platform(),
                  "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "torch_threads": torch.get_num_threads(), "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
                  "fastvar_from": ctx.report.get("fastvar_from"), "device_mode": ctx.device}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as err:  # noqa: BLE001
        info["triton"] = f"unavailable: {type(err).__name__}: {err}"
    info["git_commit"] = _run_text(["git", "rev-parse", "HEAD"], REPO)
    dirty = _run_text(["git", "status", "--porcelain", "--untracked-files=no"], REPO)
    info["git_modified_files"] = None if dirty is None else len(dirty.splitlines())
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        info["gpu"] = {"name": p.name, "count": torch.cuda.device_count(), "capability": f"{p.major}.{p.minor}",
                       "total_memory_gib": round(total / 2**30, 2), "free_memory_gib": round(free / 2**30, 2),
                       "multiprocessors": p.multi_processor_count,
                       "l2_cache_mib": round(getattr(p, "L2_cache_size", 0) / 2**20, 1),
                       "cudnn": torch.backends.cudnn.version()}
        info["nvidia_smi"] = _run_text(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                        "--format=csv,noheader"])
    elif ctx.device == "cuda":
        info["status"] = "error"
        info["error"] = "torch.cuda.is_available() is False: this check needs a CUDA GPU (or --device cpu for CI)"
    return info


# ---- 2. restore exactness ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    group: str
    cache_hw: tuple[int, int]
    out_hw: tuple[int, int]
    batch: int
    kept: int | str  # a count, or "all" (K = L)
    dtype: str
    channels: int
    seed: int = 0
    idx_dtype: str = "int64"
    kernels: tuple[str, ...] = KERNELS

    def k(self) -> int:
        return self.out_hw[0] * self.out_hw[1] if self.kept == "all" else int(self.kept)

    def label(self) -> str:
        (hc, wc), (h, w) = self.cache_hw, self.out_hw
        kept = "all" if self.kept == "all" else self.kept
        return (f"{self.group}: {self.dtype} B={self.batch} C={self.channels} {hc}x{wc}->{h}x{w} K={kept}"
                + (f" idx {self.idx_dtype}" if self.idx_dtype != "int64" else ""))


def plan_geometries(resolutions: tuple[str, ...], depth: int = 32) -> list[tuple[str, tuple, tuple, int]]:
    """(group, cache grid, step grid, kept) of every pruned step of the fastvar plans: the shapes the model
    hands FastVARRestore, read off export/schedules.py rather than written down here."""
    from fastvar.export.schedules import prune_plan, scale_schedule

    out, seen = [], set()
    for res in resolutions:
        plan = prune_plan(scale_schedule(res), "fastvar", depth)
        for st in plan.steps:
            key = (tuple(plan.cache_hw), (st.h, st.w), st.kept)
            if st.pruned and key not in seen:
                seen.add(key)
                out.append((f"fastvar {res}", *key))
    return out


def hart_geometries() -> list[tuple[str, tuple, tuple, int]]:
    """(group, cache grid, step grid, kept) of HART's fastvar plan at 1024 (36x36 -> 48x48 keeping 1152,
    -> 64x64 keeping 1024), read off export/schedules.py."""
    from fastvar.export.models.hart_config import preset
    from fastvar.export.schedules import hart_prune_plan, hart_schedule

    cfg = preset("hart-0.7b")
    plan = hart_prune_plan(hart_schedule(cfg.patch_nums), "fastvar", cfg.depth, cfg.context_tokens)
    return [("fastvar 1024", tuple(plan.cache_hw), (st.h, st.w), st.kept) for st in plan.steps if st.pruned]


def build_cases(device: str, quick: bool) -> list[Case]:
    """The case list: full-size on CUDA; on the CPU (Triton's interpreter, a few ms per program) the same
    kinds of case at toy sizes."""
    from fastvar.export.schedules import kept_count

    cases: list[Case] = []
    if device == "cuda":
        channels, plan_res, plan_dtypes = 160, ("1024", "2048"), DTYPES  # 160: a partial channel block
        generic = [((24, 24), (40, 40), 1, "all"), ((24, 24), (40, 40), 3, 1), ((36, 36), (64, 64), 1, 1),
                   ((36, 36), (64, 64), 3, "all"), ((24, 24), (40, 40), 3, 777), ((36, 36), (64, 64), 2, 2000),
                   ((6, 8), (10, 12), 2, 60), ((10, 10), (6, 6), 1, 7)]
        dtypes = DTYPES
        extra = [((32, 32), (s, s), kept_count(s * s, 0.5)) for s in (40, 48, 64)]
        plan_channels, plan_kernels = 2048, KERNELS
        if quick:
            generic, dtypes, plan_res, plan_dtypes, extra = generic[:2], ("float32", "bfloat16"), ("1024",), \
                ("bfloat16",), []
    else:
        channels, plan_res, plan_dtypes = 24, ("512",), ("bfloat16",)
        generic = [((6, 6), (10, 10), 1, "all"), ((6, 6), (10, 10), 3, 1)]
        if not quick:
            generic += [((9, 9), (16, 16), 3, 100), ((6, 8), (10, 12), 2, 60), ((10, 10), (6, 6), 1, 7)]
        dtypes, extra, plan_channels = DTYPES, [], 4
        plan_kernels = ("fused",) if quick else KERNELS
    for dt in dtypes:
        for chw, ohw, b, k in generic:
            cases.append(Case("generic", chw, ohw, b, k, dt, channels))
    first = generic[0]
    cases.append(Case("generic", first[0], first[1], 3, 5, "bfloat16", channels, idx_dtype="int32"))
    plans = plan_geometries(plan_res)
    plan_name = "infinity-2b" if device == "cuda" else "toy width,"
    if quick and device == "cuda":
        plans = [p for p in plans if p[2] == (40, 40)] or plans[:1]
    for dt in plan_dtypes:
        for group, chw, ohw, k in plans:
            cases.append(Case(f"{plan_name} {group}", chw, ohw, 2, k, dt, plan_channels, kernels=plan_kernels))
        for chw, ohw, k in extra:
            cases.append(Case("32x32 cache, K = L/2", chw, ohw, 2, k, dt, plan_channels))
    if device == "cuda" and not quick:
        for group, chw, ohw, k in hart_geometries():
            for dt in ("float32", "float16"):  # HART is exported fp32; upstream runs it under fp16 autocast
                cases.append(Case(f"hart-0.7b {group}", chw, ohw, 2, k, dt, 1536))
        for group, chw, ohw, k in plans[-1:]:
            cases.append(Case(f"infinity-2b {group}", chw, ohw, 2, k, "bfloat16", plan_channels, idx_dtype="int32"))
    return [Case(**{**asdict(c), "seed": i}) for i, c in enumerate(cases)]


def _kernel_fns() -> dict[str, Callable]:
    from fastvar.plugins.restore.triton_kernel import restore_add_triton_fused, restore_triton, restore_triton_fused

    return {"two-launch": restore_triton, "fused": restore_triton_fused, "fused-add": restore_add_triton_fused}


def case_inputs(case: Case):
    import torch

    g = torch.Generator().manual_seed(1000 + case.seed)
    (hc, wc), (h, w) = case.cache_hw, case.out_hw
    b, k, c, dt = case.batch, case.k(), case.channels, getattr(torch, case.dtype)
    cache = torch.randn(b, hc * wc, c, generator=g).to(dt)
    kept = torch.randn(b, k, c, generator=g).to(dt)
    idx = torch.stack([torch.randperm(h * w, generator=g)[:k] for _ in range(b)]).to(getattr(torch, case.idx_dtype))
    return kept, idx, cache


def _compare(got, want) -> dict:
    import torch

    got = got.to(want.device)
    same_dtype = got.dtype == want.dtype
    if got.shape != want.shape:
        return {"equal": False, "dtype_ok": same_dtype, "max_abs_diff": float("inf"), "mismatches": -1,
                "error": f"shape {tuple(got.shape)} != {tuple(want.shape)}"}
    diff = (got.float() - want.float()).abs()
    return {"equal": bool(same_dtype and torch.equal(got, want)), "dtype_ok": same_dtype,
            "max_abs_diff": float(diff.max()) if diff.numel() else 0.0, "mismatches": int((got != want).sum())}


def run_case(case: Case, device: str, fns: dict[str, Callable], plant: bool = False,
             device_reference: bool | None = None) -> list[dict]:
    """Every kernel of the case against the CPU reference (gating) and, on a device, the device's own
    reference (reported). ``fns`` maps kernel names to functions with restore_reference's signature."""
    import torch

    from fastvar.plugins.restore.reference import restore_reference

    kept, idx, cache = case_inputs(case)
    want = restore_reference(kept, idx, cache, case.cache_hw, case.out_hw)  # the definition, on the CPU
    residual = torch.randn(want.shape, generator=torch.Generator().manual_seed(2000 + case.seed))
    want_add = residual + want  # restore_add_reference: the model's fp32 residual stream plus the restored map
    dev = [t.to(device) for t in (kept, idx, cache)]
    if device_reference is None:
        device_reference = device != "cpu"
    dev_ref = restore_reference(*dev, case.cache_hw, case.out_hw) if device_reference else None
    rows = []
    for name in case.kernels:
        row = {"label": case.label(), "kernel": name, **{k: v for k, v in asdict(case).items() if k != "kernels"}}
        try:
            fused_add = name == "fused-add"
            args = ([residual.to(device)] if fused_add else []) + dev
            got = fns[name](*args, case.cache_hw, case.out_hw)
            if plant:  # --plant-mismatch: prove that a wrong kernel output fails the check
                got.view(-1)[:1].add_(1.0)
            row.update(_compare(got, want_add if fused_add else want))
            if dev_ref is not None:
                row["vs_device_reference"] = _compare(got, args[0] + dev_ref if fused_add else dev_ref)
        except Exception as err:  # noqa: BLE001 - one broken case must not hide the others
            row.update({"equal": False, "max_abs_diff": None, **_error(err)})
        rows.append(row)
    if dev_ref is not None:
        rows[-1]["device_reference_vs_cpu_reference"] = _compare(dev_ref, want)
    return rows


def section_restore(ctx: Context) -> dict:
    cases = build_cases(ctx.device, ctx.quick)
    if ctx.args.max_cases is not None:
        cases = cases[:ctx.args.max_cases]
    fns = _kernel_fns()
    res: dict = {"status": "running", "reference": "restore_reference on the CPU (the definition)", "cases": []}
    ctx.report["sections"]["restore_exactness"] = res
    for case in cases:
        rows = run_case(case, ctx.device, fns, ctx.args.plant_mismatch)
        for r in rows:
            res["cases"].append(r)
            ctx.log(f"{'PASS' if r['equal'] else 'FAIL'} {r['kernel']:>10} {r['label']}: max |diff| "
                    f"{r.get('max_abs_diff')}" + (f" ({r['error']})" if r.get("error") else ""))
        ctx.write()
    rows = res["cases"]
    res["passed"] = sum(r["equal"] for r in rows)
    res["failed"] = len(rows) - res["passed"]
    res["status"] = "passed" if rows and not res["failed"] else "failed"
    diffs = [r["max_abs_diff"] for r in rows if r.get("max_abs_diff") is not None]
    res["max_abs_diff"] = max(diffs) if diffs else None
    dev = [r["vs_device_reference"]["equal"] for r in rows if "vs_device_reference" in r]
    if dev:
        res["kernels_equal_device_reference"] = f"{sum(dev)}/{len(dev)}"
        res["device_reference_note"] = (
            "not gating: PyTorch's CUDA area pooling on channels-last input multiplies the float sum by a "
            "reciprocal rounded to the tensor's dtype, while the CPU (the definition) divides; the two agree "
            "wherever the window size is a power of two, which covers every FastVAR upsampling geometry")
    return res


# ---- 3. bandwidth -----------------------------------------------------------------------------------

class WallTimer:
    """CPU stand-in (the interpreter): exercises the section's code; its figures are no bandwidth."""

    method = "wall clock on the CPU (Triton interpreter): code-path check only, not a bandwidth"

    def cold(self, fn: Callable, n: int) -> list[float]:
        fn()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    def hot(self, fn: Callable, n: int, reps: int) -> tuple[list[float], str]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            out.append((time.perf_counter() - t0) / reps)
        return out, "back-to-back calls"


class CudaTimer:
    """CUDA events. Cold: each launch follows a 256 MiB write that evicts L2 and keeps the GPU busy while
    the host enqueues the launch (as triton.testing.do_bench does). Hot: a CUDA graph of ``reps``
    launches replayed (no host launch gaps; data stays in L2 when it fits)."""

    method = "CUDA events; cold = L2 flushed before each launch, hot = CUDA-graph replay of back-to-back launches"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")

    def _events(self, n: int):
        ev = self.torch.cuda.Event
        return [(ev(enable_timing=True), ev(enable_timing=True)) for _ in range(n)]

    def cold(self, fn: Callable, n: int) -> list[float]:
        torch = self.torch
        fn()
        torch.cuda.synchronize()
        events = self._events(n)
        for start, end in events:
            self.flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1e3 for s, e in events]

    def hot(self, fn: Callable, n: int, reps: int) -> tuple[list[float], str]:
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = None
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(reps):
                    fn()
            run, how = graph.replay, f"CUDA graph of {reps} launches"
        except Exception as err:  # noqa: BLE001 - fall back to plain launches, and say so
            torch.cuda.synchronize()
            graph = None

            def run():
                for _ in range(reps):
                    fn()

            how = f"{reps} back-to-back launches (graph capture failed: {type(err).__name__}: {err})"
        run()
        torch.cuda.synchronize()
        events = self._events(n)
        for start, end in events:
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        del graph
        return [s.elapsed_time(e) / 1e3 / reps for s, e in events], how


def section_bandwidth(ctx: Context) -> dict:
    import torch

    from fastvar.plugins.restore.reference import restore_reference

    if ctx.device == "cpu" and "bandwidth" not in ctx.args.sections_explicit:
        return {"status": "skipped", "reason": "--device cpu: no bandwidth on the interpreter (name the section "
                                               "in --sections to exercise its code)"}
    fns = _kernel_fns()
    if ctx.device == "cuda":
        geoms = plan_geometries(("1024",) if ctx.quick else ("1024", "2048"))
        batch, channels = 2, 2048
        n_cold, n_hot, reps = (10, 5, 10) if ctx.quick else (30, 10, 20)
        timer = CudaTimer()
    else:
        geoms, batch, channels, n_cold, n_hot, reps = [("toy", (4, 4), (6, 6), 10)], 2, 8, 2, 1, 2
        timer = WallTimer()
    prefix = "infinity-2b" if ctx.device == "cuda" else "cpu"
    res: dict = {"status": "done", "dtype": "bfloat16", "batch": batch, "channels": channels, "timing": timer.method,
                 "bytes_note": "compulsory traffic: read cache + kept + idx once, write the output once (the "
                               "two-launch form also writes the K kept rows twice, not counted)",
                 "geometries": []}
    for group, chw, ohw, k in geoms:
        case = Case(f"{prefix} {group}", chw, ohw, batch, k, "bfloat16", channels)
        kept, idx, cache = (t.to(ctx.device) for t in case_inputs(case))
        lo, es = ohw[0] * ohw[1], cache.element_size()
        out = torch.empty(batch, lo, channels, dtype=cache.dtype, device=ctx.device)
        src, dst = torch.randn_like(out), torch.empty_like(out)
        nbytes = es * (cache.numel() + kept.numel() + out.numel()) + idx.numel() * idx.element_size()
        copy_bytes = 2 * es * out.numel()
        args = (kept, idx, cache, chw, ohw)
        runs = {
            "fused": (functools.partial(fns["fused"], *args, out=out), nbytes),
            "two-launch": (functools.partial(fns["two-launch"], *args, out=out), nbytes),
            "torch reference": (functools.partial(restore_reference, *args), nbytes),
            "copy": (functools.partial(dst.copy_, src), copy_bytes),
        }
        row: dict = {"label": case.label(), "cache_hw": chw, "out_hw": ohw, "kept": k, "bytes": nbytes,
                     "copy_bytes": copy_bytes}
        for name, (fn, moved) in runs.items():
            try:
                cold = timer.cold(fn, n_cold)
                hot, how = timer.hot(fn, n_hot, reps)
                c, h = _median(cold), _median(hot)
                row[name] = {"cold_median_s": c, "cold_min_s": min(cold), "cold_GBps": moved / c / 1e9,
                             "hot_median_s": h, "hot_GBps": moved / h / 1e9, "hot_method": how}
            except Exception as err:  # noqa: BLE001
                row[name] = _error(err)
        for name in ("fused", "two-launch", "torch reference"):
            for heat in ("cold", "hot"):
                try:
                    row[f"{name} / copy ({heat})"] = row[name][f"{heat}_GBps"] / row["copy"][f"{heat}_GBps"]
                except (KeyError, TypeError, ZeroDivisionError):
                    row[f"{name} / copy ({heat})"] = None
        res["geometries"].append(row)
        ctx.log(_bandwidth_line(row))
        del kept, idx, cache, out, src, dst, runs, args
        if ctx.device == "cuda":
            torch.cuda.empty_cache()
    if any("error" in r.get(n, {}) for r in res["geometries"] for n in ("fused", "two-launch", "copy")):
        res["status"] = "error"
        res["error"] = "a timing failed (see the geometries)"
    return res


def _bandwidth_line(row: dict) -> str:
    parts = [row["label"]]
    for name in ("fused", "two-launch", "torch reference", "copy"):
        r = row.get(name, {})
        if "cold_median_s" in r:
            parts.append(f"{name} {r['cold_median_s'] * 1e6:.1f}us {r['cold_GBps']:.0f}GB/s cold, "
                         f"{r['hot_median_s'] * 1e6:.1f}us {r['hot_GBps']:.0f}GB/s hot")
        else:
            parts.append(f"{name} ERROR {r.get('error')}")
    ratio = row.get("fused / copy (cold)")
    if ratio is not None:
        parts.append(f"fused/copy {ratio:.2f} cold, {row.get('fused / copy (hot)') or float('nan'):.2f} hot")
    return "; ".join(parts)


# ---- 4. FastVAR speedup of the torch backend ----------------------------------------------------------

def build_model(cfg, seed: int, precision: str, device: str):
    """``export/models/factory.py``'s ``build_pair`` for random weights, built directly on ``device`` (the
    factory builds on the CPU: 2B parameters would take minutes to initialise and copy there)."""
    from fastvar.export.models.checkpoint import build_random_infinity, build_random_vae

    model = build_random_infinity(cfg, seed, device=device).set_precision(precision)
    vae = build_random_vae(cfg.vae, seed + 1, device=device)
    return model, vae


class _Run:
    """One generation through the runtime's chain loop, wall time with the device synchronised around it; the
    loop and decode times are the chain's own (CUDA events on a GPU)."""

    def __init__(self, backend, device: str) -> None:
        self.backend, self.device = backend, device

    def __call__(self, gen: Callable, keep_logits: bool = False) -> tuple[object, dict]:
        _sync(self.device)
        t0 = time.perf_counter()
        out = gen(self.backend, keep_logits)
        _sync(self.device)
        return out, {"wall_s": time.perf_counter() - t0, "loop_s": out.timings["loop_s"],
                     "decode_s": out.timings["decode_s"]}


def _tokens_equal(a, b) -> bool:
    import numpy as np

    return a.tokens.keys() == b.tokens.keys() and all(np.array_equal(a.tokens[k], b.tokens[k]) for k in a.tokens)


def _logits_diff(a, b) -> float | None:
    import numpy as np

    if not a.logits or a.logits.keys() != b.logits.keys():
        return None
    return max(float(np.max(np.abs(a.logits[k].astype(np.float64) - b.logits[k]))) if a.logits[k].size else 0.0
               for k in a.logits)


def in_model_check(ctx: Context, make_backend: Callable[[], object], patch_restore: Callable[[Callable], object],
                   gen: Callable, expected: int, block_range: tuple[int, int]) -> dict:
    """The fastvar run with the fused kernel as the model's restore (what the TensorRT plugin does) must
    give the reference run's logits and tokens bit for bit, provided the reference repeats itself.
    ``patch_restore(fn)``: a context in which the backend's prune steps restore with ``fn``."""
    import numpy as np

    fused = _kernel_fns()["fused"]
    calls = [0]

    def counted(*a, **kw):
        calls[0] += 1
        return fused(*a, **kw)

    def run(patched: bool):
        with patch_restore(counted) if patched else contextlib.nullcontext():
            return _Run(make_backend(), ctx.device)(gen, True)

    ref_a, t_ref = run(False)
    if ctx.device == "cuda":
        run(True)  # compiles the kernel's specialisations outside the timed run
    calls[0] = 0
    tri, t_tri = run(True)
    ref_b, _ = run(False)
    res = {"kernel": "restore_triton_fused", "plan_block_range": list(block_range),
           "kernel_calls": calls[0], "expected_calls": expected,
           "reference_repeats_itself": _tokens_equal(ref_a, ref_b) and _logits_diff(ref_a, ref_b) == 0.0,
           "tokens_equal": _tokens_equal(ref_a, tri), "logits_max_abs_diff": _logits_diff(ref_a, tri),
           "images_equal": bool(np.array_equal(ref_a.images, tri.images)),
           "reference_wall_s": t_ref["wall_s"], "kernel_wall_s": t_tri["wall_s"]}
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
        res["in_model_kernel"] = {"status": "error", **_error(err)}
        ctx.log(f"fused kernel inside the model: ERROR {res['in_model_kernel']['error']}")
    ctx.write()


def time_schedule(ctx: Context, spec: str, backend, gen: Callable, macs: int, executed: int,
                  est_fast: float | None) -> dict:
    """Warmup and timed generations of one schedule through the chain loop, trimmed to the time limit
    (keeping room for the fastvar runs after ``none``); the row the report and the summary read."""
    import torch

    device = ctx.device
    runner = _Run(backend, device)
    if device == "cuda":
        gc.collect()  # earlier backends may sit in reference cycles: free them first
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    a = ctx.args
    timed, outs, warm_s = [], [], []
    notes = []
    for r in range(a.warmup + a.runs):
        if r > a.warmup and timed:  # keep >= 1 timed run; stop early when the time limit nears
            per = _median([t["wall_s"] for t in timed])
            after = (a.warmup + 1) * (est_fast or per) if spec == "none" else 0.0
            if ctx.time_left() < per + after:
                notes.append(f"{spec}: {len(timed)} of {a.runs} timed runs (time limit)")
                break
        out, t = runner(gen)
        if r < a.warmup:
            warm_s.append(t["wall_s"])
        else:
            timed.append(t)
            outs.append(out)
    steps: dict[int, list[float]] = {}
    for o in outs:
        for s in o.timings["steps"]:
            steps.setdefault(s["index"], []).append(s["seconds"])
    wall = _median([t["wall_s"] for t in timed])
    loop = _median([t["loop_s"] for t in timed])
    row = {"runs": len(timed), "warmup_s": warm_s, "seconds_per_image": wall,
           "wall_s": [t["wall_s"] for t in timed], "loop_median_s": loop,
           "decode_median_s": _median([t["decode_s"] for t in timed]),
           "steps_median_s": {str(k): _median(v) for k, v in sorted(steps.items())},
           "steps_note": "the chain's per-step times (CUDA events on a GPU)",
           "executed_steps": executed, "gmacs": macs / 1e9,
           "achieved_tflops_loop": 2 * macs / loop / 1e12 if loop > 0 else None,
           "kv_cache_bytes": backend.kv_bytes,
           "runs_repeat_bit_for_bit": all(_tokens_equal(outs[0], o) for o in outs[1:])}
    if notes:
        row["notes"] = notes
    if device == "cuda":
        row["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
        row["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
    ctx.log(f"{spec:>8}: {wall:.3f} s/image (loop {loop:.3f}s, decode {row['decode_median_s']:.3f}s) over "
            f"{len(timed)} runs" + (f", peak {row['peak_gpu_allocated_bytes'] / 2**30:.1f} GiB"
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
    _speedup(ctx, res)


def _speedup(ctx: Context, res: dict) -> None:
    n, f = res["schedules"]["none"], res["schedules"]["fastvar"]
    res["speedup"] = {"seconds_per_image": n["seconds_per_image"] / f["seconds_per_image"],
                      "transformer_loop": n["loop_median_s"] / f["loop_median_s"],
                      "compute_ceiling": n["gmacs"] / f["gmacs"]}
    res["status"] = "done"
    s = res["speedup"]
    ctx.log(f"FastVAR speedup: {s['seconds_per_image']:.2f}x per image, {s['transformer_loop']:.2f}x transformer "
            f"loop (multiply-add ceiling {s['compute_ceiling']:.2f}x)")


def section_speedup(ctx: Context) -> dict:
    from unittest import mock

    import torch

    from fastvar.export.models.infinity import PruneStep
    from fastvar.export.models.infinity_config import preset
    from fastvar.export.schedules import prune_plan, scale_schedule
    from fastvar.runtime.backends import torch_ref
    from fastvar.runtime.backends.torch_ref import TorchBackend
    from fastvar.runtime.chain import Geometry, SamplingSettings, generate
    from fastvar.runtime.flops import step_macs
    from fastvar.runtime.io import load_text_embeddings

    a, device = ctx.args, ctx.device
    base = preset(a.model)
    depth = a.depth or base.depth
    cfg = base.with_depth(depth) if depth != base.depth else base
    t0 = time.perf_counter()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, vae = build_model(cfg, 0, "bf16", device)
    _sync(device)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    res: dict = {"status": "running", "model": cfg.name, "depth": cfg.depth, "full_depth": base.depth,
                 "width": cfg.width, "heads": cfg.heads, "parameters": params, "precision": "bf16",
                 "resolution": a.res, "weights": "random (seed 0)", "build_s": build_s, "device": device,
                 "warmup": a.warmup, "runs_requested": a.runs, "schedules": {}}
    if device == "cuda":
        res["weights_gpu_bytes"] = torch.cuda.memory_allocated()
    ctx.report["sections"]["speedup"] = res
    ctx.log(f"built {cfg.name} depth {cfg.depth}/{base.depth} ({params / 1e6:.1f}M parameters) on {device} "
            f"in {build_s:.1f}s")
    sched = scale_schedule(a.res)
    geom = Geometry(bits=cfg.bits, codebook_dim=cfg.vae.codebook_dim, patchify=cfg.spatial_patchify)
    text, lengths = load_text_embeddings(None, 1, cfg.text_channels)
    gen_args = {"seed": 0, "cfg": 4.0, "tau": 0.5}
    settings = SamplingSettings.uniform(1, **gen_args)
    res.update(text_len=int(text.shape[1]), **gen_args)

    block_range = (0, 1) if device == "cpu" and ctx.quick else None  # interpreter time: one block in CI
    checked = prune_plan(sched, "fastvar", cfg.depth, block_range=block_range)

    def gen_checked(be, keep_logits):
        return generate(be, sched, checked, geom, text, lengths, settings, keep_logits=keep_logits)

    def patch(fn):
        return mock.patch.object(torch_ref, "PruneStep", functools.partial(PruneStep, restore=fn))

    lo, hi = checked.block_range
    _in_model(ctx, res, lambda: in_model_check(
        ctx, lambda: TorchBackend(model, vae, sched, checked), patch, gen_checked,
        sum(st.pruned for st in checked.steps) * (hi - lo) * 3, checked.block_range))

    def make(spec: str):
        plan = prune_plan(sched, spec, cfg.depth)

        def gen(be, keep_logits):
            return generate(be, sched, plan, geom, text, lengths, settings, keep_logits=keep_logits)

        macs = sum(m.macs for m in step_macs(cfg, plan, 2, 1, int(text.shape[1])))
        return TorchBackend(model, vae, sched, plan), gen, macs, len(plan.executed)

    time_both(ctx, res, make)
    model = vae = None  # the weights go before the cache is emptied (closures above hold these cells)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


# ---- 5. HART: the fused kernel inside HART, and FastVAR's speedup of its torch backend --------------------

def section_hart(ctx: Context) -> dict:
    """HART at its released geometry (hart-0.7b, full depth, 1024, fp32 as exported; random weights): the
    fused kernel as every pruned sub-layer's restore must leave logits and tokens bit-identical (gating),
    then schedules ``none`` and ``fastvar`` timed through the chain loop with the multiply-add ceiling."""
    from unittest import mock

    import torch

    from fastvar.export.models.hart_checkpoint import build_random_hart, build_random_tokenizer
    from fastvar.export.models.hart_config import preset
    from fastvar.export.models.hart_fastvar import HARTPruneStep
    from fastvar.export.schedules import hart_prune_plan, hart_schedule
    from fastvar.family import family
    from fastvar.runtime.backends import hart_torch
    from fastvar.runtime.chain import SamplingSettings, generate
    from fastvar.runtime.flops import step_macs
    from fastvar.runtime.io import load_text_embeddings

    a, device = ctx.args, ctx.device
    base = preset(a.hart_model)
    depth = a.hart_depth or base.depth
    cfg = base.with_depth(depth) if depth != base.depth else base
    t0 = time.perf_counter()
    model, tok = build_random_hart(cfg, 0).to(device), build_random_tokenizer(cfg.tokenizer, 1).to(device)
    _sync(device)
    res: dict = {"status": "running", "model": cfg.name, "depth": cfg.depth, "full_depth": base.depth,
                 "width": cfg.width, "heads": cfg.heads, "parameters": sum(p.numel() for p in model.parameters()),
                 "precision": "fp32", "resolution": "1024", "weights": "random (seed 0)",
                 "build_s": time.perf_counter() - t0, "device": device, "warmup": a.warmup,
                 "runs_requested": a.runs, "schedules": {}}
    ctx.report["sections"]["hart"] = res
    ctx.log(f"built {cfg.name} depth {cfg.depth}/{base.depth} ({res['parameters'] / 1e6:.1f}M parameters) on "
            f"{device} in {res['build_s']:.1f}s")
    sched = hart_schedule(cfg.patch_nums)
    geom = family("hart").geometry(cfg.to_dict())
    text, lengths = load_text_embeddings(None, 1, cfg.context_dim)
    gen_args = {"seed": 0, "cfg": 4.5, "tau": None}
    settings = SamplingSettings.uniform(1, **gen_args)
    res.update(text_len=int(text.shape[1]), **gen_args)
    plans = {spec: hart_prune_plan(sched, spec, cfg.depth, cfg.context_tokens) for spec in ("none", "fastvar")}

    def gen_for(plan):
        return lambda be, keep_logits: generate(be, sched, plan, geom, text, lengths, settings,
                                                keep_logits=keep_logits)

    def patch(fn):
        return mock.patch.object(hart_torch, "HARTPruneStep", functools.partial(HARTPruneStep, restore=fn))

    fast = plans["fastvar"]
    lo, hi = fast.block_range
    _in_model(ctx, res, lambda: in_model_check(
        ctx, lambda: hart_torch.HARTTorchBackend(model, tok, fast), patch, gen_for(fast),
        sum(st.pruned for st in fast.steps) * (hi - lo) * 2, fast.block_range))  # attention and MLP
    def make(spec: str):
        plan = plans[spec]
        macs = sum(m.macs for m in step_macs(cfg, plan, 2, 1))
        return hart_torch.HARTTorchBackend(model, tok, plan), gen_for(plan), macs, len(plan.executed)

    time_both(ctx, res, make)
    model = tok = None  # the weights go before the cache is emptied (closures above hold these cells)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


# ---- summary and driver ------------------------------------------------------------------------------

def exactness(report: dict) -> tuple[bool | None, list[str]]:
    """(all exactness checks passed, or None when none ran; what failed)."""
    secs = report["sections"]
    ran, bad = False, []
    r = secs.get("restore_exactness")
    if r is not None:
        ran = True
        if r.get("status") != "passed":
            bad.append(f"restore_exactness: {r.get('failed', '?')} failed" if "error" not in r else
                       f"restore_exactness: {r['error']}")
    for name in ("speedup", "hart"):
        m = secs.get(name, {}).get("in_model_kernel")
        if m is not None:
            ran = True
            if m.get("status") in ("failed", "error"):
                bad.append(f"fused kernel inside {secs[name].get('model')}: {m.get('why') or m.get('error')}")
    return (not bad) if ran else None, bad


def exit_code(report: dict) -> int:
    ok, _ = exactness(report)
    if ok is False:
        return 1
    errors = [k for k, s in report["sections"].items() if s.get("status") in ("error", "running")]
    return 2 if errors else 0


def _speedup_lines(name: str, s: dict, weights: str) -> list[str]:
    lines = [f"{name}: {s.get('status')}, {s.get('model')} depth {s.get('depth')}/{s.get('full_depth')}, "
             f"{s.get('resolution')}, {weights} random weights" + (f"; error: {s['error']}" if s.get("error") else "")]
    for spec, row in s.get("schedules", {}).items():
        peak = row.get("peak_gpu_allocated_bytes")
        lines.append(f"  {spec:>8}: {row['seconds_per_image']:.3f} s/image, loop {row['loop_median_s']:.3f} s, "
                     f"decode {row['decode_median_s']:.3f} s, {row['runs']} runs"
                     + (f", peak GPU {peak / 2**30:.2f} GiB" if peak else ""))
    if "speedup" in s:
        sp = s["speedup"]
        lines.append(f"  fastvar vs none: {sp['seconds_per_image']:.2f}x per image, {sp['transformer_loop']:.2f}x "
                     f"transformer loop, multiply-add ceiling {sp['compute_ceiling']:.2f}x")
    m = s.get("in_model_kernel")
    if m:
        lines.append(f"  fused kernel inside the model: {m.get('status')}"
                     + (f" ({m.get('why') or m.get('error')})" if m.get("status") != "passed" else
                        f" ({m.get('kernel_calls')} calls, logits and tokens equal the reference)"))
    return lines


def summary(report: dict) -> str:
    secs = report["sections"]
    lines = [f"fastvar-trt GPU check ({report['device_mode']}{', quick' if report['quick'] else ''}): "
             f"{report.get('elapsed_s', 0):.0f} s"]
    env = secs.get("environment", {})
    gpu = env.get("gpu") or {}
    lines.append(f"environment: python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
                 f"triton {env.get('triton')}; " + (f"{gpu.get('name')} sm_{gpu.get('capability', '').replace('.', '')}"
                                                      f", {gpu.get('total_memory_gib')} GiB" if gpu else "no GPU")
                 + (f"; error: {env['error']}" if env.get("error") else ""))
    r = secs.get("restore_exactness", {})
    if r:
        lines.append(f"restore exactness vs the CPU reference: {r.get('status')}, {r.get('passed', 0)} passed, "
                     f"{r.get('failed', 0)} failed, max |diff| {r.get('max_abs_diff')}"
                     + (f"; kernels equal to the CUDA reference in {r['kernels_equal_device_reference']}"
                        if "kernels_equal_device_reference" in r else "") + (f"; error: {r['error']}"
                                                                              if r.get("error") else ""))
        for c in r.get("cases", []):
            if not c.get("equal"):
                lines.append(f"  FAIL {c['kernel']} {c['label']}: max |diff| {c.get('max_abs_diff')}, "
                             f"{c.get('mismatches')} elements" + (f", {c['error']}" if c.get("error") else ""))
    b = secs.get("bandwidth", {})
    if b:
        lines.append(f"bandwidth: {b.get('status')}" + (f" ({b.get('reason')})" if b.get("reason") else "")
                     + (f"; error: {b['error']}" if b.get("error") else ""))
        for g in b.get("geometries", []):
            lines.append("  " + _bandwidth_line(g))
    for name, weights in (("speedup", "bf16"), ("hart", "fp32")):
        if secs.get(name):
            lines += _speedup_lines(name, secs[name], weights)
    ok, bad = exactness(report)
    lines.append(f"exactness: {'PASSED' if ok else 'not run' if ok is None else 'FAILED'}"
                 + (f" ({'; '.join(bad)})" if bad else "") + f"; exit status {exit_code(report)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json and gpu_check.txt")
    p.add_argument("--quick", action="store_true", help="few cases, few iterations: a smoke run")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: CI only, Triton's interpreter (TRITON_INTERPRET=1) at toy sizes")
    p.add_argument("--sections", default=None, help=f"comma list of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--model", default=None, help="preset (default infinity-2b; infinity-tiny with --device cpu)")
    p.add_argument("--depth", type=int, default=None, help="blocks (default: the preset's full depth; 4 with "
                                                           "--quick on CUDA)")
    p.add_argument("--hart-model", default=None, help="HART preset (default hart-0.7b; hart-tiny with --device cpu)")
    p.add_argument("--hart-depth", type=int, default=None, help="HART blocks (default: the preset's; 1 with --device "
                                                                "cpu --quick, 4 with --quick on CUDA)")
    p.add_argument("--res", default=None, help="resolution (default 1024; 512 with --device cpu --quick)")
    p.add_argument("--runs", type=int, default=None, help="timed generations per schedule (default 3, quick 1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--time-limit-s", type=float, default=280.0,
                   help="the speedup section trims its timed runs to end within this many seconds of the start")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 with --device cpu)")
    p.add_argument("--max-cases", type=int, default=None, help="run only the first N exactness cases (tests)")
    p.add_argument("--plant-mismatch", action="store_true",
                   help="perturb one element of every kernel output: the exactness check must fail (exit 1)")
    a = p.parse_args(argv)
    names = [s.strip() for s in (a.sections or ",".join(SECTIONS)).split(",") if s.strip()]
    aliases = {"env": "environment", "restore": "restore_exactness", "speed": "speedup"}
    names = [aliases.get(s, s) for s in names]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        p.error(f"unknown sections {unknown}; accepted: {', '.join(SECTIONS)}")
    a.sections_explicit = names if a.sections is not None else []
    a.sections = [s for s in SECTIONS if s in names]
    cpu = a.device == "cpu"
    a.model = a.model or ("infinity-tiny" if cpu else "infinity-2b")
    a.res = a.res or ("512" if cpu and a.quick else "1024")
    if a.depth is None and a.quick and not cpu:
        a.depth = 4
    a.hart_model = a.hart_model or ("hart-tiny" if cpu else "hart-0.7b")
    if a.hart_depth is None and a.quick:
        a.hart_depth = 1 if cpu else 4
    a.runs = a.runs if a.runs is not None else (1 if a.quick else 3 if not cpu else 2)
    if a.runs < 1 or a.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    return a


def _prepare_triton(device: str) -> list[str]:
    """Triton reads TRITON_INTERPRET once, at import: set or clear it before anything imports triton."""
    notes = []
    if "triton" in sys.modules:
        notes.append("triton was imported before the check could set TRITON_INTERPRET")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"
        notes.append("set TRITON_INTERPRET=1 (--device cpu runs the kernels in Triton's interpreter)")
    elif device == "cuda" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        os.environ.pop("TRITON_INTERPRET")
        notes.append("cleared TRITON_INTERPRET: on CUDA the kernels must be compiled, not interpreted")
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    notes = _prepare_triton(args.device)
    started = time.perf_counter()
    report: dict = {"schema": 1, "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                    "device_mode": args.device, "quick": args.quick, "plant_mismatch": args.plant_mismatch,
                    "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "notes": notes,
                    "sections": {}}
    ctx = Context(args, args.device, started, started + args.time_limit_s, report)
    try:
        report["fastvar_from"] = use_repo_package()
    except Exception as err:  # noqa: BLE001
        report["fastvar_from"] = f"unimportable: {type(err).__name__}: {err}"
    import torch

    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    runners = {"environment": section_environment, "restore_exactness": section_restore,
               "bandwidth": section_bandwidth, "speedup": section_speedup, "hart": section_hart}
    for name in args.sections:
        ctx.log(f"== {name}")
        t0 = time.perf_counter()
        if args.device == "cuda" and name != "environment" and not torch.cuda.is_available():
            res = {"status": "error", "error": "no CUDA device (torch.cuda.is_available() is False)"}
        else:
            try:
                res = runners[name](ctx)
            except Exception as err:  # noqa: BLE001 - report it, run the other sections
                partial = report["sections"].get(name) or {}
                res = {**partial, "status": "error", **_error(err)}
                ctx.log(f"{name}: ERROR {res['error']}")
        res["elapsed_s"] = time.perf_counter() - t0
        report["sections"][name] = res
        ctx.write()
        if args.device == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
    report["exactness_passed"], report["exactness_failures"] = exactness(report)
    report["exit_status"] = exit_code(report)
    ctx.write()
    text = summary(report)
    (Path(args.out) / "gpu_check.txt").write_text(text + "\n")
    print("\n" + text, flush=True)
    print(f"wrote {Path(args.out) / 'gpu_check.json'} and gpu_check.txt", flush=True)
    return report["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
