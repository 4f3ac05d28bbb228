"""Section 1, environment: what the figures were measured on, and Triton's interpreter set or cleared first."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from gpucheck.report import Context

CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout the tool sits in: its git commit is reported


def prepare_triton(device: str) -> list[str]:
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


def _run_text(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def section_environment(ctx: Context) -> dict:
    info: dict = {"status": "done", "python": sys.version.split()[0], "platform": platform.platform(),
                  "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "torch_threads": torch.get_num_threads(), "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
                  "fastvar_from": ctx.report.get("fastvar_from"), "device_mode": ctx.device}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as err:  # noqa: BLE001
        info["triton"] = f"unavailable: {type(err).__name__}: {err}"
    info["git_commit"] = _run_text(["git", "rev-parse", "HEAD"], CHECKOUT)
    dirty = _run_text(["git", "status", "--porcelain", "--untracked-files=no"], CHECKOUT)
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
