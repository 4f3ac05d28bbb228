"""The static TensorRT-compatibility check: every real exported graph passes, and each planted violation is
reported with the graph, the node and what TensorRT accepts."""

from __future__ import annotations

import collections

import onnx
import pytest
from conftest import export_tiny
from onnx import TensorProto, helper
from support.onnx_check_models import (
    copy_graphs,
    empty_slice_model,
    insert_fp16_roundtrip,
    internal_uint8_model,
    nodes_of,
    plugin_model,
    set_topk_k,
    tiny,
    topk_model,
    unsupported_op_model,
    vi,
)

from fastvar.builder.onnx_check import IncompatibleGraphs, check_artifact, check_model, require_compatible
from fastvar.builder.trt_facts import TOPK_MAX, supported_ops
from fastvar.manifest import Artifact


@pytest.fixture(scope="module")
def plugin_artifact(tmp_path_factory) -> Artifact:
    """The form fastvar-build meets: --backend onnx (FastVARRestore plugin nodes), bf16. 256 px with two pruned
    steps and two blocks keeps the export to about 20 s on 2 cores."""
    root = tmp_path_factory.mktemp("onnx_check") / "plugin"
    export_tiny(root, "12:0.4,16:0.5", res="256", backend="onnx", precision="bf16", text_len=8, depth=2)
    return Artifact.load(root)


def _rules(found):
    return [(v.node, v.rule) for v in found]


def _op_sets(art: Artifact) -> dict[str, set[tuple[str, str]]]:
    ops = collections.defaultdict(set)
    for name, g in art.data["graphs"].items():
        model = onnx.load(str(art.graph_path(name)), load_external_data=False)
        ops[g["kind"]] |= {(n.domain, n.op_type) for n in model.graph.node}
    return ops


# ---- real graphs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["fastvar", "none"])
def test_every_graph_of_a_real_artifact_passes(tiny_artifacts, schedule):
    art = Artifact.load(tiny_artifacts[schedule])
    found = check_artifact(art)
    assert set(found) == set(art.data["graphs"])  # every kind, validation variants included
    assert {g["kind"] for g in art.data["graphs"].values()} >= {"condition", "step", "decoder"}
    assert not any(found.values()), "\n".join(str(v) for vs in found.values() for v in vs)
    require_compatible(art)
    ops = {op for kind in _op_sets(art).values() for _, op in kind}
    assert ops <= set(supported_ops())
    if schedule == "fastvar":
        assert "TopK" in ops and "ScatterElements" in ops  # pruned steps, standard restore spelling


def test_the_plugin_form_passes_with_its_fastvar_restore_nodes(plugin_artifact):
    art = plugin_artifact
    assert art.data["restore_op"] == "custom" and art.data["precision"] == "bf16"
    ops = _op_sets(art)
    assert ("fastvar", "FastVARRestore") in ops["step"] and ("fastvar", "FastVARRestore") in ops["validate"]
    found = check_artifact(art)
    assert not any(found.values()), "\n".join(str(v) for vs in found.values() for v in vs)
    require_compatible(art)


# ---- rule 1: TopK ---------------------------------------------------------------------------------------------

def test_a_planted_topk_of_4096_in_a_real_graph_is_rejected_naming_the_node(tiny_artifacts):
    path = Artifact.load(tiny_artifacts["fastvar"]).graph_path("step_09")
    model = onnx.load(str(path), load_external_data=False)
    topks = nodes_of(model, "TopK")
    assert len(topks) > 1 and not check_model(model, precision="fp32", graph="step_09")
    set_topk_k(model, topks[1], 4096)
    found = check_model(model, precision="fp32", graph="step_09")
    assert _rules(found) == [(topks[1].name, "topk-k")]
    v = found[0]
    assert v.graph == "step_09" and v.op == "TopK" and "k = 4096" in v.message and "3840" in v.message


