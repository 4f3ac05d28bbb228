"""Trace one graph to ONNX and shape it into what every backend loads.

After the exporter, a fixed set of rewrites: weight inputs lose the tracing prefix; unused weight
inputs are dropped; a weight that the graph only ever transposes (a linear layer's ``x @ W.T``) is
stored and bound already transposed, so no backend pays a transpose per call; then the graph must
have no symbolic dimension and pass ``onnx.checker`` (full check).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import types
import warnings
from collections.abc import Callable, Iterator

import onnx
import torch
import torch.nn as nn
from onnx import helper

from fastvar.export.graphs import GraphDef, TensorSpec

OPSET = 20
IR_VERSION = 10  # ONNX Runtime 1.3x reads IR <= 13; the exporter writes 10
TRANSPOSED_SUFFIX = ".T"
WEIGHT_PREFIX = "m."  # what weight inputs are called while tracing, until ``finalize`` binds them
_ONNX_TYPES = {"float32": onnx.TensorProto.FLOAT, "bfloat16": onnx.TensorProto.BFLOAT16,
               "float16": onnx.TensorProto.FLOAT16, "bool": onnx.TensorProto.BOOL, "int64": onnx.TensorProto.INT64,
               "int32": onnx.TensorProto.INT32, "uint8": onnx.TensorProto.UINT8}


class ExportError(ValueError):
    """A graph that does not come out as the artifact needs it (symbolic, mistyped, missing inputs)."""


def trace(module: nn.Module, graph: GraphDef, weights: dict[str, torch.Tensor],
          translation_table: dict | None = None) -> onnx.ModelProto:
    """Run the dynamo exporter on ``module`` with uninitialised examples of the data inputs."""
    examples = [s.empty() for s in graph.inputs]
    weight_args = [weights[n] for n in graph.weights]
    names = [s.name for s in graph.inputs] + [WEIGHT_PREFIX + n for n in graph.weights]
    with warnings.catch_warnings(), _exporter_tables_once():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        prog = torch.onnx.export(
            module, tuple(examples + weight_args), dynamo=True, opset_version=OPSET, optimize=True,
            input_names=names, output_names=[s.name for s in graph.outputs],
            custom_translation_table=translation_table or {}, verbose=False, report=False,
        )
    return prog.model_proto


_EXPORTER_MEMO: dict = {}


@contextlib.contextmanager
def _exporter_tables_once() -> Iterator[None]:
    """torch.onnx rebuilds its ATen-to-ONNX registry for every export: it lists onnxscript's ~500 torchlib
    functions again (parsing their source) and infers each one's signature again, about 0.5 s an export.
    Both are pure functions of objects that live for the process, so within our exports each answer is
    computed once. Where torch's exporter is laid out differently nothing is patched (exports are slower)."""
    try:
        from torch.onnx._internal.exporter import _registration, _schemas

        apis = _registration.onnxscript_apis
        module = apis if isinstance(apis, types.ModuleType) else importlib.import_module(apis._name)
        patches = [(module, "get_torchlib_ops"), (_schemas, "op_signature_from_function")]
        originals = [getattr(m, name) for m, name in patches]
    except (ImportError, AttributeError):
        yield
        return
    for (m, name), fn in zip(patches, originals, strict=True):
        setattr(m, name, _memoized(fn))
    try:
        yield
    finally:
        for (m, name), fn in zip(patches, originals, strict=True):
            setattr(m, name, fn)


def _memoized(fn: Callable) -> Callable:
    def once(*args, **kwargs):
        key = (fn, args, tuple(sorted(kwargs.items())))
        try:
            return _EXPORTER_MEMO[key]
        except KeyError:
            out = _EXPORTER_MEMO[key] = fn(*args, **kwargs)
            return out
        except TypeError:  # an unhashable argument: not ours to remember
            return fn(*args, **kwargs)

    return once


