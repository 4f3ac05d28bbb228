"""The run's context and its report: the JSON written after every step, the exit status and the summary."""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Context:
    args: argparse.Namespace
    device: str
    started: float
    deadline: float
    report: dict

    @property
    def quick(self) -> bool:
        return self.args.quick

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f}s] {msg}", flush=True)

    def write(self) -> None:
        """Rewrite gpu_check.json atomically, so a killed run keeps what had finished."""
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        self.report["elapsed_s"] = time.perf_counter() - self.started
        tmp = out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        os.replace(tmp, out / "gpu_check.json")


def error(err: BaseException) -> dict:
    """An exception as report fields: a failed part is reported, never raised past its section."""
    return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=12)}


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
    """0 all passed and ran; 1 an exactness check failed or could not run; 2 another section failed."""
    ok, _ = exactness(report)
    if ok is False:
        return 1
    errors = [k for k, s in report["sections"].items() if s.get("status") in ("error", "running")]
    return 2 if errors else 0


def bandwidth_line(row: dict) -> str:
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
            lines.append("  " + bandwidth_line(g))
    for name, weights in (("speedup", "bf16"), ("hart", "fp32")):
        if secs.get(name):
            lines += _speedup_lines(name, secs[name], weights)
    ok, bad = exactness(report)
    lines.append(f"exactness: {'PASSED' if ok else 'not run' if ok is None else 'FAILED'}"
                 + (f" ({'; '.join(bad)})" if bad else "") + f"; exit status {exit_code(report)}")
    return "\n".join(lines)
