"""What one graph holds in memory while a session keeps it and while it runs, read from the graph itself.

Every graph of an artifact is fully static, so the size of each tensor it makes is known before it runs.
Walking the nodes in the order they run with each tensor alive from the node that makes it to the last node
that reads it gives the graph's working memory: the most bytes alive at once (the outputs a node writes while
its inputs are still held). The order matters as much as the sizes: ONNX Runtime does not run a graph in its
file's order, and may run work on state alone long before it is needed (``stream_last``).
This is what a session without an arena (``runtime.backends.onnxruntime``) allocates at its peak, less its
kernels' own temporaries (the plan adds a measured allowance). ``resident`` is what the session keeps for its
life: its initializers and the values a runtime folds from them once at load (nodes whose inputs are all
constants).

Not counted, because other plan items own them: the graph's inputs (weights, the KV cache, the feeds) and
the outputs a backend binds to memory it keeps (new K/V written into the cache, FastVAR's restore caches).
Reshape-like nodes share their input's buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from fastvar.onnx_graph import value_types

ALIAS_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
_BYTES = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8,
          TensorProto.INT64: 8, TensorProto.INT32: 4, TensorProto.INT16: 2, TensorProto.INT8: 1,
          TensorProto.UINT8: 1, TensorProto.BOOL: 1, TensorProto.UINT64: 8, TensorProto.UINT32: 4}


class GraphMemoryError(ValueError):
    """A graph whose tensor sizes cannot be known from the graph (a dynamic or undeclared shape)."""


@dataclass(frozen=True)
class GraphMemory:
    working: int  # the most bytes of intermediate (and unbound output) tensors alive at once during a run
    resident: int  # initializers and load-time folded constants the session keeps for its life
    peak_node: str  # the node at which ``working`` is reached (for the plan's note)


def _nbytes(name: str, types: dict[str, int], shapes: dict[str, list], graph: str) -> int:
    dims = shapes.get(name)
    if name not in types or dims is None:
        raise GraphMemoryError(f"{graph}: tensor {name!r} has no declared type and shape; the memory plan needs "
                               "every tensor of a graph static (re-export the artifact)")
    n = 1
    for d in dims:
        if not isinstance(d, int) or d < 0:
            raise GraphMemoryError(f"{graph}: tensor {name!r} has a dynamic dimension {d!r}; the memory plan needs "
                                   "every tensor of a graph static")
        n *= d
    return n * _BYTES.get(types[name], 8)


def stream_last(model: onnx.ModelProto, stream_inputs: set[str] | frozenset[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes that do not depend on ``stream_inputs`` (work on state alone: a restore
    cache's upsampling, a weight's reshape) come first, in their order, then the rest in theirs; ``model``
    itself when it takes none of ``stream_inputs``. The same graph, so the same results.

    Two uses. ONNX Runtime's schedulers run much of such work before the blocks that need it (measured on
    infinity-2b at 1024: step 10 held 3.1 GiB, against 0.64 GiB of tensors alive at once in the file's order;
    the 150 upsampling products of the pruned blocks' restore caches alone are 3.0 GiB), so the memory plan
    walks this order, every state value made first and held until its last use: the most a scheduler can
    hold. And ONNX Runtime given this file holds less than given the exported one (2.1 GiB there)."""
    g = model.graph
    if not stream_inputs & {i.name for i in g.input}:
        return model
    on_stream = set(stream_inputs)
    first, rest = [], []
    for n in g.node:
        if any(x in on_stream for x in n.input):
            on_stream.update(o for o in n.output if o)
            rest.append(n)
        else:
            first.append(n)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(first + rest)
    return out


def graph_memory(model: onnx.ModelProto, name: str = "graph",
                 bound: Callable[[str], bool] = lambda _n: False) -> GraphMemory:
    """The working and resident memory of ``model``'s main graph, node by node in the file's order (pass
    ``stream_last(model, ...)`` for the order ONNX Runtime may hold the most in).

    ``bound(name)`` says which graph outputs a backend writes into memory owned elsewhere (not counted)."""
    g = model.graph
    types, shapes = value_types(g)
    for t in g.initializer:
        types.setdefault(t.name, t.data_type)
        shapes.setdefault(t.name, list(t.dims))
    inputs = {v.name for v in g.input}
    outputs = {v.name for v in g.output}
    constant = {t.name for t in g.initializer} - inputs
    resident = sum(_nbytes(t.name, types, shapes, name) for t in g.initializer if t.name not in inputs)

    # a node whose inputs are all constants is folded at load: its outputs are constants the session keeps
    folded: set[str] = set()
    for node in g.node:
        if all(i in constant for i in node.input if i):
            constant.update(o for o in node.output if o)
            folded.update(o for o in node.output if o)
    run_nodes = [n for n in g.node if not all(o in folded for o in n.output if o)]
    read_at_run = {i for n in run_nodes for i in n.input if i}
    resident += sum(_nbytes(v, types, shapes, name) for v in folded if v in read_at_run or v in outputs)

    # buffers: an alias shares its input's buffer; a buffer lives until the last read of any of its names
    buffer_of: dict[str, str] = {}
    size: dict[str, int] = {}
    last_read: dict[str, int] = {}
    for step, node in enumerate(run_nodes):
        for o in node.output:
            if not o:
                continue
            src = node.input[0] if node.op_type in ALIAS_OPS and node.input else None
            if src is not None and (src in buffer_of or src in inputs or src in constant):
                buffer_of[o] = buffer_of.get(src, "")  # "": aliases memory the graph does not own
            else:
                counted = o not in constant and not (o in outputs and bound(o))
                buffer_of[o] = o
                size[o] = _nbytes(o, types, shapes, name) if counted else 0
        for i in node.input:
            b = buffer_of.get(i)
            if b:
                last_read[b] = step
    for o in outputs:  # an output lives to the end of the run
        if buffer_of.get(o):
            last_read[buffer_of[o]] = len(run_nodes)
    live = peak = 0
    peak_node = ""
    for step, node in enumerate(run_nodes):
        for o in node.output:
            if o and buffer_of.get(o) == o:
                live += size[o]
        if live > peak:
            peak, peak_node = live, node.name or node.op_type
        for b in {buffer_of.get(i) for i in node.input}:
            if b and last_read.get(b) == step:
                live -= size[b]
        for o in node.output:  # made and never read: freed at once
            if o and buffer_of.get(o) == o and o not in last_read:
                live -= size[o]
    return GraphMemory(working=peak, resident=resident, peak_node=peak_node)