def finalize(model: onnx.ModelProto, graph: GraphDef, weights: dict[str, torch.Tensor]) -> tuple[onnx.ModelProto,
                                                                                             GraphDef]:
    """Rename/drop/transpose weight inputs, check static shapes and the checker; returns the bound names."""
    g = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in g.output}
    kept_inputs, bound = [], []
    removed_nodes: set[int] = set()
    for vi in g.input:
        if not vi.name.startswith(WEIGHT_PREFIX):
            kept_inputs.append(vi)
            continue
        key = vi.name[len(WEIGHT_PREFIX):]
        users = consumers.get(vi.name, [])
        if not users:
            continue
        t = weights[key]
        transposes = [n for n in users if n.op_type == "Transpose" and t.dim() == 2 and _swaps_2d(n)]
        if t.dim() == 2 and len(transposes) == len(users):
            new = key + TRANSPOSED_SUFFIX
            for n in transposes:
                removed_nodes.add(id(n))
                if n.output[0] in graph_outputs:
                    raise ExportError(f"{graph.name}: a transposed weight is a graph output")
                for other in consumers.get(n.output[0], []):
                    other.input[:] = [new if name == n.output[0] else name for name in other.input]
            kept_inputs.append(helper.make_tensor_value_info(new, vi.type.tensor_type.elem_type,
                                                             list(reversed(t.shape))))
            bound.append(new)
        else:
            for n in users:
                n.input[:] = [key if name == vi.name else name for name in n.input]
            kept_inputs.append(helper.make_tensor_value_info(key, vi.type.tensor_type.elem_type, list(t.shape)))
            bound.append(key)
    nodes = [n for n in g.node if id(n) not in removed_nodes]
    del g.node[:]
    g.node.extend(nodes)
    del g.input[:]
    g.input.extend(kept_inputs)
    model.ir_version = IR_VERSION
    _check_static(model, graph)
    graph = GraphDef(graph.name, graph.kind, graph.inputs, graph.outputs, bound, graph.step, graph.baked)
    return model, graph


def _swaps_2d(node: onnx.NodeProto) -> bool:
    """A Transpose of a 2-D tensor that swaps its axes (explicit perm [1, 0], or none: reversed)."""
    perms = [list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"]
    return perms in ([[1, 0]], [])


def _check_static(model: onnx.ModelProto, graph: GraphDef) -> None:
    want = {s.name: s for s in [*graph.inputs, *graph.outputs]}
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise ExportError(f"{graph.name}: {vi.name} has a symbolic dimension; every graph must be static")
        spec: TensorSpec | None = want.get(vi.name)
        if spec is not None and tuple(d.dim_value for d in dims) != spec.shape:
            raise ExportError(f"{graph.name}: {vi.name} exported as {[d.dim_value for d in dims]}, "
                              f"expected {list(spec.shape)}")
        elem = vi.type.tensor_type.elem_type
        if spec is not None and elem != _ONNX_TYPES[spec.dtype]:
            raise ExportError(f"{graph.name}: {vi.name} exported as {onnx.TensorProto.DataType.Name(elem)}, "
                              f"expected {spec.dtype}")
    missing = [s.name for s in graph.inputs if s.name not in {i.name for i in model.graph.input}]
    if missing:
        raise ExportError(f"{graph.name}: inputs {missing} were optimised away; the graph would not bind them")


def check(model: onnx.ModelProto) -> None:
    """onnx.checker with full shape/type inference (custom schemas must be registered first)."""
    onnx.checker.check_model(model, full_check=True)


def serialize(model: onnx.ModelProto) -> bytes:
    buf = io.BytesIO()
    onnx.save_model(model, buf)
    return buf.getvalue()


def export_graph(module: nn.Module, graph: GraphDef, weights: dict[str, torch.Tensor],
                 translation_table: dict | None = None,
                 before_check: Callable[[], None] | None = None) -> tuple[bytes, GraphDef]:
    model = trace(module, graph, weights, translation_table)
    model, graph = finalize(model, graph, weights)
    if before_check is not None:
        before_check()
    check(model)
    return serialize(model), graph
