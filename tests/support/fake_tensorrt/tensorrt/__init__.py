"""A CPU-only fake of the ``tensorrt`` Python package (TensorRT 11.1) for CI without a GPU: the part of the API
fastvar calls, with the bindings' names, keyword names, enums and errors (see ../README.md). ``tensorrt._fake``
holds the test hooks.
"""

from . import _fake as _fake
from ._builder import Builder, IBuilderConfig, ITimingCache
from ._core import (
    BuilderFlag,
    DataType,
    DimensionOperation,
    Dims,
    ErrorCode,
    ExecutionContextAllocationStrategy,
    IHostMemory,
    ILogger,
    Logger,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    PluginFieldType,
    QuickPluginCreationRequest,
    TensorIOMode,
    TensorRTPhase,
    nptype,
)
from ._parser import INetworkDefinition, ITensor, OnnxParser, ParserError
from ._plugins import (
    DimsExprs,
    DynamicPluginTensorDesc,
    IDimensionExpr,
    IExprBuilder,
    IPluginCreatorV3Quick,
    IPluginRegistry,
    IPluginV3,
    IPluginV3QuickAOTBuild,
    IPluginV3QuickBuild,
    IPluginV3QuickCore,
    IPluginV3QuickRuntime,
    PluginField,
    PluginFieldCollection,
    PluginTensorDesc,
    get_plugin_registry,
)
from ._runtime import ICudaEngine, IExecutionContext, Runtime

__version__ = "11.1.0"
float32, float16, bfloat16, int8 = DataType.FLOAT, DataType.HALF, DataType.BF16, DataType.INT8
int32, int64, bool, uint8 = DataType.INT32, DataType.INT64, DataType.BOOL, DataType.UINT8  # noqa: A001 - as the real one

__all__ = [
    "Builder", "BuilderFlag", "DataType", "DimensionOperation", "Dims", "DimsExprs", "DynamicPluginTensorDesc",
    "ErrorCode", "ExecutionContextAllocationStrategy", "IBuilderConfig", "ICudaEngine", "IDimensionExpr",
    "IExecutionContext", "IExprBuilder", "IHostMemory", "ILogger", "INetworkDefinition", "IPluginCreatorV3Quick",
    "IPluginRegistry", "IPluginV3", "IPluginV3QuickAOTBuild", "IPluginV3QuickBuild", "IPluginV3QuickCore",
    "IPluginV3QuickRuntime", "ITensor", "ITimingCache", "Logger", "MemoryPoolType", "NetworkDefinitionCreationFlag",
    "OnnxParser", "ParserError", "PluginField", "PluginFieldCollection", "PluginFieldType", "PluginTensorDesc",
    "QuickPluginCreationRequest", "Runtime", "TensorIOMode", "TensorRTPhase", "bfloat16", "bool", "float16",
    "float32", "get_plugin_registry", "int8", "int32", "int64", "nptype", "uint8",
]
