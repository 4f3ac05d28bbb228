"""One graph from traced parts: each part's traced form is stamped in with its own names.

A form is traced once (``Part.definition`` / ``Part.module``), under the names of the first part that has
it (its *representative*). Stamping it for another part with the same key renames, position by position,
the representative's data inputs, outputs and weights to that part's; every other value and node is
named by its position in the form under the part's label, so stamped copies never collide and a graph's
bytes do not depend on which graph first traced a form. Constants are shared by all copies and named by
their content. The result is what a whole-graph trace gives: the same inputs, outputs and operations per
block, in the graph's order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import onnx
from onnx import helper

from fastvar.export.graphs import GraphDef
from fastvar.export.onnx_export import IR_VERSION, WEIGHT_PREFIX, ExportError, check, finalize, serialize, trace
from fastvar.export.step_parts import Part


class Form:
    """A traced part: its ONNX graph under the representative's names."""

    def __init__(self, model: onnx.ModelProto, representative: Part, label: str) -> None:
        g = model.graph
        for node in g.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise ExportError(f"{label}: node {node.name} ({node.op_type}) holds a subgraph, which stamping does "
                                  "not rename")
        self.model, self.rep, self.label = model, representative, label
        self.produced = {o for n in g.node for o in n.output}
        missing = [s.name for s in representative.outputs if s.name not in self.produced]
        if missing:
            raise ExportError(f"{label}: outputs {missing} are not computed by any node (an output that is an input "
                              "cannot be stamped)")
        # Values inside the form are renamed by position (v0, v1, ... in node order), so a stamped graph does
        # not depend on the exporter's names for them, nor on which graph first traced the form.
        interface = {s.name for s in [*representative.inputs, *representative.outputs]}
        interface |= {WEIGHT_PREFIX + w for w in representative.weights} | {t.name for t in g.initializer}
        self.internal: dict[str, str] = {}
        for node in g.node:
            for o in node.output:
                if o and o not in interface:
                    self.internal.setdefault(o, f"v{len(self.internal)}")

    def names_for(self, part: Part) -> dict[str, str]:
        """Representative name -> ``part``'s name, for every interface name of the form."""
        rep = self.rep
        if part.key != rep.key or len(part.inputs) != len(rep.inputs) or len(part.outputs) != len(rep.outputs) \
                or len(part.weights) != len(rep.weights):
            raise ExportError(f"{part.label} does not have the form of {rep.label}")
        out = {a.name: b.name for a, b in zip(rep.inputs, part.inputs, strict=True)}
        out.update((a.name, b.name) for a, b in zip(rep.outputs, part.outputs, strict=True))
        out.update((WEIGHT_PREFIX + a, WEIGHT_PREFIX + b) for a, b in zip(rep.weights, part.weights, strict=True))
        for a, b in zip([*rep.inputs, *rep.outputs], [*part.inputs, *part.outputs], strict=True):
            if (a.shape, a.dtype) != (b.shape, b.dtype):
                raise ExportError(f"{part.label}: {b.name} is {b.dtype}{list(b.shape)}, but its form has "
                                  f"{a.dtype}{list(a.shape)}")
        return out


