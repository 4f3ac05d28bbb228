"""Static TensorRT-compatibility check of an artifact's ONNX graphs: runs on any CPU, before any engine build.

``fastvar-build`` calls :func:`require_compatible` first, so a graph TensorRT's ONNX parser would refuse (or
would silently turn into something else) is reported with the graph, the node and the limit, in seconds,
instead of minutes into a build on the GPU machine. Every rule below cites where its fact comes from:

* ``operators.md``: onnx/onnx-tensorrt ``docs/operators.md`` at 96e781103cfc4adf4a6bb557e94bac8e693f6f4c
  (TensorRT 10.1 GA, 2024-06-17), https://github.com/onnx/onnx-tensorrt/blob/96e7811/docs/operators.md;
  the parser sources (``ModelImporter.cpp``, ``onnxOpImporters.cpp``, ``importerUtils.cpp``,
  ``OnnxAttrs.cpp``) are read at the same commit.
* ``NvInfer.h`` / ``CHANGELOG.md``: NVIDIA/TensorRT at a892d22267d9cd2dedc1a0893e6892ac901f6d3d
  (TensorRT 11.1 headers, 2026-07-07).

Models are loaded without their external data (the step graphs bind their weights as inputs; only the VAE
decoder holds initializers), so the check needs little time and memory whatever the model size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from fastvar.manifest import Artifact

__all__ = ["MAX_IR_VERSION", "MAX_OPSET", "MIN_OPSET", "PRECISIONS", "TOPK_MAX", "IncompatibleGraphs", "Violation",
           "check_artifact", "check_model", "format_violations", "require_compatible", "supported_ops"]

# ---- facts ----------------------------------------------------------------------------------------------------

# NvInfer.h (ITopKLayer::setK, INetworkDefinition::addTopK): "Currently only values up to 3840 are supported";
# for a K given as a tensor "Values larger than 3840 will result in a runtime error". operators.md words it as
# "`K` input must be less than 3840". The exporter holds steps to the same bound (export.artifact.TRT_TOPK_MAX).
TOPK_MAX = 3840
# operators.md: "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20" (the support
# table below describes exactly that range; a later table must be encoded before MAX_OPSET is raised).
MIN_OPSET, MAX_OPSET = 9, 20
# The newest IR of the ONNX the parser is compiled against: ONNX 1.16 in 10.1 (commit 1cf3d06 "Update build to
# support ONNX 1.16"), ONNX 1.17 from TensorRT 10.6 (CHANGELOG.md "Updated ONNX submodule version to 1.17.0");
# both define IR 10. The parser does not refuse a newer IR (ModelImporter.cpp only logs it), so a newer IR's
# additions would be ignored silently: they are refused here.
MAX_IR_VERSION = 10
_INT32 = (-(2**31), 2**31 - 1)

# Float element types each artifact precision may contain (TensorRT 11 is strongly typed: the graph's types are
# the engine's precision, and no builder flag changes them).
PRECISIONS: dict[str, frozenset[int]] = {
    "fp32": frozenset({TensorProto.FLOAT}),
    "bf16": frozenset({TensorProto.FLOAT, TensorProto.BFLOAT16}),
    "fp16": frozenset({TensorProto.FLOAT, TensorProto.FLOAT16}),
}
_FLOATS = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})

# importerUtils.cpp convertDtype (lines 314-333): the ONNX element types the parser maps to a TensorRT type
# (DOUBLE becomes FLOAT); any other type fails with "Unsupported ONNX data type". FLOAT4E2M1 was added in 10.8
# (CHANGELOG.md "Added support for FLOAT4E2M1 types for quantized networks").
_PARSER_TYPES = frozenset({
    TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8, TensorProto.FLOAT16,
    TensorProto.BFLOAT16, TensorProto.BOOL, TensorProto.INT32, TensorProto.INT64, TensorProto.FLOAT8E4M3FN,
    TensorProto.INT4, TensorProto.FLOAT4E2M1,
})

# operators.md "Operator Support Matrix", every row marked Y, with its "Supported Types" column
# (F = FP32 FP16 BF16, I = INT32 INT64; the table's "INF64" typo under ConstantOfShape read as INT64).
_SUPPORTED_TABLE = """
Abs:F I; Acos:F; Acosh:F; Add:F I; And:BOOL; ArgMax:F I; ArgMin:F I; Asin:F; Asinh:F; Atan:F; Atanh:F;
AveragePool:F; BatchNormalization:F; Cast:F I UINT8 BOOL; CastLike:F I UINT8 BOOL; Ceil:F; Celu:F; Clip:F;
Concat:F I BOOL; Constant:F I BOOL; ConstantOfShape:F I BOOL; Conv:F; ConvTranspose:F; Cos:F; Cosh:F; CumSum:F;
DeformConv:FP32 FP16; DepthToSpace:F I; DequantizeLinear:INT8 FP8 INT4; Div:F I; Dropout:F; Einsum:F; Elu:F;
Equal:F I; Erf:F; Exp:F; Expand:F I BOOL; EyeLike:F I BOOL; Flatten:F I BOOL; Floor:F; Gather:F I BOOL;
GatherElements:F I BOOL; GatherND:F I BOOL; Gelu:F I INT8; Gemm:F; GlobalAveragePool:F; GlobalLpPool:F;
GlobalMaxPool:F; Greater:F I; GreaterOrEqual:F I; GridSample:FP32 FP16; GroupNormalization:F; GRU:F;
HardSigmoid:F; HardSwish:F; Hardmax:F; Identity:F I BOOL; If:F I BOOL; ImageScaler:F; InstanceNormalization:F;
IsInf:F; IsNaN:F I; LayerNormalization:F; LeakyRelu:F; Less:F I; LessOrEqual:F I; Log:F; LogSoftmax:F;
Loop:F I BOOL; LRN:F; LSTM:F; LpNormalization:F; LpPool:F; MatMul:F; Max:F I; MaxPool:F; Mean:F I FP8;
MeanVarianceNormalization:F; Min:F I; Mish:FP32 FP16; Mod:F I; Mul:F I; Neg:F I; NonMaxSuppression:FP32 FP16;
NonZero:FP32 FP16; Not:BOOL; OneHot:F I BOOL; Or:BOOL; Pad:F I; ParametricSoftplus:F; Pow:F; PRelu:F;
QuantizeLinear:F; RandomNormal:F; RandomNormalLike:F; RandomUniform:F; RandomUniformLike:F; Range:F I;
Reciprocal:F; ReduceL1:F I; ReduceL2:F I; ReduceLogSum:F I; ReduceLogSumExp:F I; ReduceMax:F I; ReduceMean:F I;
ReduceMin:F I; ReduceProd:F I; ReduceSum:F I; ReduceSumSquare:F I; Relu:F I; Reshape:F I BOOL; Resize:F;
ReverseSequence:F I BOOL; RNN:F; RoiAlign:FP32 FP16; Round:F; ScaledTanh:F; Scan:F; Scatter:F I;
ScatterElements:F I; ScatterND:F I; Selu:F; Shape:F I BOOL; Shrink:F I; Sigmoid:F; Sign:F I; Sin:F; Sinh:F;
Size:F I BOOL; Slice:F I BOOL; Softmax:F; Softplus:F; Softsign:F; SpaceToDepth:F I; Split:F I BOOL; Sqrt:F;
Squeeze:F I BOOL; Sub:F I; Sum:F I; Tan:F; Tanh:F; ThresholdedRelu:F; Tile:F I BOOL; TopK:F I;
Transpose:F I BOOL; Trilu:F I BOOL; Unsqueeze:F I BOOL; Upsample:F; Where:F I BOOL; Xor:BOOL
"""
# The rows marked N (not supported) in the same table.
_UNSUPPORTED = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Col2Im CenterCropPad
Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow HannWindow ImageDecoder
MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch STFT SequenceAt SequenceConstruct
SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())
# Importers the parser registers under names that are not ONNX ops (onnxOpImporters.cpp
# DEFINE_BUILTIN_OP_IMPORTER at 10.1, plus the custom ops added by TensorRT 11.0, CHANGELOG.md): a plugin named
# like one of them is never looked up, because parseNode (ModelImporter.cpp:155-168) tries importers first.
_PARSER_NATIVE = frozenset("""
TRT_AveragePool TRT_Conv TRT_Deconv TRT_FP8DequantizeLinear TRT_FP8QuantizeLinear TRT_FloorDiv TRT_Gather
TRT_INT4DequantizeLinear TRT_INT4QuantizeLinear TRT_MatMul TRT_MaxAverageBlendPool TRT_MaxPool TRT_PluginV2
TRT_RaggedSoftmax TRT_Resize TRT_Scale TRT_Shuffle TRT_Slice TRT_TopK_Min TRT_Attention TRT_KVCacheUpdate TRT_MoE
""".split())

_TYPE_CODES = {"FP32": (TensorProto.FLOAT,), "FP16": (TensorProto.FLOAT16,), "BF16": (TensorProto.BFLOAT16,),
               "INT32": (TensorProto.INT32,), "INT64": (TensorProto.INT64,), "INT8": (TensorProto.INT8,),
               "UINT8": (TensorProto.UINT8,), "BOOL": (TensorProto.BOOL,), "FP8": (TensorProto.FLOAT8E4M3FN,),
               "INT4": (TensorProto.INT4,)}
_TYPE_CODES["F"] = _TYPE_CODES["FP32"] + _TYPE_CODES["FP16"] + _TYPE_CODES["BF16"]
_TYPE_CODES["I"] = _TYPE_CODES["INT32"] + _TYPE_CODES["INT64"]


def _parse_table(text: str) -> dict[str, frozenset[int]]:
    table = {}
    for entry in text.replace("\n", " ").split(";"):
        if entry.strip():
            op, codes = entry.split(":")
            table[op.strip()] = frozenset(t for c in codes.split() for t in _TYPE_CODES[c])
    return table


_SUPPORTED = _parse_table(_SUPPORTED_TABLE)


def supported_ops() -> dict[str, frozenset[int]]:
    """Op type -> the ONNX element types TensorRT takes for it (operators.md rows marked Y)."""
    return dict(_SUPPORTED)


# Which tensor the "Supported Types" column is about: input 0 unless named here ("out": output 0; None: not
# checked, the op's types are those of its subgraphs).
_TYPED_TENSOR: dict[str, int | str | None] = {
    "Where": 1, "OneHot": 2, "Constant": "out", "ConstantOfShape": "out", "RandomNormal": "out",
    "RandomUniform": "out", "RandomNormalLike": "out", "RandomUniformLike": "out", "If": None, "Loop": None,
    "Scan": None,
}
# operators.md restrictions "`axes` must be an initializer" (Reduce*, Slice, Squeeze, Pad), "must be a constant
# tensor" (Unsqueeze), "`axis` must be an initializer" (CumSum), "`depth` must be a build-time constant" (OneHot),
# "`is_traning` must be an initializer" (Dropout): op -> (input index, what the input is).
_CONSTANT_INPUTS: dict[str, tuple[int, str]] = {
    **{op: (1, "axes") for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                  "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
                                  "Squeeze", "Unsqueeze")},
    "Slice": (3, "axes"), "Pad": (3, "axes"), "CumSum": (1, "axis"), "OneHot": (1, "depth"),
    "Dropout": (2, "training_mode"),
}
_PLUGIN_KEYS = ("plugin_namespace", "plugin_version")
# onnxOpImporters.cpp loadFields: the TENSOR attribute element types a plugin field can take (others, INT64,
# BOOL and UINT8 among them, fail the import with "is unsupported in plugin fields").
_PLUGIN_TENSOR_TYPES = frozenset({TensorProto.FLOAT, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32,
                                  TensorProto.STRING, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                                  TensorProto.DOUBLE})
_PLUGIN_ATTR_TYPES = frozenset({AttributeProto.FLOAT, AttributeProto.INT, AttributeProto.STRING,
                                AttributeProto.FLOATS, AttributeProto.INTS, AttributeProto.STRINGS,
                                AttributeProto.TENSOR})
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
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    base_dir = ""
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        graph = graph or path.name
        model = onnx.load(str(path), load_external_data=False)
        base_dir = str(path.parent)
    return _Checker(model, precision, graph, base_dir).run()


def check_artifact(art: Artifact) -> dict[str, list[Violation]]:
    """Every graph the manifest lists (all kinds, validation variants included) -> its violations."""
    precision = art.data.get("precision", "fp32")
    out: dict[str, list[Violation]] = {}
    for name in art.data["graphs"]:
        path = art.graph_path(name)
        if not path.is_file():
            out[name] = [Violation(name, "", "", "file", f"{path} is missing; re-run fastvar-export on {art.root}")]
            continue
        out[name] = check_model(path, precision=precision, graph=name)
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
        if node is None:
            self.found.append(Violation(self.graph, "", "", rule, message))
        else:
            self.found.append(Violation(self.graph, _node_name(node, index), node.op_type, rule, message))

    def run(self) -> list[Violation]:
        g = self.model.graph
        self.functions = {(f.domain, f.name) for f in self.model.functions}
        self.opset = self._check_versions()
        inferred = self._infer()
        self.types, self.shapes = _value_types(inferred.graph)
        for t in _all_initializers(g):
            self.types[t.name] = t.data_type
            self.shapes[t.name] = list(t.dims)
        self.io = {vi.name for vi in [*g.input, *g.output]}
        nodes = list(_walk_nodes(g, self.model.functions))
        self.producer = {o: (n, i) for i, n in enumerate(nodes) for o in n.output if o}
        self.initializers = {t.name: t for t in _all_initializers(g)}
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
                                    f"{MIN_OPSET}..{MAX_OPSET} (onnx-tensorrt operators.md)")
        elif not MIN_OPSET <= opset <= MAX_OPSET:
            self.add(None, "opset", f"default-domain opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}, the range "
                                    "onnx-tensorrt's operators.md (TensorRT 10) vouches for; export with opset 20")
        if m.ir_version > MAX_IR_VERSION:
            self.add(None, "ir-version", f"IR version {m.ir_version} is newer than {MAX_IR_VERSION}, the newest IR of "
                                         "the ONNX release TensorRT's parser is built against (1.16/1.17); set "
                                         f"model.ir_version = {MAX_IR_VERSION} (the exporter writes 10)")
        if default:
            try:
                need = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
            except ValueError:
                need = 0
            if m.ir_version < need:
                self.add(None, "ir-version", f"IR version {m.ir_version} is older than opset {opset} needs "
                                             f"(IR >= {need}); set model.ir_version = {MAX_IR_VERSION}")
        return opset

    def _infer(self) -> onnx.ModelProto:
        if any(n.domain == "fastvar" for n in _walk_nodes(self.model.graph, self.model.functions)):
            from fastvar.plugins.restore.onnx_op import register_schema  # the plugin's output types and shapes

            register_schema()
        m = self.model
        if m.ByteSize() > _TWO_GB:  # inference needs initializers' types and dims only
            m = _without_weight_data(m)
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
                dims = _dims(vi)
                if 0 in dims:
                    seen.add(vi.name)
                    self.add(None, "zero-dim", f"graph {kind} {vi.name} has shape {dims} with a zero-size "
                                               "dimension; a static graph's tensors all hold elements (drop "
                                               "the tensor or fix the size it was exported with)")
        constants = {n.output[0] for n in _walk_nodes(g) if n.op_type == "Constant" and n.output}
        for t in _all_initializers(g):
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
        allowed = PRECISIONS[self.precision]
        names = {"fp32": "float32", "bf16": "float32 and bfloat16", "fp16": "float32 and float16"}
        for name, t in self.types.items():
            if not t:
                continue
            node, i = self.producer.get(name, (None, -1))
            what = f"output {name}" if node is not None else \
                f"initializer {name}" if name in self.initializers else f"graph input {name}"
            tname = _type_name(t)
            if t == TensorProto.DOUBLE:
                self.add(node, "precision", f"{what} is float64; TensorRT casts DOUBLE down to FLOAT (clamping to "
                                            "+-FLT_MAX), so the engine would not compute what the graph says: use "
                                            "float32", i)
            elif t in _FLOATS and t not in allowed:
                self.add(node, "precision", f"{what} is {tname}, but the artifact's precision is {self.precision} "
                                            f"(TensorRT 11 builds the graph's types as they are); accepted float "
                                            f"types: {names[self.precision]}", i)
            elif t not in _PARSER_TYPES:
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
        elif domain in ("", "ai.onnx", "trt") and op in _PARSER_NATIVE:
            return
        elif domain in ("", "ai.onnx") and op in _SUPPORTED:  # ImageScaler etc.: parser importers, not in ONNX
            return
        else:
            self._check_plugin(node, i)

    def _check_standard(self, node: onnx.NodeProto, i: int) -> None:
        """Rule 4: only ops operators.md marks Y, with a type its "Supported Types" column lists, and the
        restrictions of its "Restrictions" column that can be decided without running the graph."""
        op = node.op_type
        if op in _UNSUPPORTED or op not in _SUPPORTED:
            why = "marked N (not supported) in" if op in _UNSUPPORTED else "absent from"
            self.add(node, "unsupported-op", f"{op} is {why} onnx-tensorrt's operator table (docs/operators.md, "
                                             "TensorRT 10); the parser would look for a plugin of that name and "
                                             "fail: express it with supported ops", i)
            return
        self._check_op_types(node, i)
        if op in _CONSTANT_INPUTS:
            idx, what = _CONSTANT_INPUTS[op]
            if len(node.input) > idx and node.input[idx] and self._const(node.input[idx]) is None:
                self.add(node, "const-input", f"{what} input {node.input[idx]} is computed at run time; TensorRT "
                                              f"needs {op}'s {what} as an initializer or Constant (operators.md)", i)
        if op == "TopK":
            self._check_topk(node, i)
        restriction = _restriction(node)
        if restriction:
            self.add(node, "op-restriction", restriction + " (onnx-tensorrt operators.md)", i)

    def _check_op_types(self, node: onnx.NodeProto, i: int) -> None:
        op = node.op_type
        where = _TYPED_TENSOR.get(op, 0)
        if where is None:
            return
        names = []
        if where == "out":
            names = [node.output[0]] if node.output else []
        elif len(node.input) > where and node.input[where]:
            names = [node.input[where]]
        if op in ("Cast", "CastLike") and node.output:
            names.append(node.output[0])
        accepted = _SUPPORTED[op]
        for name in names:
            t = self.types.get(name)
            if t and t not in accepted and t in _PARSER_TYPES and t != TensorProto.DOUBLE:
                listed = ", ".join(sorted(_type_name(a) for a in accepted))
                self.add(node, "op-type", f"{name} is {_type_name(t)}; TensorRT's {op} takes {listed} "
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
            value = self._const(source) if source else None
            k = int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None
        if k is None and source in self.initializers:
            self.add(node, "topk-k", f"K ({source}) is an initializer whose value cannot be read here (external "
                                     "data out of reach: check the model by its path); TensorRT takes k <= "
                                     f"{TOPK_MAX}", i)
        elif k is None:
            self.add(node, "topk-k", f"K ({source or 'missing'}) is not a build-time constant; TensorRT needs it "
                                     f"known to hold it to k <= {TOPK_MAX} (NvInfer.h ITopKLayer): make K an "
                                     "initializer", i)
        elif k > TOPK_MAX:
            self.add(node, "topk-k", f"selects k = {k} ({source}), above TensorRT's TopK limit k <= {TOPK_MAX} "
                                     "(NvInfer.h ITopKLayer::setK): prune more tokens at this step (keep at most "
                                     f"{TOPK_MAX}) or build this graph for onnxruntime", i)
        elif k < 1:
            self.add(node, "topk-k", f"selects k = {k} ({source}); TensorRT's TopK takes 1 <= k <= {TOPK_MAX}", i)

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
        if onnx.defs.has(op) or op in _PARSER_NATIVE or op in _SUPPORTED:
            self.add(node, "plugin-name", f"plugin op_type {op} (domain {node.domain or 'ai.onnx'}) is also the "
                                          "name of a built-in ONNX/TensorRT op; the parser dispatches on op_type "
                                          "alone and would import the built-in op, not the plugin: rename it", i)
        for key in _PLUGIN_KEYS:
            a = attrs.get(key)
            if a is None:
                self.add(node, "plugin-attr", f"has no {key} attribute; TensorRT finds plugin {op} by name, "
                                              "plugin_version and plugin_namespace (STRING attributes): set it", i)
            elif a.type != AttributeProto.STRING:
                self.add(node, "plugin-attr", f"{key} is {_attr_type(a)}; the parser reads it as a STRING", i)
        ns = attrs.get("plugin_namespace")
        if ns is not None and ns.type == AttributeProto.STRING and node.domain not in ("", "ai.onnx"):
            if ns.s.decode() != node.domain:
                self.add(node, "plugin-attr", f"plugin_namespace {ns.s.decode()!r} differs from domain "
                                              f"{node.domain!r}; TensorRT >= 10.12 also reads the namespace from "
                                              "the domain, so make them equal", i)
        for a in node.attribute:
            if a.name in _PLUGIN_KEYS:
                continue
            problem = _plugin_attr_problem(a)
            if problem:
                self.add(node, "plugin-attr", problem, i)

    # -- constants ------------------------------------------------------------------------------------------
    def _const(self, name: str, depth: int = 0) -> np.ndarray | None:
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
            return _constant_value(attrs)
        if op not in ("Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten") or not node.input:
            return None
        x = self._const(node.input[0], depth + 1)
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
            shape = self._const(second, depth + 1) if second else None
            if shape is None:
                return None
            allowzero = attrs["allowzero"].i if "allowzero" in attrs else 0
            dims = [x.shape[j] if d == 0 and not allowzero else int(d) for j, d in enumerate(shape.tolist())]
            return x.reshape(dims)
        if second:
            axes_arr = self._const(second, depth + 1)
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


# ---- helpers ---------------------------------------------------------------------------------------------------

def _node_name(node: onnx.NodeProto, index: int) -> str:
    if node.name:
        return node.name
    out = node.output[0] if node.output else "?"
    return f"#{index} -> {out}" if index >= 0 else f"-> {out}"


def _type_name(t: int) -> str:
    return helper.tensor_dtype_to_string(t).replace("TensorProto.", "").lower()


def _attr_type(a: onnx.AttributeProto) -> str:
    return AttributeProto.AttributeType.Name(a.type)


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            yield a.g
        elif a.type == AttributeProto.GRAPHS:
            yield from a.graphs


def _walk_graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield g
    for node in g.node:
        for sub in _subgraphs(node):
            yield from _walk_graphs(sub)


def _walk_nodes(g: onnx.GraphProto, functions=()) -> Iterator[onnx.NodeProto]:
    for sub in _walk_graphs(g):
        yield from sub.node
    for f in functions:
        yield from f.node


def _all_initializers(g: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    for sub in _walk_graphs(g):
        yield from sub.initializer


def _value_types(g: onnx.GraphProto) -> tuple[dict[str, int], dict[str, list]]:
    types: dict[str, int] = {}
    shapes: dict[str, list] = {}
    for sub in _walk_graphs(g):
        for vi in [*sub.input, *sub.output, *sub.value_info]:
            if vi.type.HasField("tensor_type"):
                types[vi.name] = vi.type.tensor_type.elem_type
                shapes[vi.name] = _dims(vi)
        for node in sub.node:
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.type == AttributeProto.TENSOR:
                        types.setdefault(node.output[0], a.t.data_type)
                        shapes.setdefault(node.output[0], list(a.t.dims))
    return types, shapes


def _without_weight_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large initializers keep their type and dims but no data (what shape inference needs)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for sub in _walk_graphs(m.graph):
        for t in sub.initializer:
            if t.ByteSize() > 2**16:
                for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                          "string_data"):
                    t.ClearField(f)
    return m


def _constant_value(attrs: dict[str, onnx.AttributeProto]) -> np.ndarray | None:
    if "value" in attrs:
        try:
            return numpy_helper.to_array(attrs["value"].t)
        except Exception:  # noqa: BLE001
            return None
    if "value_int" in attrs:
        return np.array(attrs["value_int"].i, dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(list(attrs["value_ints"].ints), dtype=np.int64)
    if "value_float" in attrs:
        return np.array(attrs["value_float"].f, dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(list(attrs["value_floats"].floats), dtype=np.float32)
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _restriction(node: onnx.NodeProto) -> str:
    """The first of the op's statically decidable operators.md restrictions it breaks, or ""."""
    op = node.op_type
    extra_outputs = [o for o in node.output[1:] if o]
    if op == "TopK" and _attr(node, "sorted", 1) != 1:
        return "`sorted` must be 1"
    if op == "LayerNormalization" and extra_outputs:
        return f"only the first output Y is supported; {', '.join(extra_outputs)} must be unused"
    if op in ("MaxPool", "AveragePool", "LpPool"):
        if op == "MaxPool" and extra_outputs:
            return "the Indices output is unsupported"
        if any(d != 1 for d in _attr(node, "dilations", [])):
            return "`dilations` must be empty or all ones"
        kernel = _attr(node, "kernel_shape", [])
        if op != "LpPool" and len(kernel) not in (2, 3):
            return f"2D or 3D pooling only, kernel_shape is {list(kernel)}"
    if op == "Resize":
        mode = _text(_attr(node, "mode", "nearest"))
        ctm = _text(_attr(node, "coordinate_transformation_mode", "half_pixel"))
        nearest = _text(_attr(node, "nearest_mode", "round_prefer_floor"))
        if mode not in ("nearest", "linear"):
            return f"Resize mode {mode!r}: supported are nearest, linear"
        if ctm not in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"):
            return f"coordinate_transformation_mode {ctm!r} is unsupported"
        if mode == "nearest" and nearest not in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"):
            return f"nearest_mode {nearest!r} is unsupported"
        if _text(_attr(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
            return "keep_aspect_ratio_policy must be stretch"
        if _attr(node, "antialias", 0):
            return "antialiasing is not supported"
    if op == "ScatterND" and _text(_attr(node, "reduction", "none")) != "none":
        return "ScatterND `reduction` is not supported"
    if op == "Constant":
        bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
        if bad:
            return f"Constant attribute {bad[0]} is unsupported"
    if op == "LSTM" and (_attr(node, "input_forget", 0) or _attr(node, "layout", 0)):
        return "LSTM `input_forget` and `layout` must be 0"
    return ""


def _plugin_attr_problem(a: onnx.AttributeProto) -> str:
    lo, hi = _INT32
    if a.type not in _PLUGIN_ATTR_TYPES:
        return (f"attribute {a.name} is {_attr_type(a)}; plugin fields take INT, FLOAT, STRING, their lists, or a "
                "TENSOR (onnxOpImporters.cpp loadFields)")
    if a.type == AttributeProto.INT and not lo <= a.i <= hi:
        return (f"attribute {a.name} = {a.i} does not fit int32; the parser narrows INT attributes to int32 "
                f"(PluginFieldType::kINT32), so the plugin would see another value: keep it in [{lo}, {hi}]")
    if a.type == AttributeProto.INTS:
        bad = [v for v in a.ints if not lo <= v <= hi]
        if bad:
            return (f"attribute {a.name} holds {bad[0]}, outside int32; the parser narrows INTS to int32 "
                    "(PluginFieldType::kINT32)")
    if a.type == AttributeProto.TENSOR and a.t.data_type not in _PLUGIN_TENSOR_TYPES:
        return (f"attribute {a.name} is a {_type_name(a.t.data_type)} tensor; plugin fields take tensors of "
                "float32, float16, bfloat16, float64, int8, int16, int32 or string only (onnxOpImporters.cpp "
                "loadFields: INT64, BOOL and UINT8 are unsupported): store it as int32")
    return ""
