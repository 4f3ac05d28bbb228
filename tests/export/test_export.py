"""fastvar-export on infinity-tiny: static graphs, the manifest contract, weights once, staleness."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import export_tiny

from fastvar.export.graphs import weight_tensors
from fastvar.export.models.factory import build_pair
from fastvar.manifest import Artifact, ArtifactError


def _manifest(root):
    return json.loads((root / "manifest.json").read_text())


def test_fastvar_manifest_lists_13_steps_2_skipped_with_upstream_kept_counts(tiny_artifacts):
    m = _manifest(tiny_artifacts["fastvar"])
    scales = m["scales"]
    assert len(scales) == 13 and [s["index"] for s in scales] == list(range(13))
    assert [s["index"] for s in scales if s["skipped"]] == [11, 12]
    by_side = {s["h"]: s for s in scales}
    assert by_side[32]["kept"] == 615 and by_side[40]["kept"] == 800
    assert by_side[48]["kept"] == 0 and by_side[48]["graph"] is None
    assert all(s["kept"] == s["tokens"] == s["h"] * s["w"] for s in scales if s["h"] < 32)
    assert m["cache_scale"] == 8 and m["complete"] is True
    steps = sorted(n for n, g in m["graphs"].items() if g["kind"] == "step")
    assert steps == [f"step_{i:02d}" for i in range(11)]
    # pruned steps also get a validation variant that takes the kept indices as inputs
    assert sorted(n for n, g in m["graphs"].items() if g["kind"] == "validate") == ["step_09_validate",
                                                                                   "step_10_validate"]
    ins = {t["name"] for t in m["graphs"]["step_09_validate"]["inputs"]}
    outs = {t["name"] for t in m["graphs"]["step_09_validate"]["outputs"]}
    assert "kept_sa_0" in ins and not any(n.startswith("kept_") for n in outs)
    for s in scales:
        if s["graph"]:
            assert (tiny_artifacts["fastvar"] / s["graph"]).is_file()
    assert {"condition", "decoder"} <= set(m["graphs"])
    assert m["weights"][0]["bytes"] == (tiny_artifacts["fastvar"] / m["weights"][0]["path"]).stat().st_size


def test_none_has_13_step_graphs(tiny_artifacts):
    m = _manifest(tiny_artifacts["none"])
    assert sorted(n for n, g in m["graphs"].items() if g["kind"] == "step") == [f"step_{i:02d}" for i in range(13)]
    assert not any(g["kind"] == "validate" for g in m["graphs"].values())
    assert m["cache_scale"] is None and not any(s["skipped"] for s in m["scales"])


@pytest.mark.parametrize("schedule", ["fastvar", "none"])
def test_every_graph_is_static_and_passes_the_full_checker(tiny_artifacts, schedule):
    from fastvar.plugins.restore.onnx_op import register_schema

    register_schema()
    root = tiny_artifacts[schedule]
    m = _manifest(root)
    for name, g in m["graphs"].items():
        model = onnx.load(str(root / g["file"]["path"]))
        onnx.checker.check_model(model, full_check=True)
        for vi in [*model.graph.input, *model.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") and d.dim_value > 0 for d in dims), (name, vi.name)
        declared = {t["name"]: t["shape"] for t in g["inputs"] + g["outputs"]}
        for vi in [*model.graph.input, *model.graph.output]:
            if vi.name in declared:
                assert [d.dim_value for d in vi.type.tensor_type.shape.dim] == declared[vi.name]
        assert {i.name for i in model.graph.input} == set(declared).intersection(
            i.name for i in model.graph.input) | set(g["weights"])


def test_pruned_graph_shapes_follow_the_schedule(tiny_artifacts):
    m = _manifest(tiny_artifacts["fastvar"])
    g = {t["name"]: t["shape"] for t in m["graphs"]["step_10"]["inputs"] + m["graphs"]["step_10"]["outputs"]}
    lo, hi = m["schedule"]["block_range"]
    depth = m["model"]["config"]["depth"]
    # before step 10: steps 0..9 wrote 2521 tokens into unpruned blocks; step 9 only 615 into pruned ones
    full = sum(s["tokens"] for s in m["scales"][:10])
    for i in range(depth):
        pruned = lo <= i < hi
        assert g[f"past_k_{i}"][0] == (full - 1024 + 615 if pruned else full)
        assert f"new_k_{i}" not in g  # step 10 is the last executed step: it writes no KV
    g9 = {t["name"]: t["shape"] for t in m["graphs"]["step_09"]["outputs"]}
    assert [g9[f"new_v_{i}"][0] for i in range(depth)] == [615 if lo <= i < hi else 1024 for i in range(depth)]
    assert (lo, hi) == (0, 4)  # tiny (depth 4): round(3*4/32) = 0 .. 4 - round(4*4/32) = 4
    assert g[f"cache_sa_{lo}"] == [2, 576, 64] and g[f"kept_ffn_{lo}"] == [2, 800]
    assert "past_k_0" not in {t["name"] for t in m["graphs"]["step_00"]["inputs"]}
    cache_out = {t["name"] for t in m["graphs"]["step_08"]["outputs"]}
    assert {f"cache_{s}_{i}" for s in ("sa", "ca", "ffn") for i in range(lo, hi)} <= cache_out


def test_weights_are_stored_once_and_no_graph_holds_a_copy(tiny_artifacts):
    root = tiny_artifacts["fastvar"]
    m = _manifest(root)
    model, vae = build_pair("infinity-tiny", random_init=True)
    weights = weight_tensors(model)
    param_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    assert m["weights"][0]["bytes"] <= 1.05 * param_bytes
    digests = set()
    for t in weights.values():
        if t.numel() >= 64:
            t = t.detach()
            digests.add(hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest())
            if t.dim() == 2:
                digests.add(hashlib.sha256(t.t().contiguous().numpy().tobytes()).hexdigest())
    for name, g in m["graphs"].items():
        if name == "decoder":
            continue
        model_proto = onnx.load(str(root / g["file"]["path"]))
        for init in model_proto.graph.initializer:
            raw = onnx.numpy_helper.to_array(init).tobytes()
            assert hashlib.sha256(raw).hexdigest() not in digests, f"{name} embeds a weight copy: {init.name}"
    # every graph binds its weights from the one store
    from fastvar.export.weight_store import read_header

    stored = set(read_header(root / m["weights"][0]["path"])) - {"__data_start__"}
    assert set().union(*(set(g["weights"]) for g in m["graphs"].values())) == stored


def test_weight_store_is_standard_safetensors(tiny_artifacts):
    from safetensors import safe_open

    root = tiny_artifacts["fastvar"]
    model, _ = build_pair("infinity-tiny", random_init=True)
    w = weight_tensors(model)
    with safe_open(str(root / "weights" / "transformer.safetensors"), framework="pt") as f:
        for key in f.keys():
            got = f.get_tensor(key)
            want = w[key[:-2]].t() if key.endswith(".T") else w[key]
            assert torch.equal(got, want.detach()), key


def test_the_store_is_hashed_as_written_and_the_record_is_the_files_hash(tiny_artifacts, tmp_path):
    """The export records the store's sha256 from the bytes it wrote (the 2B's 8.4 GB are not read back):
    that record is the file's hash, and a thunk's tensor is hashed as stored."""
    from fastvar.export.weight_store import write_tensors
    from fastvar.manifest import sha256_file

    rec = _manifest(tiny_artifacts["fastvar"])["weights"][0]
    assert rec["sha256"] == sha256_file(tiny_artifacts["fastvar"] / rec["path"])
    size, digest = write_tensors(tmp_path / "w.safetensors", {"a": torch.arange(6.0).view(2, 3),
                                                              "b": lambda: torch.ones(3, 2).t(), "e": torch.empty(0)})
    assert size == (tmp_path / "w.safetensors").stat().st_size and digest == sha256_file(tmp_path / "w.safetensors")


def test_second_export_is_a_no_op_and_corruption_is_rebuilt(tmp_path, tiny_artifacts):
    import shutil

    root = tmp_path / "a"
    shutil.copytree(tiny_artifacts["fastvar"], root)
    logs: list[str] = []
    from fastvar.export.artifact import ExportOptions, export

    opts = ExportOptions(model="infinity-tiny", random_init=True, schedule="fastvar", text_len=16, out=str(root))
    m = export(opts, log=logs.append)
    assert m["_rebuilt"] == [] and "up to date" in logs[-1]
    # corrupt one graph (same size, different bytes) and truncate nothing else: only it is rebuilt
    p = root / "graphs" / "step_03.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="step_03.onnx"):
        Artifact.load(root).verify()
    m = export(opts, log=logs.append)
    assert m["_rebuilt"] == ["step_03"]
    Artifact.load(root).verify()


def test_run_refuses_truncated_store_and_unfinished_export(tmp_path, tiny_artifacts):
    import shutil

    root = tmp_path / "a"
    shutil.copytree(tiny_artifacts["fastvar"], root)
    store = root / "weights" / "transformer.safetensors"
    store.write_bytes(store.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="transformer.safetensors"):
        Artifact.load(root).verify()
    m = _manifest(root)
    m["complete"] = False
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="did not finish"):
        Artifact.load(root).verify()


def test_interrupted_export_resumes_without_trusting_partial_files(tmp_path, monkeypatch):
    import fastvar.export.artifact as artifact

    calls = {"n": 0}
    real = artifact._export_one

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(artifact, "_export_one", flaky)
    root = tmp_path / "a"
    with pytest.raises(KeyboardInterrupt):
        export_tiny(root, "fastvar", res="256", jobs=1)  # one process: the count of calls is the count of graphs
    m = _manifest(root)
    assert m["complete"] is False and len(m["graphs"]) == 3
    assert not list(root.rglob("*.tmp"))
    with pytest.raises(ArtifactError, match="did not finish"):
        Artifact.load(root).verify()
    monkeypatch.setattr(artifact, "_export_one", real)
    m = export_tiny(root, "fastvar", res="256")
    assert "condition" not in m["_rebuilt"] and "step_03" in m["_rebuilt"]
    Artifact.load(root).verify()


def test_tensorrt_topk_limit_is_refused_with_the_fix():
    from fastvar.export.artifact import check_tensorrt_limits
    from fastvar.export.schedules import prune_plan, scale_schedule

    plan = prune_plan(scale_schedule("1024"), "64:0.05", 32)  # keeps 3892 of 4096 > 3840
    with pytest.raises(ValueError, match=r"3892.*3840.*fraction >= 0.062"):
        check_tensorrt_limits(plan, "tensorrt")
    check_tensorrt_limits(plan, "onnxruntime")
    check_tensorrt_limits(prune_plan(scale_schedule("2048"), "fastvar", 32), "tensorrt")  # K = 1764


def test_graph_selection_keeps_the_reference_set_under_planted_ties():
    """TopK in the graph (ONNX Runtime) and the reference's stable sort keep the same tokens."""
    import onnxruntime as ort

    from fastvar.export.fastvar import select_pivotal, select_pivotal_topk

    class Sel(torch.nn.Module):
        def forward(self, x):
            return select_pivotal_topk(x, 37)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 100, 8, generator=g)
    x[:, 50:] = x[:, :50]  # every score appears twice: the boundary falls inside tied pairs
    x[1, :] = x[1, :1]  # one row entirely tied
    prog = torch.onnx.export(Sel(), (x,), dynamo=True, input_names=["x"], output_names=["idx"])
    sess = ort.InferenceSession(prog.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    want = select_pivotal(x, 37).numpy()
    assert np.array_equal(got, want)
    assert np.array_equal(got[1], np.arange(37))


def test_graph_keys_change_with_what_graphs_bake_in():
    """1:2 and 2:1 have the same token counts per step; their RoPE tables and grids differ, so must keys."""
    from fastvar.export.artifact import graph_key
    from fastvar.export.graphs import Shapes, StepGraph
    from fastvar.export.models.infinity import Infinity
    from fastvar.export.models.infinity_config import preset
    from fastvar.export.schedules import prune_plan, scale_schedule

    with torch.device("meta"):
        model = Infinity(preset("infinity-tiny"))
    keys = {}
    for aspect in ("1:2", "2:1"):
        sched = scale_schedule("1024", aspect)
        plan = prune_plan(sched, "fastvar", 4)
        d = StepGraph(model, sched, plan, plan.steps[9], Shapes(1, 16, True)).definition()
        keys[aspect] = (d.signature(), graph_key({}, d, sched, plan, {}))
    assert keys["1:2"][0] == keys["2:1"][0]  # same interface...
    assert keys["1:2"][1] != keys["2:1"][1]  # ...different graphs


def test_attention_query_chunks_bound_the_scores_and_change_nothing():
    """A step exported with a small attention budget splits its queries; ONNX Runtime's result equals the
    unchunked reference step on the same inputs."""
    import onnxruntime as ort

    from fastvar.export.graphs import Shapes, StepGraph
    from fastvar.export.onnx_export import export_graph
    from fastvar.export.schedules import prune_plan, scale_schedule
    from fastvar.export.weight_store import stored_tensor

    model, _ = build_pair("infinity-tiny", random_init=True)
    sched = scale_schedule("256")
    plan = prune_plan(sched, "none", 4)
    shapes = Shapes(1, 8, True)
    per_query = 2 * 2 * 2 * (265 + 256) * 4  # scores + probabilities, 2 rows, 2 heads, P + L keys, fp32
    g = StepGraph(model, sched, plan, plan.steps[6], shapes, attn_budget=64 * per_query)
    assert g.q_chunks() == [64] * 4
    d = g.definition()
    assert d.baked == {"attention_query_chunks": [64] * 4}
    data, final = export_graph(g.module(), d, weight_tensors(model))
    gen = torch.Generator().manual_seed(0)
    feeds = {}
    for t in d.inputs:
        if t.dtype == "bool":
            feeds[t.name] = torch.ones(t.shape, dtype=torch.bool)
        elif t.name == "noise":
            feeds[t.name] = torch.rand(t.shape, generator=gen)
        else:
            feeds[t.name] = 0.5 * torch.randn(t.shape, generator=gen)
    feeds["inv_tau"], feeds["cfg_scale"] = torch.tensor(2.0), torch.tensor(4.0)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    w = weight_tensors(model)
    ort_feeds = {k: v.numpy() for k, v in feeds.items()} | {k: stored_tensor(w, k).contiguous().numpy()
                                                            for k in final.weights}
    got = sess.run(["logits"], ort_feeds)[0]
    with torch.no_grad():
        want = StepGraph(model, sched, plan, plan.steps[6], shapes).module()(*[feeds[t.name] for t in d.inputs],
                                                                           *[w[n] for n in d.weights])[0]
    assert np.abs(got - want.numpy()).max() <= 1e-5 * np.abs(want.numpy()).max()
    ops = [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert ops.count("Softmax") >= 4 * 4  # 256 queries in chunks of 64, in each of the 4 blocks


def test_a_no_op_re_export_never_marks_the_artifact_incomplete(tiny_artifacts, tmp_path, monkeypatch):
    """While an up-to-date artifact is re-checked, a concurrent fastvar-run must still find it complete."""
    import fastvar.export.artifact as artifact

    root = tmp_path / "none"
    shutil.copytree(tiny_artifacts["none"], root)
    written = []
    real = artifact._write_manifest
    monkeypatch.setattr(artifact, "_write_manifest", lambda r, m: (written.append(m["complete"]), real(r, m)))
    m = export_tiny(root, "none")
    assert m["_rebuilt"] == [] and written and all(written)
