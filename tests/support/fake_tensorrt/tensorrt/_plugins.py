"""Plugin plumbing: fields, the plugin registry, creator/plugin interfaces, and static shape expressions.

Bindings: ``python/src/infer/pyPlugin.cpp`` (``PluginField(name, data, type)`` keeps a raw buffer whose element
count is the source buffer's; ``data`` reinterprets it by ``type``; ``IPluginRegistry.get_creator(type, version,
plugin_namespace="")``, ``register_creator(creator, plugin_namespace="")``, ``all_creators``, ``load_library``;
``get_plugin_registry()`` returns one process-wide registry), and ``python/src/pyTensorRT.cpp``
(``PluginFieldCollection`` is a bound ``std::vector<PluginField>``). ``IExprBuilder``/``IDimensionExpr`` here only
ever hold build-time constants: the fake builds static shapes only.
"""

from __future__ import annotations

import os

import numpy as np

from ._core import Dims, Logger, buffer_bytes, check_arg, emit
from ._enums import DataType, DimensionOperation, PluginFieldType, Severity, TensorFormat

_FIELD_NP = {PluginFieldType.INT32: np.int32, PluginFieldType.UNKNOWN: np.int8, PluginFieldType.INT8: np.int8,
             PluginFieldType.INT16: np.int16, PluginFieldType.FLOAT32: np.float32,
             PluginFieldType.FLOAT64: np.float64, PluginFieldType.INT64: np.int64, PluginFieldType.CHAR: np.int8}

# The logger TensorRT reports registry events to: the one given to the most recent Builder/Runtime/OnnxParser.
_global_logger = [None]


def set_global_logger(logger) -> None:
    _global_logger[0] = logger


def global_logger():
    return _global_logger[0] or Logger()


class PluginField:
    __slots__ = ("name", "type", "size", "_buf")

    def __init__(self, name="", data=None, type=PluginFieldType.UNKNOWN):
        self.name = name
        self.type = type
        if data is None:
            self._buf, self.size = b"", 0
        else:
            view = memoryview(data) if not isinstance(data, np.ndarray) else memoryview(np.ascontiguousarray(data))
            self._buf = buffer_bytes(view, "PluginField.__init__", "data")
            self.size = int(np.prod(view.shape)) if view.ndim else 1

    @property
    def data(self) -> np.ndarray:
        if self.type not in _FIELD_NP:
            raise AttributeError("No known conversion for returning data from PluginField")
        return np.frombuffer(self._buf, dtype=_FIELD_NP[self.type], count=self.size).copy()

    def __repr__(self):
        return f"PluginField(name={self.name!r}, type={self.type}, size={self.size})"


class PluginFieldCollection(list):
    """A list of PluginField (``py::bind_vector``)."""


PluginFieldCollection_ = PluginFieldCollection


class IVersionedInterface:
    pass


class IPluginCreatorInterface(IVersionedInterface):
    pass


class _CreatorBase(IPluginCreatorInterface):
    """Python creators set ``name``, ``plugin_version``, ``plugin_namespace`` and ``field_names``."""

    def __init__(self):
        self.name = ""
        self.plugin_version = ""
        self.plugin_namespace = ""
        self.field_names = PluginFieldCollection()


class IPluginCreator(_CreatorBase):
    """Legacy V2 creator interface: ``create_plugin(name, field_collection)``."""


class IPluginCreatorV3One(_CreatorBase):
    """``create_plugin(name, field_collection, phase)``."""


class IPluginCreatorV3Quick(_CreatorBase):
    """``create_plugin(name, namespace, field_collection, phase, quickPluginType)`` (used by tensorrt.plugin)."""


class IPluginV3:
    def __init__(self):
        pass


class IPluginV3QuickCore:
    def __init__(self):
        pass


class IPluginV3QuickBuild:
    def __init__(self):
        pass


class IPluginV3QuickRuntime:
    def __init__(self):
        pass


class IPluginV3QuickAOTBuild:
    def __init__(self):
        pass


