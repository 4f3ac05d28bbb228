"""``fastvar-bench``: speed, scaling and memory of schedules and backends, measured side by side in one run.

For each resolution and schedule the artifact is exported (or found up to date), then every backend
generates the same image ``warmup + runs`` times through the one chain loop. Reported per configuration:
median and spread of the transformer loop (conditioning, steps, sampling, codes) and end to end (plus the
VAE decode, which costs the same under every schedule), per-step medians, the runtime's own overhead
(loop time outside graph calls), the KV-cache bytes and the peak resident memory of that configuration (its
loading and runs; the loop's and the decoder's peaks apart; the anonymous part) beside its host memory plan
(``runtime.memory_budget``), which is checked before the configuration loads.
Then the ratios pair by pair, the compute ceiling of each schedule pair (multiply-adds counted from the
schedule), the achieved FLOP rate against a dense-GEMM peak measured in the same run, and, over a
resolution sweep, the exponent of cost in pixel count. Ratios are only ever taken within one run.

Both families take the same path; ``Family`` holds what differs. HART runs at its checkpoint's
1024-px square schedule only, with its 300-token text context and guidance 4.5 (Infinity: the text
bucket, guidance 4 and tau 0.5); its loop also runs the diffusion head and the ``next_input`` graphs,
which count as graph time (and the diffusion head as multiply-adds, ``runtime/flops.py``).
"""

from __future__ import annotations

import functools
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fastvar.atomic import atomic_write_bytes, atomic_write_json
from fastvar.export.artifact import ExportOptions, export
from fastvar.family import (
    artifact_geometry,
    artifact_sampling,
    artifact_schedule,
    for_artifact,
    for_model,
    text_channels,
)
from fastvar.manifest import Artifact
from fastvar.runtime.backends import open_backend
from fastvar.runtime.chain import GenerationResult, generate
from fastvar.runtime.flops import step_macs
from fastvar.runtime.io import load_text_embeddings
from fastvar.runtime.memory_budget import check_run_memory, plan_for_artifact
from fastvar.runtime.memory_probe import PhasePeaks, process_memory, reset_peak
from fastvar.runtime.timing import Timing, time_generations

BACKENDS = ("onnxruntime", "torch", "tensorrt")
DEFAULT_BACKENDS = ("onnxruntime", "torch")


@dataclass
class BenchOptions:
    model: str = "infinity-2b"
    depth: int | None = 2
    resolutions: tuple[str, ...] = ("1024",)
    aspect: str = "1:1"
    schedules: tuple[str, ...] = ("none", "fastvar")
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    runs: int = 3
    warmup: int = 1
    text_len: int | None = None  # None: the family's (Infinity 64; HART always its 300-token context)
    threads: int | None = None
    engines: str = "engines/bench"
    out: str = "bench"


@dataclass
class Config:
    resolution: str
    schedule: str
    backend: str
    timing: Timing = field(default_factory=Timing)
    graph_s: list[float] = field(default_factory=list)  # each timed run's time inside the loop's graphs
    kv_bytes: int = 0
    peak_rss_bytes: int = 0  # the configuration's own peak: loading and every run
    peak_loop_bytes: int = 0  # the largest peak of the conditioning and any step
    peak_decode_bytes: int = 0
    peak_anonymous_bytes: int = 0  # the peak less the file-backed pages resident at the end
    planned_peak_bytes: int = 0  # runtime.memory_budget's host plan of this backend and device
    macs: int = 0
    pixels: int = 0

    def summary(self) -> dict:
        loop_s = self.timing.seconds("loop_s")
        e2e_s = [lp + dc for lp, dc in zip(loop_s, self.timing.seconds("decode_s"), strict=True)]
        loop, e2e = statistics.median(loop_s), statistics.median(e2e_s)
        overhead = [(lp - g) / lp for lp, g in zip(loop_s, self.graph_s, strict=True)]
        return {
            "resolution": self.resolution, "schedule": self.schedule, "backend": self.backend,
            "pixels": self.pixels, "runs": len(loop_s),
            "loop_median_s": loop, "loop_min_s": min(loop_s), "loop_max_s": max(loop_s),
            "e2e_median_s": e2e, "e2e_min_s": min(e2e_s), "e2e_max_s": max(e2e_s),
            "runtime_overhead_share": statistics.median(overhead), "steps_median_s": self.timing.steps_median(),
            "kv_cache_bytes": self.kv_bytes, "peak_rss_bytes": self.peak_rss_bytes,
            "peak_loop_bytes": self.peak_loop_bytes, "peak_decode_bytes": self.peak_decode_bytes,
            "peak_anonymous_bytes": self.peak_anonymous_bytes, "planned_peak_bytes": self.planned_peak_bytes,
            "peak_vs_plan": (self.peak_rss_bytes - self.planned_peak_bytes) / max(self.planned_peak_bytes, 1),
            "gmacs": self.macs / 1e9, "achieved_gflops": 2 * self.macs / loop / 1e9,
        }


