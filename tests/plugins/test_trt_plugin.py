"""The TensorRT plugin's AOT kernel: the PTX it embeds is Triton's fused kernel with exactly the parameters a
TensorRT AOT launch passes (inputs, scalars, outputs), proven by assembling it with the ptxas Triton ships."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="the plugin kernel is a Triton kernel (pip install triton)")

from fastvar.plugins.restore.trt_plugin import aot_kernel, strip_hidden_params  # noqa: E402

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
CUOBJDUMP = PTXAS.with_name("cuobjdump")
SIZES = [8, 8, 8, 4, 4, 4, 4, 4, 4, 8]  # kept*, idx*, cache*, K, C, hc, wc, h, w (i32), out*


def _params(ptx: str, name: str) -> list[str]:
    m = re.search(rf"\.entry\s+{name}\(\s*(.*?)\s*\)", ptx, re.S)
    return [p.strip() for p in m.group(1).split(",")]


@pytest.mark.parametrize("arch,dtype", [(80, "float32"), (89, "float16"), (90, "bfloat16")])
def test_embedded_ptx_takes_exactly_what_tensorrt_passes(arch, dtype, tmp_path):
    k = aot_kernel(dtype, "int64", (36, 36), (48, 48), arch, 1152)
    assert re.search(rf"^\.target sm_{arch}a?$", k.ptx, re.M)
    params = _params(k.ptx, k.name)
    assert len(params) == 10 and k.hidden_params_removed == 2  # Triton 3.6: global and profile scratch
    assert [p.split()[1] for p in params] == [".u64"] * 3 + [".u32"] * 6 + [".u64"]
    assert k.num_warps * 32 == int(re.search(r"\.reqntid (\d+)", k.ptx).group(1))
    assert "div.rn.f32" in k.ptx and k.triton_version == triton.__version__
    if not PTXAS.is_file() or not CUOBJDUMP.is_file():
        pytest.skip(f"Triton's bundled ptxas/cuobjdump are not at {PTXAS.parent}: the PTX is not assembled")
    src, cubin = tmp_path / "k.ptx", tmp_path / "k.cubin"
    src.write_text(k.ptx)
    target = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    done = subprocess.run([str(PTXAS), f"-arch={target}", str(src), "-o", str(cubin)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    elf = subprocess.run([str(CUOBJDUMP), "-elf", str(cubin)], capture_output=True, text=True, check=True).stdout
    info = re.findall(r"Ordinal\s*:\s*0x([0-9a-f]+)\s+Offset\s*:\s*0x[0-9a-f]+\s+Size\s*:\s*0x([0-9a-f]+)", elf)
    sizes = [int(s, 16) for _, s in sorted(info, key=lambda t: int(t[0], 16))]
    assert sizes == SIZES  # the assembled kernel's parameter table: what cuLaunchKernel will be given


def test_k_is_compiled_in_only_as_a_loop_bound():
    exact, general = aot_kernel("float32", "int64", (32, 32), (64, 64), 90, 1024), \
        aot_kernel("float32", "int64", (32, 32), (64, 64), 90)
    assert exact.sha256 != general.sha256  # 16 vs 64 tiles of 64 kept indices
    assert _params(exact.ptx, exact.name) == _params(general.ptx, general.name)


def test_a_kernel_that_reads_a_hidden_parameter_is_refused():
    k = aot_kernel("float32", "int32", (8, 8), (16, 16), 90, 64)
    raw = k.ptx.replace(f"\t.param .u64 .ptr .global .align 1 {k.name}_param_9\n)",
                        f"\t.param .u64 .ptr .global .align 1 {k.name}_param_9,\n"
                        f"\t.param .u64 .ptr .global .align 1 {k.name}_param_10\n)")
    assert raw != k.ptx
    stripped, n = strip_hidden_params(raw, k.name, 10)
    assert n == 1 and stripped == k.ptx  # an unused trailing parameter goes
    used = raw.replace("// %bb.0:", f"// %bb.0:\n\tld.param.b64 \t%rd99, [{k.name}_param_10];", 1)
    with pytest.raises(ValueError, match="reads its hidden parameter .*param_10.*Pin the Triton"):
        strip_hidden_params(used, k.name, 10)
    with pytest.raises(ValueError, match="takes 10 parameters, the plugin launch passes 11"):
        strip_hidden_params(k.ptx, k.name, 11)


def test_the_fused_add_kernel_takes_the_residual_first(tmp_path):
    k = aot_kernel("bfloat16", "int64", (36, 36), (64, 64), 90, 1024, residual_dtype="float32")
    params = _params(k.ptx, k.name)
    assert k.name == "fused_add_kernel" and len(params) == 11 and k.hidden_params_removed == 2
    assert [p.split()[1] for p in params] == [".u64"] * 4 + [".u32"] * 6 + [".u64"]
    plain = aot_kernel("bfloat16", "int64", (36, 36), (64, 64), 90, 1024)
    assert plain.sha256 != k.sha256
    if not PTXAS.is_file():
        pytest.skip(f"Triton's bundled ptxas is not at {PTXAS}: the PTX is not assembled")
    (tmp_path / "k.ptx").write_text(k.ptx)
    done = subprocess.run([str(PTXAS), "-arch=sm_90a", str(tmp_path / "k.ptx"), "-o", str(tmp_path / "k.cubin")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