class IPluginRegistry:
    """The plugin registry, keyed by (name, version, namespace)."""

    __slots__ = ("_creators", "_libraries", "parent_search_enabled", "error_recorder")

    def __init__(self):
        self._creators: dict[tuple[str, str, str], IPluginCreatorInterface] = {}
        self._libraries: dict[int, str] = {}
        self.parent_search_enabled = True
        self.error_recorder = None

    @property
    def all_creators(self) -> list:
        return list(self._creators.values())

    @property
    def all_creators_recursive(self) -> list:
        return list(self._creators.values())

    def register_creator(self, creator, plugin_namespace=""):
        if not isinstance(creator, IPluginCreatorInterface):
            raise TypeError("register_creator(): incompatible function arguments: creator must be a plugin creator")
        key = (str(creator.name), str(creator.plugin_version), str(plugin_namespace))
        if key in self._creators:
            emit(global_logger(), Severity.ERROR,
                 f"Plugin creator already registered - {key[2]}::{key[0]} version {key[1]}")
            return False
        self._creators[key] = creator
        return True

    def deregister_creator(self, creator) -> bool:
        for key, value in list(self._creators.items()):
            if value is creator:
                del self._creators[key]
                return True
        emit(global_logger(), Severity.ERROR, "deregisterCreator: creator not found in the registry")
        return False

    def get_creator(self, type, version, plugin_namespace=""):
        return self._creators.get((str(type), str(version), str(plugin_namespace)))

    def load_library(self, plugin_path):
        """The fake cannot dlopen: a missing file fails, an existing one is recorded but registers nothing."""
        check_arg(plugin_path, str, "load_library", "plugin_path")
        if not os.path.isfile(plugin_path):
            emit(global_logger(), Severity.ERROR, f"Could not load library {plugin_path}: no such file")
            return None
        handle = _LibraryHandle(plugin_path)
        self._libraries[id(handle)] = plugin_path
        return handle

    def deregister_library(self, handle) -> None:
        self._libraries.pop(id(handle), None)

    def _clear(self) -> None:
        self._creators.clear()
        self._libraries.clear()


class _LibraryHandle:
    __slots__ = ("path",)

    def __init__(self, path):
        self.path = path


_registry = IPluginRegistry()


def get_plugin_registry() -> IPluginRegistry:
    return _registry


def get_builder_plugin_registry(capability):
    return _registry


def init_libnvinfer_plugins(logger, namespace) -> bool:
    """Registers nothing in the fake (there is no libnvinfer_plugin); returns True as the real call does."""
    set_global_logger(logger)
    return True


class IDimensionExpr:
    """A build-time shape expression. The fake's are constants or size-tensor placeholders."""

    __slots__ = ("_value", "_size_tensor")

    def __init__(self, value=None, size_tensor=False):
        self._value = value
        self._size_tensor = size_tensor

    def is_constant(self) -> bool:
        return self._value is not None

    def get_constant_value(self) -> int:
        if self._value is None:
            raise RuntimeError("getConstantValue() called on a non-constant IDimensionExpr")
        return self._value

    def is_size_tensor(self) -> bool:
        return self._size_tensor


def _fold(op: DimensionOperation, a: int, b: int) -> int:
    if op in (DimensionOperation.FLOOR_DIV, DimensionOperation.CEIL_DIV) and b == 0:
        raise ZeroDivisionError(f"IExprBuilder.operation({op}) by zero")
    return {DimensionOperation.SUM: lambda: a + b, DimensionOperation.PROD: lambda: a * b,
            DimensionOperation.MAX: lambda: max(a, b), DimensionOperation.MIN: lambda: min(a, b),
            DimensionOperation.SUB: lambda: a - b, DimensionOperation.EQUAL: lambda: int(a == b),
            DimensionOperation.LESS: lambda: int(a < b), DimensionOperation.FLOOR_DIV: lambda: a // b,
            DimensionOperation.CEIL_DIV: lambda: -(-a // b)}[op]()


class IExprBuilder:
    """Builds IDimensionExprs; with static shapes every operation folds to a constant."""

    def constant(self, value) -> IDimensionExpr:
        return IDimensionExpr(int(value))

    def operation(self, op, first, second) -> IDimensionExpr:
        if not (first.is_constant() and second.is_constant()):
            return IDimensionExpr(None)
        return IDimensionExpr(_fold(DimensionOperation(op), first.get_constant_value(),
                                    second.get_constant_value()))

    def declare_size_tensor(self, output_index, opt_value, upper_bound) -> IDimensionExpr:
        return IDimensionExpr(None, size_tensor=True)


class DimsExprs(list):
    """A list of IDimensionExpr (pyPlugin.cpp ``DimsExprs``)."""

    def __init__(self, arg=()):
        super().__init__([None] * arg if isinstance(arg, int) else arg)


class PluginTensorDesc:
    __slots__ = ("dims", "type", "format", "scale")

    def __init__(self):
        self.dims = Dims()
        self.type = DataType.FLOAT
        self.format = TensorFormat.LINEAR
        self.scale = 1.0


class DynamicPluginTensorDesc:
    __slots__ = ("desc", "min", "opt", "max")

    def __init__(self):
        self.desc = PluginTensorDesc()
        self.min = self.opt = self.max = Dims()


class ISymExpr:
    """What ``tensorrt.plugin.SymInt32()()`` hands TensorRT: an int expression and its width."""

    def __init__(self):
        self.type = None
        self.dtype = None
        self.expr = None
