"""tools/gpu_check.py, the prepared GPU check, proven on the CPU: the same code paths at toy sizes (Triton's
interpreter), the case list it would run on CUDA, and that a wrong kernel output makes it fail."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.py"


def _load():
    """The entry point, loaded as a module; it puts tools/ on sys.path, so its sections import as gpucheck.*."""
    spec = importlib.util.spec_from_file_location("fastvar_gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _restore_module():
    _load()
    return importlib.import_module("gpucheck.restore")


def _run(out: Path, *args: str, env_extra: dict | None = None, prefix: list[str] | None = None,
         cwd: Path = REPO):
    # Triton reads TRITON_INTERPRET at import, so the interpreter runs in a fresh process.
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    cmd = prefix or [sys.executable, str(SCRIPT)]
    done = subprocess.run([*cmd, "--out", str(out), *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=cwd)
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").exists() else None
    return done, report


@pytest.mark.slow
def test_cpu_quick_run_passes_every_section(tmp_path):
    pytest.importorskip("triton", reason="the kernels are Triton kernels")
    done, report = _run(tmp_path, "--device", "cpu", "--quick")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    secs = report["sections"]
    assert set(secs) == {"environment", "restore_exactness", "bandwidth", "speedup", "hart"}
    assert secs["environment"]["torch"] and secs["environment"]["TRITON_INTERPRET"] == "1"
    assert Path(report["fastvar_from"]) == REPO  # the installed package: here the checkout's editable install

    r = secs["restore_exactness"]
    assert r["status"] == "passed" and r["failed"] == 0 and r["passed"] == len(r["cases"]) >= 10
    assert all(c["equal"] and c["max_abs_diff"] == 0.0 and c["mismatches"] == 0 for c in r["cases"])
    seen = {(c["kernel"], c["dtype"]) for c in r["cases"]}
    assert {(k, d) for k in ("two-launch", "fused", "fused-add") for d in ("float32", "float16", "bfloat16")} <= seen
    plan = [c for c in r["cases"] if "fastvar 512" in c["group"]]  # a geometry read off the 512 fastvar plan
    assert plan and all((c["cache_hw"], c["out_hw"], c["kept"]) == ([24, 24], [32, 32], 615) for c in plan)
    assert any(c["idx_dtype"] == "int32" for c in r["cases"])

    assert secs["bandwidth"]["status"] == "skipped"

    s = secs["speedup"]
    assert s["status"] == "done" and s["model"] == "infinity-tiny" and s["depth"] == s["full_depth"]
    for spec in ("none", "fastvar"):
        row = s["schedules"][spec]
        assert row["runs"] >= 1 and row["seconds_per_image"] > 0 and row["loop_median_s"] > 0
        assert row["decode_median_s"] > 0 and row["gmacs"] > 0
    assert s["schedules"]["fastvar"]["gmacs"] < s["schedules"]["none"]["gmacs"]
    assert s["speedup"]["seconds_per_image"] > 0 and s["speedup"]["compute_ceiling"] > 1
    m = s["in_model_kernel"]
    assert m["status"] == "passed" and m["kernel_calls"] == m["expected_calls"] > 0
    assert m["tokens_equal"] and m["logits_max_abs_diff"] == 0.0 and m["images_equal"]

    h = secs["hart"]  # hart-tiny, one block: 2 pruned steps x (attention, MLP) restored by the fused kernel
    assert h["status"] == "done" and h["model"] == "hart-tiny" and h["depth"] == 1 and h["precision"] == "fp32"
    assert h["schedules"]["fastvar"]["executed_steps"] == h["schedules"]["none"]["executed_steps"] == 14
    assert 1 < h["speedup"]["compute_ceiling"] and h["schedules"]["fastvar"]["kv_cache_bytes"] < \
        h["schedules"]["none"]["kv_cache_bytes"]
    m = h["in_model_kernel"]
    assert m["status"] == "passed" and m["kernel_calls"] == m["expected_calls"] == 4
    assert m["tokens_equal"] and m["logits_max_abs_diff"] == 0.0 and m["images_equal"]

    assert report["exactness_passed"] is True and report["exit_status"] == 0
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "exactness: PASSED" in text and "hart: done, hart-tiny depth 1/2" in text


@pytest.mark.slow
def test_planted_mismatch_fails_the_check_and_bandwidth_code_runs(tmp_path):
    pytest.importorskip("triton", reason="the kernels are Triton kernels")
    done, report = _run(tmp_path, "--device", "cpu", "--quick", "--sections", "restore,bandwidth",
                        "--max-cases", "1", "--plant-mismatch")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    r = report["sections"]["restore_exactness"]
    assert r["status"] == "failed" and r["passed"] == 0 and len(r["cases"]) == 3  # two-launch, fused, fused-add
    assert all(c["max_abs_diff"] > 0 and c["mismatches"] == 1 for c in r["cases"])
    b = report["sections"]["bandwidth"]  # named explicitly: its code runs on the CPU too (figures meaningless)
    assert b["status"] == "done"
    g = b["geometries"][0]
    for name in ("fused", "two-launch", "torch reference", "copy"):
        assert g[name]["cold_median_s"] > 0 and g[name]["hot_GBps"] > 0
    assert g["fused / copy (cold)"] > 0
    assert report["exactness_passed"] is False and "FAIL" in done.stdout


def test_cuda_case_list_covers_the_kernels_dtypes_and_2b_and_hart_geometries():
    gc = _restore_module()
    cases = gc.build_cases("cuda", quick=False)
    runs = {(c.dtype, k) for c in cases for k in c.kernels}
    assert runs == {(d, k) for d in ("float32", "float16", "bfloat16") for k in ("two-launch", "fused", "fused-add")}
    generic = [c for c in cases if c.group == "generic"]
    assert {c.batch for c in generic} >= {1, 3}
    assert any(c.kept == "all" for c in generic) and any(c.kept == 1 for c in generic)
    assert {(c.cache_hw, c.out_hw) for c in generic} >= {((24, 24), (40, 40)), ((36, 36), (64, 64))}
    plan = {(c.cache_hw, c.out_hw, c.kept) for c in cases if c.group.startswith("infinity-2b")}
    # the pruned steps of the 1024 and 2K fastvar plans, cache at the 24x24 step
    assert plan == {((24, 24), (32, 32), 615), ((24, 24), (40, 40), 800), ((24, 24), (84, 84), 1764)}
    assert all(c.batch == 2 and c.channels == 2048 for c in cases if c.group.startswith("infinity-2b"))
    hart = {(c.cache_hw, c.out_hw, c.kept, c.dtype) for c in cases if c.group.startswith("hart-0.7b")}
    assert hart == {((36, 36), (48, 48), 1152, d) for d in ("float32", "float16")} | \
        {((36, 36), (64, 64), 1024, d) for d in ("float32", "float16")}
    assert all(c.channels == 1536 for c in cases if c.group.startswith("hart-0.7b"))
    extra = {c.out_hw for c in cases if c.cache_hw == (32, 32)}
    assert extra == {(40, 40), (48, 48), (64, 64)}
    assert any(c.idx_dtype == "int32" for c in cases)
    assert len({c.seed for c in cases}) == len(cases)
    quick = gc.build_cases("cuda", quick=True)
    assert 0 < len(quick) < len(cases) // 4


def test_case_comparison_against_both_references():
    gc = _restore_module()
    from fastvar.plugins.restore.reference import restore_reference

    def off_by_one(*a, **kw):
        out = restore_reference(*a, **kw)
        out.view(-1)[3] += 1
        return out

    case = gc.Case("generic", (6, 6), (10, 10), 2, 7, "bfloat16", 8, kernels=("two-launch", "fused"))
    rows = gc.run_case(case, "cpu", {"two-launch": restore_reference, "fused": off_by_one}, device_reference=True)
    assert [r["kernel"] for r in rows] == ["two-launch", "fused"]
    assert rows[0]["equal"] and rows[0]["max_abs_diff"] == 0.0 and rows[0]["vs_device_reference"]["equal"]
    assert not rows[1]["equal"] and rows[1]["mismatches"] == 1 and not rows[1]["vs_device_reference"]["equal"]
    assert rows[1]["device_reference_vs_cpu_reference"]["equal"]
    planted = gc.run_case(gc.Case("generic", (6, 6), (10, 10), 2, 7, "bfloat16", 8, kernels=("two-launch",)), "cpu",
                          {"two-launch": restore_reference}, plant=True)
    assert not planted[0]["equal"]


def test_exit_status_follows_exactness_then_errors():
    gc = _load()

    def rep(restore="passed", speed="done", model="passed"):
        return {"device_mode": "cuda", "quick": False, "sections": {
            "restore_exactness": {"status": restore, "failed": int(restore != "passed")},
            "speedup": {"status": speed, "in_model_kernel": {"status": model}}}}

    assert gc.exit_code(rep()) == 0
    assert gc.exit_code(rep(restore="failed")) == 1
    assert gc.exit_code(rep(restore="error")) == 1
    assert gc.exit_code(rep(model="failed")) == 1
    assert gc.exit_code(rep(model="inconclusive")) == 0
    assert gc.exit_code(rep(speed="error", model="error")) == 1
    other = {"sections": {"restore_exactness": {"status": "passed"}, "bandwidth": {"status": "error"}}}
    assert gc.exit_code(other) == 2
    assert "exit status 1" in gc.summary(rep(restore="failed"))


def test_without_the_package_installed_it_says_how_to_install_it(tmp_path):
    """The check runs the installed package; without one it stops at once and says how to install it."""
    hide = ("import runpy, sys, importlib.util;"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()"
            " and 'editable' not in repr(f).lower()];"
            "[sys.modules.pop(m) for m in list(sys.modules) if m == 'fastvar' or m.startswith('fastvar.')];"
            "assert importlib.util.find_spec('fastvar') is None, 'fastvar still importable';"
            f"sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:];"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    done, report = _run(tmp_path, "--device", "cpu", "--sections", "env", prefix=[sys.executable, "-c", hide],
                        cwd=tmp_path)  # not the checkout: `python -c` puts the working folder on sys.path
    assert done.returncode == 1 and report is None, done.stdout[-2000:] + done.stderr[-2000:]
    assert "cannot import fastvar" in done.stderr and "pip install -e ." in done.stderr
    assert "pip wheel --no-deps --no-build-isolation -w .whl ." in done.stderr
    assert "--target /tmp/site .whl/*.whl" in done.stderr and "PYTHONPATH=/tmp/site" in done.stderr


def test_without_cuda_the_gpu_run_reports_why_and_fails(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the real check would run")
    done, report = _run(tmp_path, "--sections", "env,restore", env_extra={"TRITON_INTERPRET": "0"})
    assert done.returncode == 1
    assert "needs a CUDA GPU" in report["sections"]["environment"]["error"]
    assert "no CUDA device" in report["sections"]["restore_exactness"]["error"]