@pytest.mark.parametrize("via", ["initializer", "constant-chain"])
def test_topk_k_is_read_through_constants(via):
    assert not check_model(topk_model(TOPK_MAX, via), precision="fp32")
    found = check_model(topk_model(TOPK_MAX + 1, via), precision="fp32")
    assert _rules(found) == [("pick", "topk-k")] and f"k = {TOPK_MAX + 1}" in found[0].message


def test_a_topk_k_computed_at_run_time_is_rejected():
    found = check_model(topk_model(0, "shape"), precision="fp32")
    assert _rules(found) == [("pick", "topk-k")] and "not a build-time constant" in found[0].message


def test_a_k_stored_as_external_data_is_read_from_the_models_folder(tmp_path):
    model = topk_model(4096)
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    assert (tmp_path / "m.data").is_file()
    found = check_model(tmp_path / "m.onnx", precision="fp32")
    assert _rules(found) == [("pick", "topk-k")] and "k = 4096" in found[0].message
    assert found[0].graph == "m.onnx"
    in_memory = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)  # no folder to read K from
    found = check_model(in_memory, precision="fp32")
    assert _rules(found) == [("pick", "topk-k")] and "cannot be read here" in found[0].message


def test_require_compatible_names_graph_node_and_limit(tiny_artifacts, tmp_path):
    root = copy_graphs(tiny_artifacts["fastvar"], tmp_path / "a")
    art = Artifact.load(root)
    path = art.graph_path("step_10")
    model = onnx.load(str(path))
    node = nodes_of(model, "TopK")[0]
    set_topk_k(model, node, 4096)
    onnx.save(model, str(path))
    with pytest.raises(IncompatibleGraphs) as err:
        require_compatible(art)
    text = str(err.value)
    assert "graph step_10:" in text and f"node {node.name} (TopK) [topk-k]" in text
    assert "k = 4096" in text and "3840" in text and str(root) in text
    assert "step_09" not in text and list(err.value.violations) == ["step_10"]


# ---- rule 2: zero-size dimensions ------------------------------------------------------------------------------

def test_a_zero_size_tensor_is_rejected_naming_the_node_that_makes_it():
    found = check_model(empty_slice_model(), precision="fp32")
    assert _rules(found) == [("slice_to_nothing", "zero-dim")] and "nothing" in found[0].message


def test_an_empty_1d_constant_is_an_absent_optional_input_not_a_zero_size_tensor():
    import numpy as np
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.zeros((0,), np.float32), "roi"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="up", mode="nearest")
    model = tiny([node], [vi("x", TensorProto.FLOAT, (1, 1, 2, 2))], [vi("y", TensorProto.FLOAT, (1, 1, 4, 4))],
                 inits)
    assert not check_model(model, precision="fp32")


def test_a_zero_size_graph_output_is_rejected(tiny_artifacts):
    model = onnx.load(str(Artifact.load(tiny_artifacts["none"]).graph_path("step_03")), load_external_data=False)
    out = next(o for o in model.graph.output if o.name == "logits")
    out.type.tensor_type.shape.dim[1].dim_value = 0
    found = [v for v in check_model(model, precision="fp32") if v.rule == "zero-dim"]
    assert found and found[0].node == "" and "graph output logits" in found[0].message


# ---- rule 3: plugin nodes -----------------------------------------------------------------------------------

def _restore_graph(art: Artifact) -> tuple[onnx.ModelProto, onnx.NodeProto]:
    model = onnx.load(str(art.graph_path("step_05")), load_external_data=False)
    return model, nodes_of(model, "FastVARRestore")[0]


def test_an_int64_tensor_attribute_on_a_plugin_node_is_rejected(plugin_artifact):
    model, node = _restore_graph(plugin_artifact)
    node.attribute.append(helper.make_attribute("offsets", helper.make_tensor("o", TensorProto.INT64, [2], [0, 1])))
    found = check_model(model, precision="bf16", graph="step_05")
    assert _rules(found) == [(node.name, "plugin-attr")]
    assert "offsets" in found[0].message and "int64 tensor" in found[0].message and "int32" in found[0].message


