"""Static TensorRT-compatibility check of an artifact's ONNX graphs: runs on any CPU, before any engine build.

``fastvar-build`` calls :func:`require_compatible` first, so a graph TensorRT's ONNX parser would refuse (or
would silently turn into something else) is reported with the graph, the node and the limit, in seconds,
instead of minutes into a build on the GPU machine. The rules judge by the cited facts of
:mod:`fastvar.builder.trt_facts` (operators.md, the parser sources, NvInfer.h, CHANGELOG.md).

Models are loaded without their external data (the step graphs bind their weights as inputs; only the VAE
decoder holds initializers), so the check needs little time and memory whatever the model size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, helper

from fastvar.builder import trt_facts as facts
from fastvar.manifest import Artifact, ArtifactError
from fastvar.onnx_graph import (
    ConstantFolder,
    all_initializers,
    attr,
    attr_type_name,
    elem_type_name,
    value_dims,
    value_types,
    walk_nodes,
    without_weight_data,
)

__all__ = ["IncompatibleGraphs", "Violation", "check_artifact", "check_model", "format_violations",
           "require_compatible"]

_TWO_GB = 2**31 - 2**24  # leave headroom below protobuf's 2 GiB serialization limit

# ---- results ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Violation:
    graph: str  # graph name in the manifest (e.g. "step_07") or file name
    node: str  # node name ("" for graph-level findings)
    op: str  # op_type ("" for graph-level)
    rule: str  # short id: "topk-k", "zero-dim", "plugin-attr", "unsupported-op", "precision", "ir-version", ...
    message: str  # what is wrong and what is accepted, specific enough to fix it

    def __str__(self) -> str:
        where = f"node {self.node} ({self.op})" if self.node else "graph"
        return f"{self.graph}: {where} [{self.rule}] {self.message}"


class IncompatibleGraphs(ValueError):
    """Graphs TensorRT would refuse or change: the message lists every violation, one a line, by graph."""

    def __init__(self, found: dict[str, list[Violation]], where: str = "") -> None:
        self.violations = {g: list(v) for g, v in found.items() if v}
        super().__init__(format_violations(self.violations, where))


def format_violations(found: dict[str, list[Violation]], where: str = "") -> str:
    found = {g: v for g, v in found.items() if v}
    n = sum(len(v) for v in found.values())
    head = f"{n} TensorRT incompatibilit{'y' if n == 1 else 'ies'} in {len(found)} graph(s)"
    lines = [head + (f" of {where}" if where else "") + ":"]
    for g, vs in found.items():
        lines.append(f"graph {g}:")
        for v in vs:
            where_v = f"node {v.node} ({v.op})" if v.node else "graph"
            lines.append(f"  {where_v} [{v.rule}]: {v.message}")
    return "\n".join(lines)


# ---- the check -------------------------------------------------------------------------------------------------

def check_model(model: onnx.ModelProto | str | os.PathLike, *, precision: str, graph: str = "") -> list[Violation]:
    """Every TensorRT incompatibility of one ONNX model; ``precision`` is the artifact's (fp32, bf16, fp16).

    A path is loaded without external data (its directory resolves a TopK's K if that lives outside).
    """
    if precision not in facts.PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(facts.PRECISIONS)}")
    base_dir = ""
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        graph = graph or path.name
        try:
            model = onnx.load(str(path), load_external_data=False)
        except DecodeError as err:
            raise ValueError(f"{path} is not a readable ONNX model ({err}); re-run fastvar-export") from None
        base_dir = str(path.parent)
    return _Checker(model, precision, graph, base_dir).run()


def check_artifact(art: Artifact) -> dict[str, list[Violation]]:
    """Every graph the manifest lists (all kinds, validation variants included) -> its violations."""
    if not art.manifest.graphs:
        raise ArtifactError(f"{art.root}: the manifest lists no graphs; re-run fastvar-export")
    out: dict[str, list[Violation]] = {}
    for name in art.manifest.graphs:
        path = art.graph_path(name)
        if not path.is_file():
            out[name] = [Violation(name, "", "", "file", f"{path} is missing; re-run fastvar-export on {art.root}")]
            continue
        out[name] = check_model(path, precision=art.manifest.precision, graph=name)
    return out


def require_compatible(art: Artifact) -> None:
    """Raise :class:`IncompatibleGraphs` naming every graph, node and limit when any graph fails a rule."""
    found = check_artifact(art)
    if any(found.values()):
        raise IncompatibleGraphs(found, str(art.root))


@dataclass
class _Checker:
    model: onnx.ModelProto
    precision: str
    graph: str
    base_dir: str
    found: list[Violation] = field(default_factory=list)

    def add(self, node: onnx.NodeProto | None, rule: str, message: str, index: int = -1) -> None:
        where = ("", "") if node is None else (_node_name(node, index), node.op_type)
        self.found.append(Violation(self.graph, *where, rule, message))

    def run(self) -> list[Violation]:
        g = self.model.graph
        self.functions = {(f.domain, f.name) for f in self.model.functions}
        self.opset = self._check_versions()
        inferred = self._infer()
        self.types, self.shapes = value_types(inferred.graph)
        for t in all_initializers(g):
            self.types[t.name] = t.data_type
            self.shapes[t.name] = list(t.dims)
        self.io = {vi.name for vi in [*g.input, *g.output]}
        nodes = list(walk_nodes(g, self.model.functions))
        self.producer = {o: (n, i) for i, n in enumerate(nodes) for o in n.output if o}
        self.initializers = {t.name: t for t in all_initializers(g)}
        self.constants = ConstantFolder(self.initializers, self.producer, self.base_dir)
        self._check_zero_dims(g)
        self._check_types()
        for i, node in enumerate(nodes):
            self._check_node(node, i)
        return self.found

    # -- rule 6 ---------------------------------------------------------------------------------------------
    def _check_versions(self) -> int:
        """IR and opset: TensorRT 10.x reads opsets 9..20 (operators.md), IR <= 10 (the ONNX it is built with).

        ModelImporter.cpp importModel warns below opset 7 and otherwise takes any number; the support table only
        vouches for 9..20. An IR older than the opset needs (onnx.helper.VERSION_TABLE) is malformed.
        """
        m = self.model
        default = [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")]
        opset = default[0] if default else 0
        if not default:
            self.add(None, "opset", "the model imports no default-domain (ai.onnx) opset; TensorRT reads opsets "
                                    f"{facts.MIN_OPSET}..{facts.MAX_OPSET} (onnx-tensorrt operators.md)")
        elif not facts.MIN_OPSET <= opset <= facts.MAX_OPSET:
            self.add(None, "opset", f"default-domain opset {opset} is outside {facts.MIN_OPSET}..{facts.MAX_OPSET}, "
                                    "the range onnx-tensorrt's operators.md (TensorRT 10) vouches for; export with "
                                    "opset 20")
        if m.ir_version > facts.MAX_IR_VERSION:
            self.add(None, "ir-version", f"IR version {m.ir_version} is newer than {facts.MAX_IR_VERSION}, the "
                                         "newest IR of the ONNX release TensorRT's parser is built against "
                                         "(1.16/1.17); set "
                                         f"model.ir_version = {facts.MAX_IR_VERSION} (the exporter writes 10)")
        if default:
            try:
                need = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
            except ValueError:
                need = 0
            if m.ir_version < need:
                self.add(None, "ir-version", f"IR version {m.ir_version} is older than opset {opset} needs "
                                             f"(IR >= {need}); set model.ir_version = {facts.MAX_IR_VERSION}")
        return opset

    def _infer(self) -> onnx.ModelProto:
        if any(n.domain == "fastvar" for n in walk_nodes(self.model.graph, self.model.functions)):
            from fastvar.plugins.restore.onnx_op import register_schema  # the plugin's output types and shapes

            register_schema()
        m = self.model
        if m.ByteSize() > _TWO_GB:  # inference needs initializers' types and dims only
            m = without_weight_data(m)
        try:
            return onnx.shape_inference.infer_shapes(m, check_type=False, strict_mode=False, data_prop=False)
        except Exception as err:  # noqa: BLE001  (reported, and the checks go on with the declared types)
            self.add(None, "shape-inference", f"ONNX shape inference fails ({type(err).__name__}: {err}); "
                                              "TensorRT's parser would meet the same inconsistency")
            return m

    # -- rule 2 ---------------------------------------------------------------------------------------------
    def _check_zero_dims(self, g: onnx.GraphProto) -> None:
        """No zero-size dimension anywhere. TensorRT can carry empty tensors (NvInfer.h documents them), but in
        a static per-scale artifact one only comes from an export bug: an empty slice, a step keeping 0 tokens, a
        0-length KV prefix that should have been left out. The engine would compute nothing there, or bind a
        zero-byte buffer, and the mistake would surface only at run time. Exception: an empty 1-D constant
        (initializer or Constant) is ONNX's spelling of an absent optional parameter (Resize's roi/scales)."""
        seen: set[str] = set()
        for kind, vis in (("input", g.input), ("output", g.output)):
            for vi in vis:
                dims = value_dims(vi)
                if 0 in dims:
                    seen.add(vi.name)
                    self.add(None, "zero-dim", f"graph {kind} {vi.name} has shape {dims} with a zero-size "
                                               "dimension; a static graph's tensors all hold elements (drop "
                                               "the tensor or fix the size it was exported with)")
        constants = {n.output[0] for n in walk_nodes(g) if n.op_type == "Constant" and n.output}
        for t in all_initializers(g):
            if list(t.dims) == [0]:
                seen.add(t.name)  # an absent optional parameter
            elif 0 in t.dims and t.name not in seen:
                seen.add(t.name)
                self.add(None, "zero-dim", f"initializer {t.name} has shape {list(t.dims)} with a zero-size "
                                           "dimension; drop it or give it elements")
        for name, dims in self.shapes.items():
            if name in seen or not dims or 0 not in dims or (name in constants and dims == [0]):
                continue
            seen.add(name)
            node, i = self.producer.get(name, (None, -1))
            self.add(node, "zero-dim", f"produces {name} of shape {dims} (a zero-size dimension); a static "
                                       "graph computes no empty tensor: fix the slice/reshape that empties it", i)

    # -- rule 5 + element types ----------------------------------------------------------------------------
    def _check_types(self) -> None:
        """Precision is the graph's: TensorRT 11 removed weak typing (NVIDIA/TensorRT python/src/infer/pyCore.cpp:
        BuilderFlag has no FP16/BF16; pyCoreDoc.h: "Strongly typed mode is always enabled"), so an fp32 artifact
        holds no float16/bfloat16 tensor and a bf16 one no float16. No float64 anywhere: the parser turns DOUBLE
        into FLOAT (convertDtype; operators.md "limited support ... cast DOUBLE down to FLOAT"), and Cast lists
        no DOUBLE. Element types outside convertDtype's set fail the import; UINT8 only as a network input or
        output (operators.md: "UINT8 is only supported as network input or output tensor types")."""
        allowed = facts.PRECISIONS[self.precision]
        names = {"fp32": "float32", "bf16": "float32 and bfloat16", "fp16": "float32 and float16"}
        for name, t in self.types.items():
            if not t:
                continue
            node, i = self.producer.get(name, (None, -1))
            what = f"output {name}" if node is not None else \
                f"initializer {name}" if name in self.initializers else f"graph input {name}"
            tname = elem_type_name(t)
            if t == TensorProto.DOUBLE:
                self.add(node, "precision", f"{what} is float64; TensorRT casts DOUBLE down to FLOAT (clamping to "
                                            "+-FLT_MAX), so the engine would not compute what the graph says: use "
                                            "float32", i)
            elif t in facts.FLOAT_TYPES and t not in allowed:
                self.add(node, "precision", f"{what} is {tname}, but the artifact's precision is {self.precision} "
                                            f"(TensorRT 11 builds the graph's types as they are); accepted float "
                                            f"types: {names[self.precision]}", i)
            elif t not in facts.PARSER_TYPES:
                self.add(node, "dtype", f"{what} is {tname}, which TensorRT's ONNX parser cannot represent "
                                        "(importerUtils.cpp convertDtype); use float32/bfloat16/float16, int32/"
                                        "int64, bool or int8", i)
            elif t == TensorProto.UINT8 and name not in self.io:
                self.add(node, "dtype", f"{what} is uint8 inside the graph; TensorRT takes UINT8 only as a network "
                                        "input or output (operators.md), reached through a Cast", i)

    # -- rules 1, 3, 4 -------------------------------------------------------------------------------------
    def _check_node(self, node: onnx.NodeProto, i: int) -> None:
        op, domain = node.op_type, node.domain
        standard = domain in ("", "ai.onnx") and onnx.defs.has(op)
        if (domain, op) in self.functions:
            return  # a local function: its body's nodes are walked like the graph's
        if standard:
            self._check_standard(node, i)
        elif domain in ("", "ai.onnx", "trt") and op in facts.PARSER_NATIVE:
            return
        elif domain in ("", "ai.onnx") and op in facts.SUPPORTED:  # ImageScaler etc.: parser importers, not in ONNX
            return
        else:
            self._check_plugin(node, i)

    def _check_standard(self, node: onnx.NodeProto, i: int) -> None:
        """Rule 4: only ops operators.md marks Y, with a type its "Supported Types" column lists, and the
        restrictions of its "Restrictions" column that can be decided without running the graph."""
        op = node.op_type
        if op in facts.UNSUPPORTED or op not in facts.SUPPORTED:
            why = "marked N (not supported) in" if op in facts.UNSUPPORTED else "absent from"
            self.add(node, "unsupported-op", f"{op} is {why} onnx-tensorrt's operator table (docs/operators.md, "
                                             "TensorRT 10); the parser would look for a plugin of that name and "
                                             "fail: express it with supported ops", i)
            return
        self._check_op_types(node, i)
        if op in facts.CONSTANT_INPUTS:
            idx, what = facts.CONSTANT_INPUTS[op]
            if len(node.input) > idx and node.input[idx] and self.constants.value(node.input[idx]) is None:
                self.add(node, "const-input", f"{what} input {node.input[idx]} is computed at run time; TensorRT "
                                              f"needs {op}'s {what} as an initializer or Constant (operators.md)", i)
        if op == "TopK":
            self._check_topk(node, i)
        restriction = _restriction(node)
        if restriction:
            self.add(node, "op-restriction", restriction + " (onnx-tensorrt operators.md)", i)

    def _check_op_types(self, node: onnx.NodeProto, i: int) -> None:
        op = node.op_type
        where = facts.TYPED_TENSOR.get(op, 0)
        if where is None:
            return
        names = []
        if where == "out":
            names = [node.output[0]] if node.output else []
        elif len(node.input) > where and node.input[where]:
            names = [node.input[where]]
        if op in ("Cast", "CastLike") and node.output:
            names.append(node.output[0])
        accepted = facts.SUPPORTED[op]
        for name in names:
            t = self.types.get(name)
            if t and t not in accepted and t in facts.PARSER_TYPES and t != TensorProto.DOUBLE:
                listed = ", ".join(sorted(elem_type_name(a) for a in accepted))
                self.add(node, "op-type", f"{name} is {elem_type_name(t)}; TensorRT's {op} takes {listed} "
                                          "(onnx-tensorrt operators.md): cast it first", i)

    def _check_topk(self, node: onnx.NodeProto, i: int) -> None:
        """Rule 1: TopK's K is a build-time constant no larger than 3840.

        NvInfer.h (ITopKLayer): only K up to 3840 is supported; a K fed as a tensor "larger than 3840 will result
        in a runtime error", so a K the check cannot read is refused too: it would fail only on the GPU, at run
        time. K is read through what the exporter emits (an initializer), a Constant, or Reshape/Unsqueeze/
        Squeeze/Cast/Identity of either. Opset < 10 carries K as attribute ``k``.
        """
        if self.opset and self.opset < 10:
            k_attr = [a.i for a in node.attribute if a.name == "k"]
            k, source = (k_attr[0] if k_attr else None), "attribute k"
        else:
            source = node.input[1] if len(node.input) > 1 else ""
            value = self.constants.value(source) if source else None
            k = int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None
        if k is None and source in self.initializers:
            self.add(node, "topk-k", f"K ({source}) is an initializer whose value cannot be read here (external "
                                     "data out of reach: check the model by its path); TensorRT takes k <= "
                                     f"{facts.TOPK_MAX}", i)
        elif k is None:
            self.add(node, "topk-k", f"K ({source or 'missing'}) is not a build-time constant; TensorRT needs it "
                                     f"known to hold it to k <= {facts.TOPK_MAX} (NvInfer.h ITopKLayer): make K an "
                                     "initializer", i)
        elif k > facts.TOPK_MAX:
            self.add(node, "topk-k", f"selects k = {k} ({source}), above TensorRT's TopK limit k <= {facts.TOPK_MAX} "
                                     "(NvInfer.h ITopKLayer::setK): prune more tokens at this step (keep at most "
                                     f"{facts.TOPK_MAX}) or build this graph for onnxruntime", i)
        elif k < 1:
            self.add(node, "topk-k", f"selects k = {k} ({source}); TensorRT's TopK takes 1 <= k <= {facts.TOPK_MAX}", i)

    def _check_plugin(self, node: onnx.NodeProto, i: int) -> None:
        """Rule 3: a node the parser hands to a plugin (ModelImporter.cpp parseNode: no built-in importer for
        its op_type, so FallbackPluginImporter, onnxOpImporters.cpp) must be one it can describe to the plugin.

        * Dispatch reads ``op_type`` only, so a plugin named like an ONNX op (or a parser-native TRT_ op) is
          imported as that op, whatever its domain.
        * The plugin is found by name, ``plugin_version`` and ``plugin_namespace`` string attributes (defaults
          "1" and ""): both must be present as STRING. Since 10.12 the namespace may also come from the node's
          domain (CHANGELOG.md), so a domain other than the namespace is ambiguous.
        * loadFields turns attributes into PluginFields: INT is narrowed to int32 (OnnxAttrs.cpp get<int32_t>,
          so a value outside int32 silently changes), INTS likewise element-wise; FLOAT(S), STRING(S) are kept;
          TENSOR only as f32/f16/bf16/f64/i8/i16/i32/string; every other attribute type fails the import.
        """
        op, attrs = node.op_type, {a.name: a for a in node.attribute}
        if onnx.defs.has(op) or op in facts.PARSER_NATIVE or op in facts.SUPPORTED:
            self.add(node, "plugin-name", f"plugin op_type {op} (domain {node.domain or 'ai.onnx'}) is also the "
                                          "name of a built-in ONNX/TensorRT op; the parser dispatches on op_type "
                                          "alone and would import the built-in op, not the plugin: rename it", i)
        for key in facts.PLUGIN_KEYS:
            a = attrs.get(key)
            if a is None:
                self.add(node, "plugin-attr", f"has no {key} attribute; TensorRT finds plugin {op} by name, "
                                              "plugin_version and plugin_namespace (STRING attributes): set it", i)
            elif a.type != AttributeProto.STRING:
                self.add(node, "plugin-attr", f"{key} is {attr_type_name(a)}; the parser reads it as a STRING", i)
        ns = attrs.get("plugin_namespace")
        if ns is not None and ns.type == AttributeProto.STRING and node.domain not in ("", "ai.onnx"):
            if ns.s.decode() != node.domain:
                self.add(node, "plugin-attr", f"plugin_namespace {ns.s.decode()!r} differs from domain "
                                              f"{node.domain!r}; TensorRT >= 10.12 also reads the namespace from "
                                              "the domain, so make them equal", i)
        for a in node.attribute:
            if a.name in facts.PLUGIN_KEYS:
                continue
            problem = _plugin_attr_problem(a)
            if problem:
                self.add(node, "plugin-attr", problem, i)


# ---- helpers ---------------------------------------------------------------------------------------------------

def _node_name(node: onnx.NodeProto, index: int) -> str:
    if node.name:
        return node.name
    out = node.output[0] if node.output else "?"
    return f"#{index} -> {out}" if index >= 0 else f"-> {out}"


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _restriction(node: onnx.NodeProto) -> str:
    """The first of the op's statically decidable operators.md restrictions it breaks, or ""."""
    op = node.op_type
    extra_outputs = [o for o in node.output[1:] if o]
    if op == "TopK" and attr(node, "sorted", 1) != 1:
        return "`sorted` must be 1"
    if op == "LayerNormalization" and extra_outputs:
        return f"only the first output Y is supported; {', '.join(extra_outputs)} must be unused"
    if op in ("MaxPool", "AveragePool", "LpPool"):
        if op == "MaxPool" and extra_outputs:
            return "the Indices output is unsupported"
        if any(d != 1 for d in attr(node, "dilations", [])):
            return "`dilations` must be empty or all ones"
        kernel = attr(node, "kernel_shape", [])
        if op != "LpPool" and len(kernel) not in (2, 3):
            return f"2D or 3D pooling only, kernel_shape is {list(kernel)}"
    if op == "Resize":
        mode = _text(attr(node, "mode", "nearest"))
        ctm = _text(attr(node, "coordinate_transformation_mode", "half_pixel"))
        nearest = _text(attr(node, "nearest_mode", "round_prefer_floor"))
        if mode not in ("nearest", "linear"):
            return f"Resize mode {mode!r}: supported are nearest, linear"
        if ctm not in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"):
            return f"coordinate_transformation_mode {ctm!r} is unsupported"
        if mode == "nearest" and nearest not in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"):
            return f"nearest_mode {nearest!r} is unsupported"
        if _text(attr(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
            return "keep_aspect_ratio_policy must be stretch"
        if attr(node, "antialias", 0):
            return "antialiasing is not supported"
    if op == "ScatterND" and _text(attr(node, "reduction", "none")) != "none":
        return "ScatterND `reduction` is not supported"
    if op == "Constant":
        bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
        if bad:
            return f"Constant attribute {bad[0]} is unsupported"
    if op == "LSTM" and (attr(node, "input_forget", 0) or attr(node, "layout", 0)):
        return "LSTM `input_forget` and `layout` must be 0"
    return ""


def _plugin_attr_problem(a: onnx.AttributeProto) -> str:
    lo, hi = facts.INT32_RANGE
    if a.type not in facts.PLUGIN_ATTR_TYPES:
        return (f"attribute {a.name} is {attr_type_name(a)}; plugin fields take INT, FLOAT, STRING, their lists, or a "
                "TENSOR (onnxOpImporters.cpp loadFields)")
    if a.type == AttributeProto.INT and not lo <= a.i <= hi:
        return (f"attribute {a.name} = {a.i} does not fit int32; the parser narrows INT attributes to int32 "
                f"(PluginFieldType::kINT32), so the plugin would see another value: keep it in [{lo}, {hi}]")
    if a.type == AttributeProto.INTS:
        bad = [v for v in a.ints if not lo <= v <= hi]
        if bad:
            return (f"attribute {a.name} holds {bad[0]}, outside int32; the parser narrows INTS to int32 "
                    "(PluginFieldType::kINT32)")
    if a.type == AttributeProto.TENSOR and a.t.data_type not in facts.PLUGIN_TENSOR_TYPES:
        return (f"attribute {a.name} is a {elem_type_name(a.t.data_type)} tensor; plugin fields take tensors of "
                "float32, float16, bfloat16, float64, int8, int16, int32 or string only (onnxOpImporters.cpp "
                "loadFields: INT64, BOOL and UINT8 are unsupported): store it as int32")
    return ""
