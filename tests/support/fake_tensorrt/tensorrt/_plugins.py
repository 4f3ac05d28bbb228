"""Plugin plumbing (pyPlugin.cpp): fields, the process-wide registry, the V3 interfaces ``tensorrt.plugin`` builds
on, and shape expressions (constants only: the fake builds static shapes).
"""

from __future__ import annotations

import numpy as np

from ._core import DataType, DimensionOperation, Dims, Logger, PluginFieldType, Severity

_FIELD_NP = {PluginFieldType.INT32: np.int32, PluginFieldType.UNKNOWN: np.int8, PluginFieldType.INT8: np.int8,
             PluginFieldType.INT16: np.int16, PluginFieldType.FLOAT32: np.float32,
             PluginFieldType.FLOAT64: np.float64, PluginFieldType.INT64: np.int64, PluginFieldType.CHAR: np.int8}


class PluginField:
    """A raw buffer: ``size`` is the source's element count, ``data`` reinterprets the bytes by ``type``."""

    __slots__ = ("name", "type", "size", "_buf")

    def __init__(self, name="", data=None, type=PluginFieldType.UNKNOWN):
        self.name, self.type, self._buf, self.size = name, type, b"", 0
        if data is not None:
            view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data)
            self._buf = view.tobytes()
            self.size = int(np.prod(view.shape)) if view.ndim else 1

    @property
    def data(self) -> np.ndarray:
        if self.type not in _FIELD_NP:
            raise AttributeError("No known conversion for returning data from PluginField")
        return np.frombuffer(self._buf, dtype=_FIELD_NP[self.type], count=self.size).copy()


class PluginFieldCollection(list):
    """A list of PluginField (a bound ``std::vector``)."""


class IPluginCreatorV3Quick:
    """The creator ``tensorrt.plugin`` registers: ``create_plugin(name, namespace, fields, phase, request)``."""

    def __init__(self):
        self.name = self.plugin_version = self.plugin_namespace = ""
        self.field_names = PluginFieldCollection()


class IPluginV3:
    pass


class IPluginV3QuickCore:
    pass


class IPluginV3QuickBuild:
    pass


class IPluginV3QuickRuntime:
    pass


class IPluginV3QuickAOTBuild:
    pass


class IPluginRegistry:
    """Creators keyed by (name, version, namespace)."""

    __slots__ = ("_creators",)

    def __init__(self):
        self._creators: dict[tuple[str, str, str], IPluginCreatorV3Quick] = {}

    @property
    def all_creators(self) -> list:
        return list(self._creators.values())

    def register_creator(self, creator, plugin_namespace=""):
        if not isinstance(creator, IPluginCreatorV3Quick):
            raise TypeError("register_creator(): incompatible function arguments: creator must be a plugin creator")
        key = (str(creator.name), str(creator.plugin_version), str(plugin_namespace))
        if key in self._creators:
            Logger().log(Severity.ERROR, f"Plugin creator already registered - {key[2]}::{key[0]} version {key[1]}")
            return False
        self._creators[key] = creator
        return True

    def get_creator(self, type, version, plugin_namespace=""):
        return self._creators.get((str(type), str(version), str(plugin_namespace)))


_registry = IPluginRegistry()


def get_plugin_registry() -> IPluginRegistry:
    return _registry


class IDimensionExpr:
    """A build-time shape expression: a constant, or None for what is unknown until run time."""

    __slots__ = ("_value",)

    def __init__(self, value=None):
        self._value = value

    def is_constant(self) -> bool:
        return self._value is not None

    def get_constant_value(self) -> int:
        if self._value is None:
            raise RuntimeError("getConstantValue() called on a non-constant IDimensionExpr")
        return self._value


_FOLD = {DimensionOperation.SUM: int.__add__, DimensionOperation.PROD: int.__mul__, DimensionOperation.MAX: max,
         DimensionOperation.MIN: min, DimensionOperation.SUB: int.__sub__,
         DimensionOperation.EQUAL: lambda a, b: int(a == b), DimensionOperation.LESS: lambda a, b: int(a < b),
         DimensionOperation.FLOOR_DIV: int.__floordiv__, DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b)}


class IExprBuilder:
    """Builds IDimensionExprs; with static shapes every operation on constants folds to a constant."""

    def constant(self, value) -> IDimensionExpr:
        return IDimensionExpr(int(value))

    def operation(self, op, first, second) -> IDimensionExpr:
        if not (first.is_constant() and second.is_constant()):
            return IDimensionExpr()
        return IDimensionExpr(_FOLD[DimensionOperation(op)](first.get_constant_value(), second.get_constant_value()))


class DimsExprs(list):
    """A list of IDimensionExpr."""


class PluginTensorDesc:
    __slots__ = ("dims", "type", "scale")

    def __init__(self):
        self.dims, self.type, self.scale = Dims(), DataType.FLOAT, 1.0


class DynamicPluginTensorDesc:
    """A tensor as the builder describes it to a plugin (static here: min = opt = max = ``desc.dims``)."""

    __slots__ = ("desc", "min", "opt", "max")

    def __init__(self):
        self.desc = PluginTensorDesc()
        self.min = self.opt = self.max = Dims()
