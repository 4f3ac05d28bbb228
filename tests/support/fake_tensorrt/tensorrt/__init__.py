"""A CPU-only fake of the ``tensorrt`` Python package (TensorRT 11.1), for CI without a GPU or TensorRT.

Names, keyword names and behaviour follow the NVIDIA/TensorRT bindings (python/src/**, python/packaging/
bindings_wheel/tensorrt/**); see ../README.md for what is and is not modelled. ``tensorrt._fake`` holds the
test hooks (ONNX Runtime session factory, execution log, plan reader, reset).
"""

from . import _fake as _fake
from ._builder import Builder, IBuilderConfig, ITimingCache, TimingCacheKey, TimingCacheValue
from ._core import Dims, IHostMemory, ILogger, Logger, nptype, volume
from ._enums import (
    BuilderFlag,
    DataType,
    DimensionOperation,
    EngineCapability,
    ErrorCode,
    ExecutionContextAllocationStrategy,
    HardwareCompatibilityLevel,
    LayerType,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    OnnxParserFlag,
    PluginArgDataType,
    PluginArgType,
    PluginCapabilityType,
    PluginFieldType,
    PreviewFeature,
    ProfilingVerbosity,
    QuickPluginCreationRequest,
    TensorFormat,
    TensorIOMode,
    TensorLocation,
    TensorRTPhase,
)
from ._network import ILayer, INetworkDefinition, IPluginV3Layer, ITensor
from ._parser import OnnxParser, ParserError
from ._plugins import (
    DimsExprs,
    DynamicPluginTensorDesc,
    IDimensionExpr,
    IExprBuilder,
    IPluginCreator,
    IPluginCreatorInterface,
    IPluginCreatorV3One,
    IPluginCreatorV3Quick,
    IPluginRegistry,
    IPluginV3,
    IPluginV3QuickAOTBuild,
    IPluginV3QuickBuild,
    IPluginV3QuickCore,
    IPluginV3QuickRuntime,
    ISymExpr,
    IVersionedInterface,
    PluginField,
    PluginFieldCollection,
    PluginFieldCollection_,
    PluginTensorDesc,
    get_builder_plugin_registry,
    get_plugin_registry,
    init_libnvinfer_plugins,
)
from ._runtime import ICudaEngine, IExecutionContext, Runtime

__version__ = "11.1.0"

# pyFoundationalTypes.cpp: module-level DataType aliases.
float32 = DataType.FLOAT
float16 = DataType.HALF
bfloat16 = DataType.BF16
int8 = DataType.INT8
int32 = DataType.INT32
int64 = DataType.INT64
bool = DataType.BOOL  # noqa: A001 - the real module shadows the builtin too
uint8 = DataType.UINT8
fp8 = DataType.FP8
int4 = DataType.INT4
fp4 = DataType.FP4
e8m0 = DataType.E8M0

__all__ = [
    "Builder", "BuilderFlag", "DataType", "DimensionOperation", "Dims", "DimsExprs", "DynamicPluginTensorDesc",
    "EngineCapability", "ErrorCode", "ExecutionContextAllocationStrategy", "HardwareCompatibilityLevel",
    "IBuilderConfig", "ICudaEngine", "IDimensionExpr", "IExecutionContext", "IExprBuilder", "IHostMemory",
    "ILayer", "ILogger", "INetworkDefinition", "IPluginCreator", "IPluginCreatorInterface", "IPluginCreatorV3One",
    "IPluginCreatorV3Quick", "IPluginRegistry", "IPluginV3", "IPluginV3Layer", "IPluginV3QuickAOTBuild",
    "IPluginV3QuickBuild", "IPluginV3QuickCore", "IPluginV3QuickRuntime", "ISymExpr", "ITensor", "ITimingCache",
    "IVersionedInterface", "LayerType", "Logger", "MemoryPoolType", "NetworkDefinitionCreationFlag", "OnnxParser",
    "OnnxParserFlag", "ParserError", "PluginArgDataType", "PluginArgType", "PluginCapabilityType", "PluginField",
    "PluginFieldCollection", "PluginFieldCollection_", "PluginFieldType", "PluginTensorDesc", "PreviewFeature",
    "ProfilingVerbosity", "QuickPluginCreationRequest", "Runtime", "TensorFormat", "TensorIOMode",
    "TensorLocation", "TensorRTPhase", "TimingCacheKey", "TimingCacheValue", "bfloat16", "bool", "e8m0", "float16",
    "float32", "fp4", "fp8", "get_builder_plugin_registry", "get_plugin_registry", "init_libnvinfer_plugins",
    "int4", "int8", "int32", "int64", "nptype", "uint8", "volume",
]
