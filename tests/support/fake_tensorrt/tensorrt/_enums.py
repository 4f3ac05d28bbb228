"""The TensorRT 11 enums, with pybind11 ``py::enum_`` semantics.

Member names and values: ``include/NvInfer*.h``, ``include/NvOnnxParser.h`` and the ``.value(...)`` lists in
``python/src/infer/{pyFoundationalTypes,pyCore,pyGraph,pyPlugin}.cpp`` and ``python/src/parsers/pyOnnx.cpp``.
Enums bound with ``py::arithmetic()`` are ``IntEnum``s (they compare equal to ints and ``|`` to an int); the
others compare equal only to themselves. Every member has ``name``, ``value``, ``int()`` and ``__index__``.
Only names that TensorRT 11 binds exist: there is no ``BuilderFlag.FP16``/``INT8``/``OBEY_PRECISION_CONSTRAINTS``.
"""

from __future__ import annotations

import enum


class _Enum(enum.Enum):
    """``py::enum_`` without ``py::arithmetic``."""

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class _ArithEnum(enum.IntEnum):
    """``py::enum_`` with ``py::arithmetic``."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    __format__ = object.__format__


class DataType(_Enum):
    """pyFoundationalTypes.cpp; values from NvInferRuntimeBase.h."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10
    E8M0 = 11

    @property
    def itemsize(self):
        """Bytes per element (a fraction for the 4-bit types), as the wheel's ``__init__.py`` adds it."""
        return _ITEMSIZE[self]


_ITEMSIZE = {DataType.FLOAT: 4, DataType.HALF: 2, DataType.BF16: 2, DataType.INT8: 1, DataType.INT32: 4,
             DataType.INT64: 8, DataType.BOOL: 1, DataType.UINT8: 1, DataType.FP8: 1, DataType.INT4: 0.5,
             DataType.FP4: 0.5, DataType.E8M0: 1}


