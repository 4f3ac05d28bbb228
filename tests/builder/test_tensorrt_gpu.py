"""The real thing, where it exists: build engines with TensorRT on a CUDA GPU and check the chain against
ONNX Runtime and the reference. Skipped, saying why, on machines without TensorRT or a GPU (our CI: TensorRT
cannot be installed from PyPI, see docs/design/tensorrt.md); tests/test_trt_build.py runs the same code
paths there against a fake ``tensorrt``."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import export_tiny

pytestmark = pytest.mark.gpu


def _require_tensorrt_and_gpu():
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT is not installed (pip install tensorrt-cu12/-cu13 from pypi.nvidia.com)")
    import tensorrt

    if getattr(tensorrt, "_fake", None) is not None:
        pytest.skip("the imported tensorrt is the CPU fake, not TensorRT")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: TensorRT engines are built and run on the GPU")
    pytest.importorskip("triton", reason="the plugin's AOT kernel is compiled by Triton (pip install triton)")


@pytest.mark.parametrize("restore_op", ["custom", "custom-add"])
def test_engines_build_run_and_match_onnxruntime_on_the_gpu(tmp_path, restore_op):
    _require_tensorrt_and_gpu()
    from fastvar.builder.engine_builder import BuildOptions, build_engines
    from fastvar.manifest import Artifact
    from fastvar.validate.run import validate

    root = tmp_path / "art"
    export_tiny(root, "12:0.4,16:0.5", res="256", backend="onnx", text_len=8, depth=2, restore_op=restore_op)
    engines = build_engines(root, BuildOptions(validation=True), log=lambda _: None)
    art = Artifact.load(root)
    major, minor = torch.cuda.get_device_capability()
    assert all(r["compute_capability"] == f"{major}.{minor}" for r in engines.values())
    code, report = validate(str(root), backend="tensorrt", log=lambda _: None)
    assert code == 0, report["failures"]
    errors = report["end_to_end"]["teacher_forced_logit_error"]
    assert max(errors.values()) <= 1e-4 and len(errors) == len(art.plan().executed)
    assert np.isfinite(report["end_to_end"]["token_agreement"])
