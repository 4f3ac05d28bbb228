"""HART through fastvar-build and the TensorRT backend, against the fake ``tensorrt`` (tests/support/fake_tensorrt): the
graphs pass the static check, every engine is built with the FastVARRestoreAdd plugin where HART prunes, and the
one chain runs condition, steps, next-input, diffusion and decoder engines with the same results as ONNX Runtime."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import build_fake_engines, ort_with_restore

pytest.importorskip("triton", reason="the plugin's AOT kernel is compiled by Triton (pip install triton)")
pytest.importorskip("onnxruntime_extensions", reason="the fake runs FastVARRestoreAdd through the ORT custom op")


@pytest.fixture(scope="module")
def hart_graphs(tmp_path_factory):
    """hart-tiny (depth 1) with FastVAR, exported for TensorRT with the fused restore-add node (about 45 s)."""
    from fastvar.export.artifact import ExportOptions, export

    root = tmp_path_factory.mktemp("hart_trt") / "art"
    export(ExportOptions(model="hart-tiny", random_init=True, depth=1, res="1024", schedule="fastvar", backend="onnx",
                         restore_op="custom-add", out=str(root)), log=lambda _: None)
    return root


@pytest.fixture
def art_dir(hart_graphs, tmp_path):
    root = tmp_path / "art"
    shutil.copytree(hart_graphs, root)
    return root


def _generate(be, art, seed=0, force=None):
    from fastvar.family import artifact_geometry, artifact_schedule
    from fastvar.runtime.chain import SamplingSettings, generate

    text = torch.randn(1, 7, 1536, generator=torch.Generator().manual_seed(2))
    return generate(be, artifact_schedule(art), art.plan(), artifact_geometry(art), text, torch.tensor([7]),
                    SamplingSettings.uniform(1, seed, 4.5, None, more_smooth=False), force_tokens=force,
                    keep_logits=True)


def test_hart_graphs_pass_the_check_and_build_with_the_fused_plugin(fake_tensorrt, art_dir):
    from click.testing import CliRunner

    from fastvar.cli import build_cmd
    from fastvar.manifest import Artifact

    r = CliRunner().invoke(build_cmd, [str(art_dir), "--check-only"])
    assert r.exit_code == 0 and "32 graphs pass the TensorRT compatibility check" in r.output, r.output
    engines, _ = build_fake_engines(art_dir)
    art = Artifact.load(art_dir)
    assert set(engines) == set(art.run_graphs())
    assert {"condition", "diffusion", "decoder", "next_input_00", "next_input_12", "step_13"} <= set(engines)
    for i in range(14):
        header = fake_tensorrt._fake.read_plan((art_dir / engines[f"step_{i:02d}"]["path"]).read_bytes())
        plugins = [p["name"] for p in header["plugins"]]
        # depth 1: one block x (attention, MLP) restored at the two pruned steps, nothing elsewhere
        assert plugins == (["FastVARRestoreAdd"] * 2 if i in (12, 13) else []), (i, plugins)


def test_hart_tensorrt_chain_equals_onnxruntime_and_repeats_exactly(fake_tensorrt, art_dir):
    from fastvar.manifest import Artifact
    from fastvar.runtime.backends import open_backend
    from fastvar.runtime.backends.tensorrt import TensorRTBackend

    trt = fake_tensorrt
    build_fake_engines(art_dir)
    trt._fake.set_session_factory(ort_with_restore)
    art = Artifact.load(art_dir)
    be = TensorRTBackend(art, "cpu")
    first = _generate(be, art)
    ran = [e for e in trt._fake.executions]
    assert len(ran) == 1 + 14 + 13 + 1 + 1  # condition, 14 steps, 13 next inputs, diffusion, decoder
    ort = _generate(open_backend(art, "onnxruntime"), art, force=first.tokens)
    for k, want in ort.logits.items():
        assert np.abs(first.logits[k] - want).max() <= 1e-5 * np.abs(want).max(), k
    assert all(np.array_equal(ort.tokens[k], first.tokens[k]) for k in first.tokens)
    assert np.abs(first.images.astype(int) - ort.images.astype(int)).max() <= 1  # diffusion head and decoder too
    for name in ("diffusion", "next_input_05", "decoder"):  # every engine's weights come from the one store
        for w in art.graph(name).weights:
            assert be.engines[name].context.get_tensor_address(w) == be.weights[w].data_ptr()
    assert be.engines["diffusion"].context.get_tensor_address("hidden") == be.hidden.data_ptr()
    again = _generate(be, art)  # the same buffers and addresses, a second image
    assert all(np.array_equal(again.tokens[k], first.tokens[k]) for k in first.tokens)
    assert np.array_equal(again.images, first.images)
    from fastvar.manifest import ArtifactError

    partial = TensorRTBackend(art, "cpu", graphs=[n for n in art.run_graphs() if n != "next_input_05"])
    with pytest.raises(ArtifactError, match="no next_input_05 graph is loaded"):  # not the last step's shortcut
        _generate(partial, art)


def test_fastvar_validate_judges_the_hart_engines(fake_tensorrt, art_dir):
    from fastvar.validate.run import validate

    fake_tensorrt._fake.set_session_factory(ort_with_restore)
    build_fake_engines(art_dir, validation=True)
    lines = []
    code, report = validate(str(art_dir), backend="tensorrt", log=lines.append)
    assert code == 0, report["failures"]
    assert len(report["graphs"]) == 32 and all(g["passed"] for g in report["graphs"])
    assert "end to end (tensorrt vs torch)" in "\n".join(lines)
