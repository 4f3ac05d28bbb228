"""fastvar-build and the TensorRT backend, run against the fake ``tensorrt`` (tests/support/fake_tensorrt): the
real code paths (parser with the plugin registered, AOT kernels, timing cache, records, staleness, address
binding of weights and KV slices, the chain) execute on the CPU; the fake runs each engine's ONNX graph
with ONNX Runtime and refuses what TensorRT refuses (unset or overlapping addresses, foreign plans)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from conftest import build_fake_engines, export_tiny, ort_with_restore

pytest.importorskip("triton", reason="the plugin's AOT kernel is compiled by Triton (pip install triton)")
pytest.importorskip("onnxruntime_extensions", reason="the fake runs FastVARRestore through the ORT custom op")


@pytest.fixture(scope="module", params=["custom", "custom-add"])
def plugin_graphs(request, tmp_path_factory):
    """A small fp32 artifact whose pruned steps carry FastVARRestore, or FastVARRestoreAdd, plugin nodes
    (about 40 s each)."""
    root = tmp_path_factory.mktemp("plugin") / "art"
    export_tiny(root, "12:0.4,16:0.5", res="256", backend="onnx", text_len=8, depth=2, restore_op=request.param)
    return root


@pytest.fixture
def art_dir(plugin_graphs, tmp_path):
    root = tmp_path / "art"
    shutil.copytree(plugin_graphs, root)
    return root


def _generate(be, art, seed=0, force=None):
    from fastvar.export.schedules import scale_schedule
    from fastvar.family import artifact_geometry
    from fastvar.runtime.chain import SamplingSettings, generate

    d = art.data
    text = torch.randn(1, 6, d["model"]["config"]["text_channels"], generator=torch.Generator().manual_seed(1))
    return generate(be, scale_schedule(d["resolution"], d["aspect"]), art.plan(), artifact_geometry(art), text,
                    torch.tensor([6]), SamplingSettings.uniform(1, seed, 4.0, 0.5), force_tokens=force,
                    keep_logits=True)


def test_build_embeds_the_plugin_kernel_records_each_engine_and_rebuilds_only_what_is_stale(fake_tensorrt, art_dir):
    import onnx

    from fastvar.manifest import Artifact
    from fastvar.plugins.restore.trt_plugin import aot_kernel, plugin_fingerprint

    trt = fake_tensorrt
    engines, lines = build_fake_engines(art_dir)
    art = Artifact.load(art_dir)
    assert set(engines) == set(art.run_graphs()) and art.data["engines"] == engines
    for name, rec in engines.items():
        assert rec["path"] == f"engines/{name}.trt11.1.0.sm90.plan" and (art_dir / rec["path"]).is_file()
        assert rec["tensorrt_version"] == "11.1.0" and rec["compute_capability"] == "9.0"
        assert rec["graph_key"] == art.graph(name).key and rec["builder"]["optimization_level"] == 3
    pruned = [s["index"] for s in art.data["scales"] if s["kept"] < s["tokens"] and not s["skipped"]]
    assert pruned == [5, 6]
    for i in pruned:
        rec = engines[f"step_{i:02d}"]
        model = onnx.load(str(art.graph_path(f"step_{i:02d}")), load_external_data=False)
        assert rec["plugin"] == plugin_fingerprint(model, 90) and rec["triton_version"]
        header = trt._fake.read_plan((art_dir / rec["path"]).read_bytes())
        assert "TF32" not in str(header["config"]["flags"]) and header["config"]["builder_optimization_level"] == 3
        fused = art.data["restore_op"] == "custom-add"
        assert {p["name"] for p in header["plugins"]} == {"FastVARRestoreAdd" if fused else "FastVARRestore"}
        nodes = header["plugins"]
        assert len(nodes) == 2 * 3  # two pruned blocks x (SA, CA, FFN)
        st = next(s for s in art.data["scales"] if s["index"] == i)
        want = aot_kernel("float32", "int64", (8, 8), (st["h"], st["w"]), 90, st["kept"],
                          "float32" if fused else None)
        for p in nodes:  # what the plan embeds is the plugin's PTX, launched with its shapes
            assert p["impl"] == "AOT" and p["ptx_sha256"] == want.sha256
            assert p["extra_args"] == [st["kept"], 64, 8, 8, st["h"], st["w"]]
            assert p["launch_params"]["grid_x"] == 2 * -(-st["tokens"] // 16)
            assert p["launch_params"]["block_x"] == 128 and p["launch_params"]["shared_mem"] == want.shared
    assert not any(engines[f"step_{i:02d}"]["plugin"] for i in range(5))
    cache = art_dir / "engines" / "timing.trt11.1.0.sm90.cache"
    assert cache.is_file() and cache.stat().st_size > 0
    size = cache.stat().st_size

    again, lines = build_fake_engines(art_dir)
    assert again == engines and sum("engine up to date" in line for line in lines) == len(engines)
    assert cache.stat().st_size == size  # nothing built, nothing timed
    relevel, lines = build_fake_engines(art_dir, graphs=("step_03",), optimization_level=4)
    assert "built at optimisation level 3" in "\n".join(lines)
    assert relevel["step_03"]["builder"]["optimization_level"] == 4
    trt.__version__ = "11.2.0"
    newer, lines = build_fake_engines(art_dir, graphs=("step_05",))
    assert newer["step_05"]["path"] == "engines/step_05.trt11.2.0.sm90.plan"
    assert "built for TensorRT 11.1.0" in "\n".join(lines)
    assert newer["step_04"] == engines["step_04"]


def test_tensorrt_chain_equals_onnxruntime_and_repeats_exactly(fake_tensorrt, art_dir):
    from fastvar.manifest import Artifact
    from fastvar.runtime.backends import open_backend
    from fastvar.runtime.backends.tensorrt import TensorRTBackend

    trt = fake_tensorrt
    build_fake_engines(art_dir)
    trt._fake.set_session_factory(ort_with_restore)
    art = Artifact.load(art_dir)
    be = TensorRTBackend(art, "cpu")
    first = _generate(be, art)
    runs = len(trt._fake.executions)
    assert runs == 1 + len(art.plan().executed) + 1  # condition, every executed step, decoder
    ort = _generate(open_backend(art, "onnxruntime"), art, force=first.tokens)
    for k, want in ort.logits.items():
        assert np.abs(first.logits[k] - want).max() <= 1e-6 * np.abs(want).max(), k
    again = _generate(be, art)  # the same buffers and addresses, a second image
    assert all(np.array_equal(again.tokens[k], first.tokens[k]) for k in first.tokens)
    assert np.array_equal(again.images, first.images)


def test_weights_are_bound_once_and_kv_slices_in_place(fake_tensorrt, art_dir):
    from fastvar.manifest import Artifact
    from fastvar.runtime.backends.tensorrt import TensorRTBackend

    fake_tensorrt._fake.set_session_factory(ort_with_restore)
    build_fake_engines(art_dir)
    art = Artifact.load(art_dir)
    be = TensorRTBackend(art, "cpu")
    _generate(be, art)
    for name, e in be.engines.items():
        for w in art.graph(name).weights:
            assert e.context.get_tensor_address(w) == be.weights[w].data_ptr()
    e = be.engines["step_04"]
    for i in range(2):
        k = be.kv.k[i]
        past = e.context.get_tensor_address(f"past_k_{i}")
        new = e.context.get_tensor_address(f"new_k_{i}")
        assert past == k.data_ptr()
        assert new == k.data_ptr() + e.inputs[f"past_k_{i}"].shape[0] * k[0].numel() * k.element_size()
    assert len({e.context.get_tensor_address("logits") for e in be.engines.values() if "logits" in e.outputs}) == 7


def test_engines_for_another_tensorrt_gpu_or_graph_are_refused_with_the_reason(fake_tensorrt, art_dir):
    from fastvar.manifest import Artifact, ArtifactError
    from fastvar.runtime.backends.tensorrt import TensorRTBackend

    trt = fake_tensorrt
    build_fake_engines(art_dir)
    trt.__version__ = "11.2.0"
    with pytest.raises(ArtifactError, match=r"step_05: built with TensorRT 11\.1\.0, this machine has 11\.2\.0"):
        TensorRTBackend(Artifact.load(art_dir), "cpu")
    trt.__version__ = "11.1.0"
    art = Artifact.load(art_dir)
    art.manifest.engines["step_03"] = dataclasses.replace(art.manifest.engines["step_03"], graph_key="0" * 16)
    with pytest.raises(ArtifactError, match="step_03 were built from older graphs"):
        TensorRTBackend(art, "cpu")
    plan = art_dir / Artifact.load(art_dir).data["engines"]["decoder"]["path"]
    plan.write_bytes(plan.read_bytes()[:-1] + b"x")
    with pytest.raises(ArtifactError, match="decoder: .* does not match its recorded sha256"):
        TensorRTBackend(Artifact.load(art_dir), "cpu")


def test_fastvar_validate_judges_the_engines(fake_tensorrt, art_dir):
    from fastvar.validate.run import validate

    fake_tensorrt._fake.set_session_factory(ort_with_restore)
    build_fake_engines(art_dir, validation=True)
    lines = []
    code, report = validate(str(art_dir), backend="tensorrt", log=lines.append)
    assert code == 0, report["failures"]
    assert len(report["graphs"]) == 11 and all(g["passed"] for g in report["graphs"])
    assert "end to end (tensorrt vs torch)" in "\n".join(lines)
    assert any("--model-type engine --trt" in line for line in lines)


def test_build_without_tensorrt_stops_after_the_static_check_naming_tensorrt(art_dir):
    from fastvar.builder.engine_builder import BuildOptions, build_engines
    from fastvar.manifest import ArtifactError

    with pytest.raises(ArtifactError, match="TensorRT does not import here.*--backend onnxruntime"):
        build_engines(art_dir, BuildOptions(compute_capability="9.0"))


def test_fastvar_build_check_only_and_bad_usage(art_dir):
    from click.testing import CliRunner

    from fastvar.cli import build_cmd

    r = CliRunner().invoke(build_cmd, [str(art_dir), "--check-only"])
    assert r.exit_code == 0 and "11 graphs pass the TensorRT compatibility check" in r.output
    r = CliRunner().invoke(build_cmd, [str(art_dir), "--graph", "step_99", "--check-only"])
    assert r.exit_code == 0
    r = CliRunner().invoke(build_cmd, [str(art_dir), "--graph", "step_99"])
    assert r.exit_code == 2 and "no graph step_99" in r.output
    r = CliRunner().invoke(build_cmd, [str(art_dir), "--optimization-level", "7"])
    assert r.exit_code == 2 and "0<=x<=5" in r.output


def test_check_only_verifies_the_artifact_first(art_dir):
    """--check-only judges nothing it has not verified as fastvar-run does: altered, garbage, incomplete and
    empty artifacts are refused with exit 2 and a message, never passed or answered with a traceback."""
    import hashlib
    import json

    from click.testing import CliRunner

    from fastvar.cli import build_cmd

    def check():
        return CliRunner().invoke(build_cmd, [str(art_dir), "--check-only"])

    manifest = art_dir / "manifest.json"
    good = json.loads(manifest.read_text())
    graph = art_dir / good["graphs"]["step_00"]["file"]["path"]
    size = graph.stat().st_size
    graph.write_bytes(b"\xff" * size)  # same size, other bytes
    r = check()
    assert r.exit_code == 2 and "does not match its recorded sha256" in r.output
    lying = json.loads(manifest.read_text())
    lying["graphs"]["step_00"]["file"]["sha256"] = hashlib.sha256(graph.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(lying))
    r = check()
    assert r.exit_code == 2 and "is not a readable ONNX model" in r.output and "Traceback" not in r.output
    manifest.write_text(json.dumps({**good, "complete": False}))
    r = check()
    assert r.exit_code == 2 and "the export did not finish" in r.output
    manifest.write_text(json.dumps({**good, "graphs": {}}))
    r = check()
    assert r.exit_code == 2 and "lists no graphs" in r.output


def test_tensorrt_backend_needs_engines_and_a_gpu(fake_tensorrt, art_dir):
    from fastvar.manifest import Artifact, ArtifactError
    from fastvar.runtime.backends import open_backend

    with pytest.raises(ArtifactError, match="has no TensorRT engines: run fastvar-build"):
        open_backend(Artifact.load(art_dir), "tensorrt")
    build_fake_engines(art_dir)
    if not torch.cuda.is_available():
        with pytest.raises(ArtifactError, match="runs on a CUDA GPU and this machine has none"):
            open_backend(Artifact.load(art_dir), "tensorrt")