class Severity(_ArithEnum):
    """``ILogger.Severity`` (pyCore.cpp, exported into ILogger's scope)."""

    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class TensorIOMode(_Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class TensorLocation(_Enum):
    DEVICE = 0
    HOST = 1


class TensorFormat(_ArithEnum):
    LINEAR = 0
    CHW2 = 1
    HWC8 = 2
    CHW4 = 3
    CHW16 = 4
    CHW32 = 5
    DHWC8 = 6
    CDHW32 = 7
    HWC = 8
    DLA_LINEAR = 9
    DLA_HWC4 = 10
    HWC16 = 11
    DHWC = 12


class NetworkDefinitionCreationFlag(_ArithEnum):
    """NvInfer.h: STRONGLY_TYPED is deprecated in 11.0 and ignored (strong typing is always on)."""

    STRONGLY_TYPED = 0
    PREFER_JIT_PYTHON_PLUGINS = 1
    PREFER_AOT_PYTHON_PLUGINS = 2


class BuilderFlag(_ArithEnum):
    """The TensorRT 11 members only (pyCore.cpp): the weak-typing precision flags are gone."""

    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7
    SAFETY_SCOPE = 8
    DIRECT_IO = 11
    VERSION_COMPATIBLE = 12
    EXCLUDE_LEAN_RUNTIME = 13
    ERROR_ON_TIMING_CACHE_MISS = 15
    DISABLE_COMPILATION_CACHE = 17
    STRIP_PLAN = 18
    REFIT_IDENTICAL = 19
    WEIGHT_STREAMING = 20
    REFIT_INDIVIDUAL = 22
    STRICT_NANS = 23
    MONITOR_MEMORY = 24
    EDITABLE_TIMING_CACHE = 26
    DISTRIBUTIVE_INDEPENDENCE = 27


class MemoryPoolType(_Enum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5


class PreviewFeature(_Enum):
    ALIASED_PLUGIN_IO_10_03 = 0
    RUNTIME_ACTIVATION_RESIZE_10_10 = 1


class HardwareCompatibilityLevel(_Enum):
    NONE = 0
    AMPERE_PLUS = 1
    SAME_COMPUTE_CAPABILITY = 2


class ExecutionContextAllocationStrategy(_ArithEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class ProfilingVerbosity(_Enum):
    LAYER_NAMES_ONLY = 0
    NONE = 1
    DETAILED = 2


class EngineCapability(_ArithEnum):
    STANDARD = 0
    SAFETY = 1
    DLA_STANDALONE = 2


LayerType = _Enum("LayerType", [(n, i) for i, n in enumerate(
    "CONVOLUTION CAST ACTIVATION POOLING LRN SCALE SOFTMAX DECONVOLUTION CONCATENATION ELEMENTWISE PLUGIN UNARY "
    "PADDING SHUFFLE REDUCE TOPK GATHER MATRIX_MULTIPLY RAGGED_SOFTMAX CONSTANT IDENTITY PLUGIN_V2 SLICE SHAPE "
    "PARAMETRIC_RELU RESIZE TRIP_LIMIT RECURRENCE ITERATOR LOOP_OUTPUT SELECT FILL QUANTIZE DEQUANTIZE CONDITION "
    "CONDITIONAL_INPUT CONDITIONAL_OUTPUT SCATTER EINSUM ASSERTION ONE_HOT NON_ZERO GRID_SAMPLE NMS REVERSE_SEQUENCE "
    "NORMALIZATION PLUGIN_V3 SQUEEZE UNSQUEEZE CUMULATIVE DYNAMIC_QUANTIZE ATTENTION_INPUT ATTENTION_OUTPUT "
    "ROTARY_EMBEDDING KV_CACHE_UPDATE MOE DIST_COLLECTIVE".split())], module=__name__)
LayerType.__doc__ = "NvInfer.h LayerType (the Python name of kKVCACHE_UPDATE is KV_CACHE_UPDATE, pyGraph.cpp)."


class DimensionOperation(_ArithEnum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    EQUAL = 5
    LESS = 6
    FLOOR_DIV = 7
    CEIL_DIV = 8


class PluginFieldType(_Enum):
    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10
    FP8 = 11
    INT4 = 12
    FP4 = 13


class TensorRTPhase(_ArithEnum):
    BUILD = 0
    RUNTIME = 1


class QuickPluginCreationRequest(_ArithEnum):
    """include/impl/NvInferPythonPlugin.h."""

    UNKNOWN = 0
    PREFER_JIT = 1
    PREFER_AOT = 2
    STRICT_JIT = 3
    STRICT_AOT = 4


class PluginCapabilityType(_ArithEnum):
    CORE = 0
    BUILD = 1
    RUNTIME = 2


class PluginArgType(_ArithEnum):
    INT = 0


class PluginArgDataType(_ArithEnum):
    INT8 = 0
    INT16 = 1
    INT32 = 2


class OnnxParserFlag(_Enum):
    NATIVE_INSTANCENORM = 0
    ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA = 1
    REPORT_CAPABILITY_DLA = 2
    ENABLE_PLUGIN_OVERRIDE = 3
    ADJUST_FOR_DLA = 4


class ErrorCode(_Enum):
    """The ONNX parser's ErrorCode (pyOnnx.cpp): ``str()`` and ``repr()`` give the bare name."""

    SUCCESS = 0
    INTERNAL_ERROR = 1
    MEM_ALLOC_FAILED = 2
    MODEL_DESERIALIZE_FAILED = 3
    INVALID_VALUE = 4
    INVALID_GRAPH = 5
    INVALID_NODE = 6
    UNSUPPORTED_GRAPH = 7
    UNSUPPORTED_NODE = 8
    UNSUPPORTED_NODE_ATTR = 9
    UNSUPPORTED_NODE_INPUT = 10
    UNSUPPORTED_NODE_DATATYPE = 11
    UNSUPPORTED_NODE_DYNAMIC = 12
    UNSUPPORTED_NODE_SHAPE = 13
    REFIT_FAILED = 14

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__
