"""Reading ONNX graphs (walkers, declared types, attributes, build-time constants), shared by the TensorRT check
(``builder.onnx_check``) and the ONNX Runtime rewrite (``plugins.restore.ort_op``) so both reach the same nodes,
If/Loop/Scan bodies and local functions included. Imports only onnx and numpy, as the bottom layer must."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper


def walk_graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``g``, then every subgraph held in a node attribute, depth first in node and attribute order."""
    yield g
    for node in g.node:
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                yield from walk_graphs(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from walk_graphs(sub)


def walk_nodes(g: onnx.GraphProto, functions: Iterable[onnx.FunctionProto] = ()) -> Iterator[onnx.NodeProto]:
    """Every node of ``g`` and its subgraphs, then those of ``functions`` (pass ``model.functions``)."""
    for sub in walk_graphs(g):
        yield from sub.node
    for f in functions:
        yield from f.node


def all_initializers(g: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    for sub in walk_graphs(g):
        yield from sub.initializer


def value_dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    """A value's declared shape: ints, symbolic names, "?" for an unnamed dim; [] when none is declared."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def value_types(g: onnx.GraphProto) -> tuple[dict[str, int], dict[str, list]]:
    """Element type and shape, by name, of every tensor ``g`` and its subgraphs declare or hold in a Constant."""
    types: dict[str, int] = {}
    shapes: dict[str, list] = {}
    for sub in walk_graphs(g):
        for vi in [*sub.input, *sub.output, *sub.value_info]:
            if vi.type.HasField("tensor_type"):
                types[vi.name] = vi.type.tensor_type.elem_type
                shapes[vi.name] = value_dims(vi)
        for node in sub.node:
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.type == AttributeProto.TENSOR:
                        types.setdefault(node.output[0], a.t.data_type)
                        shapes.setdefault(node.output[0], list(a.t.dims))
    return types, shapes


def without_weight_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large initializers keep their type and dims but no data (what shape inference needs)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for sub in walk_graphs(m.graph):
        for t in sub.initializer:
            if t.ByteSize() > 2**16:
                for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                          "string_data"):
                    t.ClearField(f)
    return m


_MODEL_GRAPH, _GRAPH_INPUT, _GRAPH_OUTPUT = 7, 11, 12  # field numbers in onnx.proto (ModelProto, GraphProto)


class UnreadableModel(ValueError):
    """A file that is not a well-formed serialized ONNX model."""


def interface(path: str | os.PathLike) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    """The declared inputs and outputs of the main graph of the ONNX model at ``path``, read without parsing
    its nodes or initializers: the wire format is walked over a memory map, so a decoder that holds hundreds
    of MB of weights costs what its few interface entries cost. Raises ``UnreadableModel``."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise UnreadableModel("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                inputs, outputs = [], []
                for field, a, b in _fields(buf, 0, size):
                    if field != _MODEL_GRAPH:
                        continue
                    for gfield, ga, gb in _fields(buf, a, b):
                        if gfield in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                            vi = onnx.ValueInfoProto.FromString(bytes(buf[ga:gb]))
                            (inputs if gfield == _GRAPH_INPUT else outputs).append(vi)
            except Exception as err:  # noqa: BLE001  (protobuf's DecodeError and its relatives: not a model)
                raise UnreadableModel(str(err) or type(err).__name__) from None
            finally:
                buf.release()
    return inputs, outputs


def _varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise UnreadableModel(f"a malformed varint at byte {i}")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(buf: memoryview, i: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of every length-delimited field of the message in ``buf[i:end]``; the
    other wire types are skipped, groups and lengths past the end refused."""
    while i < end:
        tag, i = _varint(buf, i, end)
        wire = tag & 7
        if wire == 0:
            _, i = _varint(buf, i, end)
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise UnreadableModel(f"field {tag >> 3} at byte {i} runs past the end of its message")
            yield tag >> 3, i, i + n
            i += n
        else:
            raise UnreadableModel(f"wire type {wire} at byte {i} is not one ONNX writes")
    if i != end:
        raise UnreadableModel("the last field runs past the end of the file")


def attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def attr_type_name(a: onnx.AttributeProto) -> str:
    return AttributeProto.AttributeType.Name(a.type)


def elem_type_name(t: int) -> str:
    return helper.tensor_dtype_to_string(t).replace("TensorProto.", "").lower()


def constant_value(attrs: dict[str, onnx.AttributeProto]) -> np.ndarray | None:
    """The value of a Constant node, given its attributes by name; None for a kind not read here."""
    if "value" in attrs:
        try:
            return numpy_helper.to_array(attrs["value"].t)
        except Exception:  # noqa: BLE001
            return None
    for key, read in (("value_int", lambda a: a.i), ("value_ints", lambda a: list(a.ints)),
                      ("value_float", lambda a: a.f), ("value_floats", lambda a: list(a.floats))):
        if key in attrs:
            return np.array(read(attrs[key]), dtype=np.int64 if "int" in key else np.float32)
    return None


@dataclass
class ConstantFolder:
    """A tensor's value when it is known before the graph runs: an initializer, a Constant, or Identity/Cast/
    Reshape/Flatten/(Un)Squeeze of those. ``producer``: output name -> (node, index); ``base_dir``: external data."""

    initializers: dict[str, onnx.TensorProto]
    producer: dict[str, tuple[onnx.NodeProto, int]]
    base_dir: str = ""

    def value(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The value of a build-time constant tensor, else None."""
        if depth > 16:
            return None
        t = self.initializers.get(name)
        if t is not None:
            try:
                return numpy_helper.to_array(t, self.base_dir)
            except Exception:  # noqa: BLE001  (external data out of reach: not provably constant here)
                return None
        node = self.producer.get(name, (None, -1))[0]
        if node is None:
            return None
        op, attrs = node.op_type, {a.name: a for a in node.attribute}
        if op == "Constant":
            return constant_value(attrs)
        if op not in ("Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten") or not node.input:
            return None
        x = self.value(node.input[0], depth + 1)
        if x is None:
            return None
        try:
            return self._fold(node, attrs, x, depth)
        except Exception:  # noqa: BLE001  (a shape or type numpy cannot follow: not provably constant here)
            return None

    def _fold(self, node: onnx.NodeProto, attrs: dict, x: np.ndarray, depth: int) -> np.ndarray | None:
        op = node.op_type
        if op == "Identity":
            return x
        if op == "Cast":
            return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"].i))
        if op == "Flatten":
            axis = attrs["axis"].i if "axis" in attrs else 1
            axis = axis + x.ndim if axis < 0 else axis
            return x.reshape(int(np.prod(x.shape[:axis])), -1)
        second = node.input[1] if len(node.input) > 1 and node.input[1] else ""
        if op == "Reshape":
            shape = self.value(second, depth + 1) if second else None
            if shape is None:
                return None
            allowzero = attrs["allowzero"].i if "allowzero" in attrs else 0
            dims = [x.shape[j] if d == 0 and not allowzero else int(d) for j, d in enumerate(shape.tolist())]
            return x.reshape(dims)
        if second:
            axes_arr = self.value(second, depth + 1)
            if axes_arr is None:
                return None
            axes = [int(a) for a in axes_arr.reshape(-1)]
        else:
            axes = list(attrs["axes"].ints) if "axes" in attrs else []
        if op == "Squeeze":
            return np.squeeze(x, axis=tuple(axes)) if axes else np.squeeze(x)
        rank = x.ndim + len(axes)
        for a in sorted(a + rank if a < 0 else a for a in axes):
            x = np.expand_dims(x, a)
        return x
