"""A graph file's real interface against what its manifest records and what the runtime feeds.

A manifest's sha256 proves a graph file is the one the manifest names, not that the file and its record
agree: a graph whose input was renamed, then re-hashed into the manifest, passed every check and failed at
run time. ``interface_problems`` reads the inputs and outputs the ONNX file declares (names, element types,
static shapes; nodes and weights are not parsed) and compares them with the ``GraphRecord`` (its data
tensors, then its weights, which are inputs too) and with the names ``fastvar.graph_names`` says the
backends feed and read. ``Artifact.verify`` runs it for every graph, so every command that verifies an
artifact (run, validate, build) refuses such a graph, and the export rewrites one instead of keeping it.
"""

from __future__ import annotations

import os

from onnx import TensorProto

from fastvar import graph_names as gn
from fastvar.manifest_schema import GraphRecord
from fastvar.onnx_graph import UnreadableModel, elem_type_name, interface, value_dims

_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.BFLOAT16: "bfloat16", TensorProto.FLOAT16: "float16",
           TensorProto.BOOL: "bool", TensorProto.INT64: "int64", TensorProto.INT32: "int32",
           TensorProto.UINT8: "uint8"}


def _declared(vi) -> tuple[str, list]:
    """A value's element type (the manifest's spelling where it has one) and its declared dims."""
    if not vi.type.HasField("tensor_type"):
        return "not a tensor", []
    elem = vi.type.tensor_type.elem_type
    dtype = _DTYPES.get(elem) or elem_type_name(elem)
    if not vi.type.tensor_type.HasField("shape"):
        return dtype, ["no shape"]
    return dtype, value_dims(vi)


def _compare(side: str, declared: list, recorded: dict[str, tuple[str, tuple[int, ...]] | None]) -> list[str]:
    """Tensor by tensor: what the file declares on one side (inputs/outputs) against what the manifest records
    (None: a weight, whose type and shape the weight store holds)."""
    problems = []
    names = [vi.name for vi in declared]
    seen = set()
    for vi in declared:
        if vi.name in seen:
            problems.append(f"{side[:-1]} {vi.name!r} is declared twice in the graph file")
            continue
        seen.add(vi.name)
        if vi.name not in recorded:
            problems.append(f"the graph file has {side[:-1]} {vi.name!r}, which the manifest does not record")
            continue
        want = recorded[vi.name]
        dtype, dims = _declared(vi)
        if want is None:
            continue
        if dtype != want[0] or dims != list(want[1]):
            problems.append(f"{side[:-1]} {vi.name!r} is {dtype} {dims} in the graph file, the manifest records "
                            f"{want[0]} {list(want[1])}")
    problems += [f"the manifest records {side[:-1]} {n!r}, which the graph file does not have"
                 for n in recorded if n not in names]
    return problems


def interface_problems(rec: GraphRecord, path: str | os.PathLike, depth: int, family: str) -> list[str]:
    """Every difference between the graph file at ``path``, its manifest record ``rec`` and the names the
    runtime feeds a ``rec.kind`` graph of a ``depth``-block ``family`` model, one sentence each; [] when they
    agree."""
    try:
        inputs, outputs = interface(path)
    except (UnreadableModel, OSError) as err:
        return [f"{path} is not a readable ONNX model ({err})"]
    recorded_in: dict = {t.name: (t.dtype, t.shape) for t in rec.inputs}
    problems = [f"the manifest records {w!r} as both a data input and a weight" for w in rec.weights
                if w in recorded_in]
    recorded_in.update((w, None) for w in rec.weights if w not in recorded_in)
    problems += _compare("inputs", inputs, recorded_in)
    problems += _compare("outputs", outputs, {t.name: (t.dtype, t.shape) for t in rec.outputs})
    data_in, data_out = [t.name for t in rec.inputs], [t.name for t in rec.outputs]
    for side, names, output in (("input", data_in, False), ("output", data_out, True)):
        what = "feeds" if not output else "reads"
        problems += [f"{side} {n!r} is no {side} the runtime {what} a {rec.kind} graph"
                     for n in gn.unknown_names(rec.kind, names, output, depth)]
        problems += [f"the runtime {what} {side} {n!r}, which the graph lacks"
                     for n in gn.missing_names(rec.kind, names, output, family)]
    if rec.kind == "decoder" and len(data_in) != 1:
        problems.append(f"a decoder takes one input (the codes), the manifest records {len(data_in)}")
    return problems
