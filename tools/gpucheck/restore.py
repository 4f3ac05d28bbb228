"""Sections 2 and 3: the FastVARRestore Triton kernels equal to the CPU reference bit for bit (gating), and
their bandwidth against a device-to-device copy."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from fastvar.export.models.hart_config import preset as hart_preset
from fastvar.export.schedules import hart_prune_plan, hart_schedule, kept_count, prune_plan, scale_schedule
from fastvar.plugins.restore.reference import restore_reference
from gpucheck.report import Context, bandwidth_line, error

KERNELS = ("two-launch", "fused", "fused-add")  # fused-add: FastVARRestoreAdd, on an fp32 residual
DTYPES = ("float32", "float16", "bfloat16")


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
        return (f"{self.group}: {self.dtype} B={self.batch} C={self.channels} {hc}x{wc}->{h}x{w} K={self.kept}"
                + (f" idx {self.idx_dtype}" if self.idx_dtype != "int64" else ""))


def plan_geometries(resolutions: tuple[str, ...], depth: int = 32) -> list[tuple[str, tuple, tuple, int]]:
    """(group, cache grid, step grid, kept) of every pruned step of the fastvar plans: the shapes the model
    hands FastVARRestore, read off export/schedules.py rather than written down here."""
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
    cfg = hart_preset("hart-0.7b")
    plan = hart_prune_plan(hart_schedule(cfg.patch_nums), "fastvar", cfg.depth, cfg.context_tokens)
    return [("fastvar 1024", tuple(plan.cache_hw), (st.h, st.w), st.kept) for st in plan.steps if st.pruned]


def build_cases(device: str, quick: bool) -> list[Case]:
    """The case list: full-size on CUDA; on the CPU (Triton's interpreter, a few ms per program) the same
    kinds of case at toy sizes."""
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


def kernel_fns() -> dict[str, Callable]:
    """The kernels by name; imported here, not at the top, so that triton sees TRITON_INTERPRET as set."""
    from fastvar.plugins.restore.triton_kernel import restore_add_triton_fused, restore_triton, restore_triton_fused

    return {"two-launch": restore_triton, "fused": restore_triton_fused, "fused-add": restore_add_triton_fused}


def case_inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + case.seed)
    (hc, wc), (h, w) = case.cache_hw, case.out_hw
    b, k, c, dt = case.batch, case.k(), case.channels, getattr(torch, case.dtype)
    cache = torch.randn(b, hc * wc, c, generator=g).to(dt)
    kept = torch.randn(b, k, c, generator=g).to(dt)
    idx = torch.stack([torch.randperm(h * w, generator=g)[:k] for _ in range(b)]).to(getattr(torch, case.idx_dtype))
    return kept, idx, cache


def _compare(got: torch.Tensor, want: torch.Tensor) -> dict:
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
            row.update({"equal": False, "max_abs_diff": None, **error(err)})
        rows.append(row)
    if dev_ref is not None:
        rows[-1]["device_reference_vs_cpu_reference"] = _compare(dev_ref, want)
    return rows


def section_restore(ctx: Context) -> dict:
    cases = build_cases(ctx.device, ctx.quick)
    if ctx.args.max_cases is not None:
        cases = cases[:ctx.args.max_cases]
    fns = kernel_fns()
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
        self.flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")

    @staticmethod
    def _events(n: int) -> list[tuple[torch.cuda.Event, torch.cuda.Event]]:
        return [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]

    def cold(self, fn: Callable, n: int) -> list[float]:
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
    if ctx.device == "cpu" and "bandwidth" not in ctx.args.sections_explicit:
        return {"status": "skipped", "reason": "--device cpu: no bandwidth on the interpreter (name the section "
                                               "in --sections to exercise its code)"}
    fns = kernel_fns()
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
                c, h = statistics.median(cold), statistics.median(hot)
                row[name] = {"cold_median_s": c, "cold_min_s": min(cold), "cold_GBps": moved / c / 1e9,
                             "hot_median_s": h, "hot_GBps": moved / h / 1e9, "hot_method": how}
            except Exception as err:  # noqa: BLE001
                row[name] = error(err)
        for name in ("fused", "two-launch", "torch reference"):
            for heat in ("cold", "hot"):
                try:
                    row[f"{name} / copy ({heat})"] = row[name][f"{heat}_GBps"] / row["copy"][f"{heat}_GBps"]
                except (KeyError, TypeError, ZeroDivisionError):
                    row[f"{name} / copy ({heat})"] = None
        res["geometries"].append(row)
        ctx.log(bandwidth_line(row))
        del kept, idx, cache, out, src, dst, runs, args
        if ctx.device == "cuda":
            torch.cuda.empty_cache()
    if any("error" in r.get(n, {}) for r in res["geometries"] for n in ("fused", "two-launch", "copy")):
        res["status"] = "error"
        res["error"] = "a timing failed (see the geometries)"
    return res