def gemm_peak_gflops(n: int = 1024, k: int = 2048, m: int = 8192, repeats: int = 3) -> float:
    """Dense fp32 GEMM rate of this machine, measured now (PyTorch's BLAS), best of ``repeats``."""
    a, b = torch.randn(n, k), torch.randn(k, m)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * k * m / best / 1e9


def fit_exponent(pixels: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) on log(pixels): cost ~ pixels^alpha."""
    if len(pixels) < 2:
        return None
    return float(np.polyfit(np.log(pixels), np.log(seconds), 1)[0])


def run_bench(opts: BenchOptions, log: Callable[[str], None] = print) -> dict:
    if opts.runs < 1 or opts.warmup < 0:
        raise ValueError(f"--runs must be >= 1 and --warmup >= 0, got {opts.runs} and {opts.warmup}")
    unknown = [b for b in opts.backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; accepted: {', '.join(BACKENDS)} (tensorrt builds engines "
                         "first: a GPU with TensorRT)")
    family = _family(opts)
    opts = replace(opts, text_len=family.text_len)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    peak = gemm_peak_gflops()
    log(f"dense fp32 GEMM peak on this machine: {peak:.1f} GFLOP/s")
    configs: list[Config] = []
    for res in opts.resolutions:
        for spec in opts.schedules:
            art = _artifact(opts, res, spec, log)
            engine_art = _engine_artifact(opts, res, spec, log) if "tensorrt" in opts.backends else None
            m = art.manifest
            sched, plan, geom = artifact_schedule(art), art.plan(), artifact_geometry(art)
            text = load_text_embeddings(None, m.batch, text_channels(art), default_len=min(16, m.text_len))
            rows = 2 * m.batch if m.guidance else m.batch
            macs = step_macs(model_config(art), plan, rows, m.batch, m.text_len)
            settings = artifact_sampling(art)
            for backend in opts.backends:
                run_art = engine_art if backend == "tensorrt" else art
                gc.collect()  # an export just done here (its traced modules hold the model in cycles) goes first
                host, gpu = plan_for_artifact(run_art, backend, _device(backend))
                check_run_memory(host, gpu)  # a configuration that cannot fit is refused before it loads
                reset_peak()  # each configuration gets its own peak
                be = open_backend(run_art, backend, _device(backend))
                c = Config(res, spec, backend, macs=sum(m.macs for m in macs), pixels=m.pixels[0] * m.pixels[1],
                           planned_peak_bytes=host.peak)
                _measure(c, be, family.loop_graphs, functools.partial(generate, be, sched, plan, geom, *text, settings),
                         opts)
                configs.append(c)
                s = c.summary()
                log(f"{res} {spec:>8} {backend:>11}: loop {s['loop_median_s']:.3f}s "
                    f"[{s['loop_min_s']:.3f}, {s['loop_max_s']:.3f}], e2e {s['e2e_median_s']:.3f}s, "
                    f"{s['achieved_gflops']:.1f} GFLOP/s, overhead {s['runtime_overhead_share']:.1%}")
                del be
                gc.collect()  # sessions and their arenas go now, not when the next configuration needs the memory
                atomic_write_json(Path(opts.out) / "partial.json", [x.summary() for x in configs])
    report = _report(opts, configs, peak)
    _write(opts, report, log)
    (Path(opts.out) / "partial.json").unlink(missing_ok=True)
    return report


def _measure(c: Config, be, loop_graphs: tuple[str, ...], generate_once: Callable[..., GenerationResult],
             opts: BenchOptions) -> None:
    """Time ``opts.warmup + opts.runs`` generations into ``c``, with the time each spends in the loop's graphs
    (the rest of the loop is the runtime's own overhead)."""
    peaks = [process_memory().peak]  # loading

    def once() -> GenerationResult:
        g0 = be.graph_seconds(loop_graphs)
        probe = PhasePeaks()
        out = generate_once(memory=probe)
        c.graph_s.append(be.graph_seconds(loop_graphs) - g0)
        c.peak_loop_bytes = max(c.peak_loop_bytes, probe.peak("conditioning"), probe.peak("step"))
        c.peak_decode_bytes = max(c.peak_decode_bytes, probe.peak("decode"))
        peaks.append(probe.peak())
        return out

    c.timing = time_generations(once, opts.warmup, opts.runs)
    c.graph_s = c.graph_s[opts.warmup:]
    now = process_memory()
    c.kv_bytes, c.peak_rss_bytes = be.kv_bytes, max(*peaks, now.peak)
    c.peak_anonymous_bytes = c.peak_rss_bytes - now.file


@dataclass(frozen=True)
class Family:
    """What the bench does differently per model family; everything else is one path."""

    text_len: int  # the export's text bucket
    loop_graphs: tuple[str, ...]  # graph kinds inside the loop: the rest of the loop time is the runtime's own


def _family(opts: BenchOptions) -> Family:
    """The family of ``opts.model``, its options checked before anything is measured or exported."""
    fam = for_model(opts.model)
    return Family(fam.check_bench(opts.model, opts.text_len, opts.resolutions, opts.aspect), fam.loop_graph_kinds)


def model_config(art: Artifact):
    """The model config an artifact was exported with (its manifest's ``model.config``)."""
    return for_artifact(art).config_from_dict(art.manifest.model.config)


def _artifact(opts: BenchOptions, res: str, spec: str, log: Callable[[str], None],
              backend: str = "onnxruntime") -> Artifact:
    safe = spec.replace(":", "_").replace(",", "-")
    name = f"{opts.model}-d{opts.depth}-{res}-{opts.aspect.replace(':', 'x')}-{safe}"
    if backend != "onnxruntime":
        name += f"-{backend}"
    e = ExportOptions(model=opts.model, random_init=True, depth=opts.depth, res=res, aspect=opts.aspect,
                      schedule=spec, text_len=opts.text_len, backend=backend, out=str(Path(opts.engines) / name))
    export(e, log=lambda m: log(f"  export: {m}"))
    return Artifact.load(e.out)


def _engine_artifact(opts: BenchOptions, res: str, spec: str, log: Callable[[str], None]) -> Artifact:
    """The same model and schedule exported for TensorRT (plugin node, unchunked attention), with engines
    built (or found current) on this GPU."""
    from fastvar.builder.engine_builder import build_engines

    art = _artifact(opts, res, spec, log, backend="onnx")
    build_engines(art.root, log=lambda m: log(f"  build: {m}"))
    return Artifact.load(art.root)


def _device(backend: str) -> str:
    return "cuda" if backend == "tensorrt" else "cpu"


def _report(opts: BenchOptions, configs: list[Config], peak: float) -> dict:
    summaries = [c.summary() for c in configs]
    by = {(s["resolution"], s["schedule"], s["backend"]): s for s in summaries}
    ratios = []
    for res in opts.resolutions:
        for backend in opts.backends:
            for i, a in enumerate(opts.schedules):
                for b in opts.schedules[i + 1:]:
                    sa, sb = by[(res, a, backend)], by[(res, b, backend)]
                    ceiling = sa["gmacs"] / sb["gmacs"]
                    loop = sa["loop_median_s"] / sb["loop_median_s"]
                    ratios.append({"resolution": res, "backend": backend, "pair": f"{a} / {b}",
                                   "loop_speedup": loop, "e2e_speedup": sa["e2e_median_s"] / sb["e2e_median_s"],
                                   "compute_ceiling": ceiling, "share_of_ceiling": loop / ceiling,
                                   "kv_ratio": sa["kv_cache_bytes"] / max(sb["kv_cache_bytes"], 1)})
        for spec in opts.schedules:
            for i, a in enumerate(opts.backends):
                for b in opts.backends[i + 1:]:
                    sa, sb = by[(res, spec, a)], by[(res, spec, b)]
                    ratios.append({"resolution": res, "schedule": spec, "pair": f"{b} / {a} (loop time)",
                                   "loop_speedup": sb["loop_median_s"] / sa["loop_median_s"]})
    sweep = {}
    if len(opts.resolutions) > 1:
        for backend in opts.backends:
            for spec in opts.schedules:
                pts = [by[(r, spec, backend)] for r in opts.resolutions]
                sweep[f"{backend}/{spec}"] = {
                    "pixels": [p["pixels"] for p in pts], "loop_median_s": [p["loop_median_s"] for p in pts],
                    "exponent": fit_exponent([p["pixels"] for p in pts], [p["loop_median_s"] for p in pts])}
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "gemm_peak_gflops": peak},
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.__dict__.items()},
        "configs": summaries, "ratios": ratios, "sweep": sweep,
        "note": "TensorRT figures are absent: none are reported until they come from a real TensorRT run.",
    }


