"""The Triton kernels of FastVARRestore (two-pass, fused) and FastVARRestoreAdd equal the PyTorch reference
bit for bit (Triton's interpreter on the CPU), and compile ahead of time to PTX for sm_80, sm_89 and sm_90
without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", reason="the kernel is a Triton kernel (pip install triton)")

CASES = [  # (cache grid, output grid, batch, kept, dtype): non-dividing windows, K = L and K = 1
    ((24, 24), (40, 40), 1, "all", "float32"),
    ((24, 24), (40, 40), 3, 1, "bfloat16"),
    ((36, 36), (64, 64), 1, 1, "float16"),
    ((9, 9), (16, 16), 3, 100, "bfloat16"),
    ((6, 8), (10, 12), 2, 60, "float32"),
    ((10, 10), (6, 6), 1, 7, "float32"),  # downsampling windows too
]

# Triton decides at import whether kernels are interpreted, and other tests may have imported it
# already (PyTorch's compiler stack does), so the interpreter runs in a fresh process.
_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from fastvar.plugins.restore.reference import restore_add_reference, restore_reference
    from fastvar.plugins.restore.triton_kernel import restore_add_triton_fused, restore_triton, restore_triton_fused
    out = []
    for i, (cache_hw, out_hw, batch, k, dtype) in enumerate(json.loads(sys.argv[1])):
        g = torch.Generator().manual_seed(i)
        lc, lo, c = cache_hw[0] * cache_hw[1], out_hw[0] * out_hw[1], 24
        k = lo if k == "all" else k
        dt = getattr(torch, dtype)
        cache = torch.randn(batch, lc, c, generator=g).to(dt)
        kept = torch.randn(batch, k, c, generator=g).to(dt)
        idx = torch.stack([torch.randperm(lo, generator=g)[:k] for _ in range(batch)])
        want = restore_reference(kept, idx, cache, tuple(cache_hw), tuple(out_hw))
        res = {}
        for name, fn in (("two-pass", restore_triton), ("fused", restore_triton_fused)):
            got = fn(kept, idx, cache, tuple(cache_hw), tuple(out_hw))
            res[name] = {"equal": got.dtype == want.dtype and torch.equal(got, want),
                         "max_diff": (got.float() - want.float()).abs().max().item()}
        for rdt in (torch.float32, dt):  # the model's fp32 residual stream, and a residual of the cache's dtype
            residual = torch.randn(batch, lo, c, generator=g).to(rdt)
            want = restore_add_reference(residual, kept, idx, cache, tuple(cache_hw), tuple(out_hw))
            got = restore_add_triton_fused(residual, kept, idx, cache, tuple(cache_hw), tuple(out_hw))
            res[f"fused-add {rdt}"] = {"equal": got.dtype == want.dtype and torch.equal(got, want),
                                       "max_diff": (got.float() - want.float()).abs().max().item()}
        out.append(res)
    print(json.dumps(out))
""")


def test_kernel_is_bit_exact_with_the_reference_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(CASES)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for case, r in zip(CASES, results, strict=True):
        assert {"two-pass", "fused", "fused-add torch.float32", f"fused-add torch.{case[4]}"} == set(r), r
        assert all(v["equal"] for v in r.values()), (case, r)


@pytest.mark.parametrize("arch", [80, 89, 90])
def test_ahead_of_time_ptx_for_each_target(arch):
    from fastvar.plugins.restore.triton_kernel import compile_ptx

    ptx = compile_ptx((24, 24), (40, 40), "bfloat16", arch=arch)
    assert set(ptx) == {"area", "scatter", "fused"}
    for name, text in ptx.items():
        assert f".target sm_{arch}" in text, name
        assert ".entry" in text and f"{name}_kernel" in text
    for name in ("area", "fused"):
        assert "div.rn.f32" in ptx[name]  # IEEE division, not the approximate one `/` gives