def compose(d: GraphDef, stamps: list[tuple[Part, Form]]) -> onnx.ModelProto:
    """The graph ``d`` from its parts in order, each with the form traced for its key.

    Weight inputs keep the tracing prefix (``finalize`` binds them), ordered as ``d.weights``."""
    nodes: list[onnx.NodeProto] = []
    value_info: dict[str, onnx.ValueInfoProto] = {}
    boundary: dict[str, onnx.ValueInfoProto] = {}  # every renamed interface value, with its traced type
    initializers: dict[str, onnx.TensorProto] = {}
    shared: dict[tuple, str] = {}  # (form, constant) or constant content -> its name in the graph
    opsets: dict[str, int] = {}
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    for part, form in stamps:
        names = form.names_for(part)
        g = form.model.graph
        for init in g.initializer:
            names[init.name] = _constant_name(form, init, shared, initializers)
        prefix = part.label + "/"
        for vi in [*g.input, *g.output]:
            if vi.name in names:
                boundary.setdefault(names[vi.name], _renamed_info(vi, names[vi.name]))
        names.update((old, prefix + new) for old, new in form.internal.items())
        rename = _renamer(names, prefix)
        for j, node in enumerate(g.node):
            n = onnx.NodeProto()
            n.CopyFrom(node)
            n.name = f"{prefix}n{j}"
            n.input[:] = [rename(x) for x in node.input]
            n.output[:] = [rename(x) for x in node.output]
            nodes.append(n)
        for vi in g.value_info:
            new = rename(vi.name)
            if new not in boundary:
                value_info.setdefault(new, _renamed_info(vi, new))
        for op in form.model.opset_import:
            if opsets.setdefault(op.domain, op.version) != op.version:
                raise ExportError(f"{d.name}: parts import {op.domain or 'ai.onnx'} at versions "
                                  f"{opsets[op.domain]} and {op.version}")
        for f in form.model.functions:
            functions.setdefault((f.domain, f.name), f)
    inputs = [_interface(d.name, boundary, s.name, "input") for s in d.inputs]
    weight_inputs = [boundary[WEIGHT_PREFIX + w] for w in d.weights if WEIGHT_PREFIX + w in boundary]
    outputs = [_interface(d.name, boundary, s.name, "output") for s in d.outputs]
    declared = {v.name for v in [*inputs, *outputs]}
    between = [vi for name, vi in boundary.items() if name not in declared and not name.startswith(WEIGHT_PREFIX)]
    graph = helper.make_graph(nodes, d.name, [*inputs, *weight_inputs], outputs, list(initializers.values()),
                              value_info=[*between, *value_info.values()])
    first = stamps[0][1].model
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(k, v) for k, v in opsets.items()],
                              functions=list(functions.values()), producer_name=first.producer_name,
                              producer_version=first.producer_version)
    model.ir_version = IR_VERSION
    return model


def _renamer(names: dict[str, str], prefix: str) -> Callable[[str], str]:
    def rename(name: str) -> str:
        return names.get(name) or (prefix + name if name else name)  # "" is an omitted optional input

    return rename


def _interface(graph: str, boundary: dict[str, onnx.ValueInfoProto], name: str, what: str) -> onnx.ValueInfoProto:
    if name not in boundary:
        raise ExportError(f"{graph}: {what} {name} is not an {what} of any part; the graph would not "
                          f"{'bind' if what == 'input' else 'produce'} it")
    return boundary[name]


def _renamed_info(vi: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    out.name = name
    return out


def _constant_name(form: Form, init: onnx.TensorProto, shared: dict[tuple, str],
                   initializers: dict[str, onnx.TensorProto]) -> str:
    """One name per constant of a form (all its stamps read it), and one per distinct content."""
    own = (id(form), init.name)
    if own in shared:
        return shared[own]
    t = onnx.TensorProto()
    t.CopyFrom(init)
    t.name = ""
    digest = hashlib.sha256(t.SerializeToString(deterministic=True)).hexdigest()
    content = ("content", digest)
    name = shared.get(content)
    if name is None:  # named by content: the same in every graph, whichever form held it first
        name = t.name = f"const_{digest[:16]}"
        initializers[name] = t
        shared[content] = name
    shared[own] = name
    return name


class Forms:
    """The forms traced so far in one export, by key: a form traced for one graph serves every later graph
    (a step graph and its validation variant share their embedding, head and unpruned blocks)."""

    def __init__(self, model, weights: dict, translation_table: dict | None) -> None:
        self.model, self.weights, self.table = model, weights, translation_table
        self._forms: dict[tuple, Form] = {}
        self.traced = 0
        self.stamped = 0

    def form(self, graph: str, part: Part) -> Form:
        found = self._forms.get(part.key)
        if found is None:
            traced = trace(part.module(self.model), part.definition(graph), self.weights, self.table)
            found = self._forms[part.key] = Form(traced, part, f"form{len(self._forms)}")
            self.traced += 1
        return found


def export_stamped(parts: list[Part], d: GraphDef, forms: Forms,
                   before_check: Callable[[], None] | None = None) -> tuple[bytes, GraphDef]:
    """``export_graph`` for a graph made of parts: trace what ``forms`` lacks, stamp, then the same finish."""
    model = compose(d, [(p, forms.form(d.name, p)) for p in parts])
    forms.stamped += len(parts)
    model, final = finalize(model, d, forms.weights)
    if before_check is not None:
        before_check()
    check(model)
    return serialize(model), final