def table(report: dict) -> str:
    peak = report["machine"]["gemm_peak_gflops"]
    lines = [f"{'res':>5} {'schedule':>10} {'backend':>11} {'loop s':>8} {'spread':>15} {'e2e s':>7} "
             f"{'GFLOP/s':>8} {'eff':>5} {'overhead':>8} {'KV MiB':>7} {'peak MiB':>8} {'loop':>6} {'decode':>6} "
             f"{'plan':>6} {'vs plan':>7}"]
    for s in report["configs"]:
        lines.append(f"{s['resolution']:>5} {s['schedule']:>10} {s['backend']:>11} {s['loop_median_s']:8.3f} "
                     f"[{s['loop_min_s']:6.3f},{s['loop_max_s']:6.3f}] {s['e2e_median_s']:7.3f} "
                     f"{s['achieved_gflops']:8.1f} {s['achieved_gflops'] / peak:5.0%} "
                     f"{s['runtime_overhead_share']:8.1%} {s['kv_cache_bytes'] / 2**20:7.1f} "
                     f"{s['peak_rss_bytes'] / 2**20:8.0f} {s['peak_loop_bytes'] / 2**20:6.0f} "
                     f"{s['peak_decode_bytes'] / 2**20:6.0f} {s['planned_peak_bytes'] / 2**20:6.0f} "
                     f"{s['peak_vs_plan']:+7.1%}")
    lines.append("")
    for r in report["ratios"]:
        if "compute_ceiling" in r:
            lines.append(f"{r['resolution']:>5} {r['backend']:>11} {r['pair']}: loop {r['loop_speedup']:.2f}x "
                         f"(ceiling {r['compute_ceiling']:.2f}x, {r['share_of_ceiling']:.0%} of it), "
                         f"e2e {r['e2e_speedup']:.2f}x, KV {r['kv_ratio']:.2f}x")
        else:
            lines.append(f"{r['resolution']:>5} {r['schedule']:>11} {r['pair']}: {r['loop_speedup']:.2f}x")
    for name, s in report["sweep"].items():
        lines.append(f"sweep {name}: loop time ~ pixels^{s['exponent']:.2f}")
    lines.append(f"dense GEMM peak {peak:.1f} GFLOP/s; {report['note']}")
    return "\n".join(lines)


