"""Small ONNX models and edits of real exported graphs that plant one TensorRT incompatibility each
(for tests/builder/test_onnx_check.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET, IR = 20, 10


def tiny(nodes, inputs, outputs, initializers=(), opsets=(("", OPSET),), ir: int = IR) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "planted", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = ir
    return model


def vi(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def topk_model(k: int, via: str = "initializer") -> onnx.ModelProto:
    """scores (2, 5000) -> TopK named ``pick``; K is an int64 initializer, or a Constant -> Cast -> Reshape chain,
    or computed at run time from the input's shape (``via="shape"``)."""
    nodes, inits = [], []
    if via == "initializer":
        inits.append(numpy_helper.from_array(np.array([k], dtype=np.int64), "k"))
    elif via == "constant-chain":
        nodes += [helper.make_node("Constant", [], ["k_scalar"], value=helper.make_tensor("v", TensorProto.INT32,
                                                                                          [], [k])),
                  helper.make_node("Cast", ["k_scalar"], ["k_i64"], to=TensorProto.INT64),
                  helper.make_node("Reshape", ["k_i64", "one"], ["k"])]
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "one"))
    elif via == "shape":
        nodes += [helper.make_node("Shape", ["scores"], ["shape"], start=1, end=2),
                  helper.make_node("Div", ["shape", "two"], ["k"])]
        inits.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "two"))
    else:
        raise ValueError(via)
    nodes.append(helper.make_node("TopK", ["scores", "k"], ["values", "indices"], name="pick", axis=1))
    out = k if via != "shape" else 2500
    return tiny(nodes, [vi("scores", TensorProto.FLOAT, (2, 5000))],
                [vi("values", TensorProto.FLOAT, (2, out)), vi("indices", TensorProto.INT64, (2, out))], inits)


def empty_slice_model() -> onnx.ModelProto:
    """x (2, 3) sliced [1:1] on axis 1 by node ``slice_to_nothing``: an inner tensor of shape (2, 0)."""
    inits = [numpy_helper.from_array(np.array([v], dtype=np.int64), n)
             for n, v in (("starts", 1), ("ends", 1), ("axes", 1))]
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["nothing"], name="slice_to_nothing"),
             helper.make_node("ReduceSum", ["nothing"], ["y"], name="sum_it", keepdims=1)]
    return tiny(nodes, [vi("x", TensorProto.FLOAT, (2, 3))], [vi("y", TensorProto.FLOAT, (1, 1))], inits)


def unsupported_op_model() -> onnx.ModelProto:
    """A Det node (operators.md: N) named ``determinant``."""
    nodes = [helper.make_node("Det", ["x"], ["d"], name="determinant")]
    return tiny(nodes, [vi("x", TensorProto.FLOAT, (3, 3))], [vi("d", TensorProto.FLOAT, ())])


def internal_uint8_model() -> onnx.ModelProto:
    """x -> Cast(uint8) ``to_bytes`` -> Add ``add_bytes`` -> Cast(float): uint8 inside the graph."""
    nodes = [helper.make_node("Cast", ["x"], ["b"], name="to_bytes", to=TensorProto.UINT8),
             helper.make_node("Add", ["b", "b"], ["bb"], name="add_bytes"),
             helper.make_node("Cast", ["bb"], ["y"], name="to_float", to=TensorProto.FLOAT)]
    return tiny(nodes, [vi("x", TensorProto.FLOAT, (4,))], [vi("y", TensorProto.FLOAT, (4,))])


def plugin_model(op_type: str = "MyPlugin", domain: str = "acme", **attrs) -> onnx.ModelProto:
    """One custom node ``plug`` with the given attributes (its output type is left to the plugin)."""
    node = helper.make_node(op_type, ["x"], ["y"], name="plug", domain=domain, **attrs)
    return tiny([node], [vi("x", TensorProto.FLOAT, (4,))], [vi("y", TensorProto.FLOAT, (4,))],
                opsets=(("", OPSET), (domain, 1)))


# ---- edits of real exported graphs ---------------------------------------------------------------------------

def nodes_of(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def set_topk_k(model: onnx.ModelProto, node: onnx.NodeProto, k: int) -> None:
    """Give one TopK node its own K initializer holding ``k`` (the exported K is shared by every TopK)."""
    name = f"{node.name}_planted_k"
    model.graph.initializer.append(numpy_helper.from_array(np.array([k], dtype=np.int64), name))
    node.input[1] = name


def insert_fp16_roundtrip(model: onnx.ModelProto, tensor: str) -> str:
    """Route ``tensor`` through float16 (Cast ``planted_to_fp16``, then back): returns the planted node's name."""
    g = model.graph
    back = tensor + "_planted_back"
    for n in g.node:
        for j, name in enumerate(n.input):
            if name == tensor:
                n.input[j] = back
    producer = next(i for i, n in enumerate(g.node) if tensor in n.output)
    g.node.insert(producer + 1, helper.make_node("Cast", [tensor], [tensor + "_fp16"], name="planted_to_fp16",
                                                 to=TensorProto.FLOAT16))
    g.node.insert(producer + 2, helper.make_node("Cast", [tensor + "_fp16"], [back], name="planted_back",
                                                 to=TensorProto.FLOAT))
    return "planted_to_fp16"


def copy_graphs(src: Path, dst: Path) -> Path:
    """The manifest and graphs of an artifact (not its weights: the check does not read them)."""
    dst.mkdir(parents=True)
    shutil.copy2(src / "manifest.json", dst / "manifest.json")
    shutil.copytree(src / "graphs", dst / "graphs")
    return dst
