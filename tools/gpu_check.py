#!/usr/bin/env python3
"""Prepared GPU check: one command, under 6 minutes on one H100; CUDA, PyTorch and Triton, no TensorRT.

    python tools/gpu_check.py --out DIR [--quick]
    TRITON_INTERPRET=1 python tools/gpu_check.py --device cpu --quick --out DIR   # CI: toy sizes, same code

It checks the installed ``fastvar`` package (``pip install -e .`` in the checkout). On a GPU machine without
it (and without network), build a wheel in the checkout (``.whl/`` is ignored by git) and install it there
into a folder of its own:

    pip wheel --no-deps --no-build-isolation -w .whl .
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 tools/gpu_check.py --out DIR

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

The sections are modules of tools/gpucheck/: environment (1), restore (2, 3), speedup (4, 5), report.
Writes DIR/gpu_check.json after every section (a killed run keeps what finished) and DIR/gpu_check.txt.
Exit status: 0 every exactness check passed and every section ran; 1 an exactness check failed or could
not run; 2 exactness passed but another section failed (its error text is in the JSON).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script it is there already; loaded from a file by a test it is not
    sys.path.insert(0, str(HERE))

from gpucheck.environment import prepare_triton, section_environment  # noqa: E402
from gpucheck.report import Context, error, exactness, exit_code, summary  # noqa: E402

SECTIONS = ("environment", "restore_exactness", "bandwidth", "speedup", "hart")
INSTALL_HINT = __doc__[__doc__.index("It checks the installed"):__doc__.index("\n\n1. environment")]


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    notes = prepare_triton(args.device)
    started = time.perf_counter()
    try:
        import fastvar
    except ImportError as err:
        print(f"gpu_check: cannot import fastvar ({type(err).__name__}: {err}).\n{INSTALL_HINT}", file=sys.stderr)
        return 1
    import torch

    from gpucheck.restore import section_bandwidth, section_restore
    from gpucheck.speedup import section_hart, section_speedup

    report: dict = {"schema": 1, "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                    "device_mode": args.device, "quick": args.quick, "plant_mismatch": args.plant_mismatch,
                    "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "notes": notes,
                    "sections": {}, "fastvar_from": str(Path(fastvar.__file__).resolve().parent.parent)}
    ctx = Context(args, args.device, started, started + args.time_limit_s, report)
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
                res = {**partial, "status": "error", **error(err)}
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
