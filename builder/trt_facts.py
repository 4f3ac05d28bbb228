"""What TensorRT's ONNX parser accepts, as cited data: the facts :mod:`fastvar.builder.onnx_check` judges by.

Apart from the checker so that a newer limit or operator table changes data only. Each fact cites its source:

* ``operators.md``: onnx/onnx-tensorrt ``docs/operators.md`` at 96e781103cfc4adf4a6bb557e94bac8e693f6f4c
  (TensorRT 10.1 GA, 2024-06-17), https://github.com/onnx/onnx-tensorrt/blob/96e7811/docs/operators.md;
  the parser sources (``ModelImporter.cpp``, ``onnxOpImporters.cpp``, ``importerUtils.cpp``,
  ``OnnxAttrs.cpp``) are read at the same commit.
* ``NvInfer.h`` / ``CHANGELOG.md``: NVIDIA/TensorRT at a892d22267d9cd2dedc1a0893e6892ac901f6d3d
  (TensorRT 11.1 headers, 2026-07-07).
"""

from __future__ import annotations

from onnx import AttributeProto, TensorProto

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
INT32_RANGE = (-(2**31), 2**31 - 1)

# Float element types each artifact precision may contain (TensorRT 11 is strongly typed: the graph's types are
# the engine's precision, and no builder flag changes them).
PRECISIONS: dict[str, frozenset[int]] = {
    "fp32": frozenset({TensorProto.FLOAT}),
    "bf16": frozenset({TensorProto.FLOAT, TensorProto.BFLOAT16}),
    "fp16": frozenset({TensorProto.FLOAT, TensorProto.FLOAT16}),
}
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})

# importerUtils.cpp convertDtype (lines 314-333): the ONNX element types the parser maps to a TensorRT type
# (DOUBLE becomes FLOAT); any other type fails with "Unsupported ONNX data type". FLOAT4E2M1 was added in 10.8
# (CHANGELOG.md "Added support for FLOAT4E2M1 types for quantized networks").
PARSER_TYPES = frozenset({
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
UNSUPPORTED = frozenset("""
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
PARSER_NATIVE = frozenset("""
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
    """The table as transcribed (``Op:CODES;``, close to operators.md's wording) -> op -> element types."""
    table = {}
    for entry in text.replace("\n", " ").split(";"):
        if entry.strip():
            op, codes = entry.split(":")
            table[op.strip()] = frozenset(t for c in codes.split() for t in _TYPE_CODES[c])
    return table


SUPPORTED: dict[str, frozenset[int]] = _parse_table(_SUPPORTED_TABLE)


def supported_ops() -> dict[str, frozenset[int]]:
    """Op type -> the ONNX element types TensorRT takes for it (operators.md rows marked Y)."""
    return dict(SUPPORTED)


# Which tensor the "Supported Types" column is about: input 0 unless named here ("out": output 0; None: not
# checked, the op's types are those of its subgraphs).
TYPED_TENSOR: dict[str, int | str | None] = {
    "Where": 1, "OneHot": 2, "Constant": "out", "ConstantOfShape": "out", "RandomNormal": "out",
    "RandomUniform": "out", "RandomNormalLike": "out", "RandomUniformLike": "out", "If": None, "Loop": None,
    "Scan": None,
}
# operators.md restrictions "`axes` must be an initializer" (Reduce*, Slice, Squeeze, Pad), "must be a constant
# tensor" (Unsqueeze), "`axis` must be an initializer" (CumSum), "`depth` must be a build-time constant" (OneHot),
# "`is_traning` must be an initializer" (Dropout): op -> (input index, what the input is).
CONSTANT_INPUTS: dict[str, tuple[int, str]] = {
    **{op: (1, "axes") for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                  "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
                                  "Squeeze", "Unsqueeze")},
    "Slice": (3, "axes"), "Pad": (3, "axes"), "CumSum": (1, "axis"), "OneHot": (1, "depth"),
    "Dropout": (2, "training_mode"),
}
# onnxOpImporters.cpp FallbackPluginImporter: the STRING attributes (besides op_type) a plugin is looked up by.
PLUGIN_KEYS = ("plugin_namespace", "plugin_version")
# onnxOpImporters.cpp loadFields: the TENSOR attribute element types a plugin field can take (others, INT64,
# BOOL and UINT8 among them, fail the import with "is unsupported in plugin fields").
PLUGIN_TENSOR_TYPES = frozenset({TensorProto.FLOAT, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32,
                                 TensorProto.STRING, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                                 TensorProto.DOUBLE})
PLUGIN_ATTR_TYPES = frozenset({AttributeProto.FLOAT, AttributeProto.INT, AttributeProto.STRING,
                               AttributeProto.FLOATS, AttributeProto.INTS, AttributeProto.STRINGS,
                               AttributeProto.TENSOR})