def test_an_int_attribute_beyond_int32_on_a_plugin_node_is_rejected(plugin_artifact):
    model, node = _restore_graph(plugin_artifact)
    next(a for a in node.attribute if a.name == "cache_h").i = 2**31
    found = check_model(model, precision="bf16", graph="step_05")
    assert _rules(found) == [(node.name, "plugin-attr")]
    assert "cache_h = 2147483648" in found[0].message and "int32" in found[0].message


def test_plugin_lookup_attributes_and_names():
    ok = plugin_model(plugin_namespace="acme", plugin_version="1", size=3, scale=0.5, tag="t", ids=[1, 2])
    assert not check_model(ok, precision="fp32")
    found = check_model(plugin_model(), precision="fp32")
    assert sorted(v.message.split(";")[0] for v in found) == ["has no plugin_namespace attribute",
                                                              "has no plugin_version attribute"]
    found = check_model(plugin_model(plugin_namespace="other", plugin_version=1), precision="fp32")
    assert sorted(v.rule for v in found) == ["plugin-attr", "plugin-attr"]
    assert any("plugin_version is INT" in v.message for v in found) and any("'acme'" in v.message for v in found)
    found = check_model(plugin_model("Gelu", plugin_namespace="acme", plugin_version="1"), precision="fp32")
    assert _rules(found) == [("plug", "plugin-name")]


# ---- rule 4: supported ops ------------------------------------------------------------------------------------

def test_an_unsupported_op_is_rejected_naming_the_node():
    found = check_model(unsupported_op_model(), precision="fp32")
    assert _rules(found) == [("determinant", "unsupported-op")] and "Det is marked N" in found[0].message


def test_uint8_only_at_the_graphs_edge():
    found = check_model(internal_uint8_model(), precision="fp32")
    assert sorted(_rules(found)) == [("add_bytes", "dtype"), ("add_bytes", "op-type"), ("to_bytes", "dtype")]


# ---- rule 5: precision ------------------------------------------------------------------------------------------

def test_a_float16_tensor_in_an_fp32_graph_is_rejected_naming_the_node(tiny_artifacts):
    model = onnx.load(str(Artifact.load(tiny_artifacts["none"]).graph_path("step_02")), load_external_data=False)
    tensor = nodes_of(model, "LayerNormalization")[0].output[0]
    planted = insert_fp16_roundtrip(model, tensor)
    found = check_model(model, precision="fp32", graph="step_02")
    assert _rules(found) == [(planted, "precision")]
    assert "float16" in found[0].message and "fp32" in found[0].message
    assert not check_model(model, precision="fp16")


def test_bf16_graphs_pass_as_bf16_only(plugin_artifact):
    path = plugin_artifact.graph_path("step_06")
    assert not check_model(path, precision="bf16")
    found = check_model(path, precision="fp32")
    assert found and {v.rule for v in found} == {"precision"} and all("bfloat16" in v.message for v in found)
    with pytest.raises(ValueError, match="unknown precision"):
        check_model(path, precision="int8")


def test_float64_is_rejected_in_any_precision():
    nodes = [helper.make_node("Cast", ["x"], ["d"], name="to_double", to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["d"], ["y"], name="to_float", to=TensorProto.FLOAT)]
    model = tiny(nodes, [vi("x", TensorProto.FLOAT, (2,))], [vi("y", TensorProto.FLOAT, (2,))])
    for precision in ("fp32", "bf16"):
        assert _rules(check_model(model, precision=precision)) == [("to_double", "precision")]


# ---- rule 6: IR and opset -------------------------------------------------------------------------------------

def test_ir_and_opset_versions():
    assert not check_model(topk_model(8), precision="fp32")
    model = topk_model(8)
    model.ir_version = 11
    assert _rules(check_model(model, precision="fp32")) == [("", "ir-version")]
    model = topk_model(8)
    model.ir_version = 8  # opset 20 needs IR 9
    assert _rules(check_model(model, precision="fp32")) == [("", "ir-version")]
    model = topk_model(8)
    model.opset_import[0].version = 21
    assert _rules(check_model(model, precision="fp32")) == [("", "opset")]