def _write(opts: BenchOptions, report: dict, log: Callable[[str], None]) -> None:
    out = Path(opts.out)
    atomic_write_json(out / "bench.json", report)
    text = table(report)
    atomic_write_bytes(out / "bench.txt", (text + "\n").encode())
    log(text)
    plotted = _plot(report, out)
    log(f"wrote {out / 'bench.json'}, {out / 'bench.txt'}" + (f", {', '.join(map(str, plotted))}" if plotted else
                                                              " (no plots: pip install matplotlib)"))


def _plot(report: dict, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    import io

    paths = []
    fig, ax = plt.subplots(figsize=(9, 4))
    for s in report["configs"]:
        steps = s["steps_median_s"]
        ax.plot([int(k) for k in steps], [v * 1e3 for v in steps.values()], marker="o",
                label=f"{s['resolution']} {s['schedule']} {s['backend']}")
    ax.set_xlabel("step")
    ax.set_ylabel("median ms")
    ax.set_yscale("log")
    ax.set_title("per-step latency")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "per_step.png", io))
    if report["sweep"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, s in report["sweep"].items():
            ax.loglog(s["pixels"], s["loop_median_s"], marker="o", label=f"{name} (^{s['exponent']:.2f})")
        ax.set_xlabel("pixels")
        ax.set_ylabel("transformer loop s")
        ax.set_title("resolution sweep")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / "sweep.png", io))
    plt.close("all")
    return paths


def _save(fig, path: Path, io) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())
