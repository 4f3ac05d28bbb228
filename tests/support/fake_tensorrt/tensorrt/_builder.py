"""``Builder``, ``IBuilderConfig`` and ``ITimingCache`` (pyCore.cpp, pyCoreDoc.h). A plan is ``_fake.PLAN_MAGIC``
+ a JSON header (what ``deserialize_cuda_engine`` checks, what an AOT plugin's ``aot_impl`` returned, evaluated) +
the ONNX bytes after ``parse``; a failed build logs why at ERROR and returns None.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys

from . import _fake
from ._core import (
    BuilderFlag,
    IHostMemory,
    ILogger,
    MemoryPoolType,
    PluginFieldType,
    Severity,
    check_arg,
    emit,
)
from ._parser import INetworkDefinition
from ._plugins import (
    DimsExprs,
    DynamicPluginTensorDesc,
    IExprBuilder,
    IPluginV3QuickAOTBuild,
    PluginField,
    PluginFieldCollection,
)

_CACHE_MAGIC = b"FAKETRTC"
_LAUNCH_FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")


def trt_version() -> str:
    """``tensorrt.__version__`` now: tests change it to play another TensorRT."""
    return sys.modules[__package__].__version__


class ITimingCache:
    __slots__ = ("_layers", "_version")

    def __init__(self, layers=(), version=None):
        self._layers, self._version = set(layers), version or trt_version()

    def serialize(self) -> IHostMemory:
        body = {"trt_version": self._version, "layers": sorted(self._layers)}
        return IHostMemory(_CACHE_MAGIC + json.dumps(body).encode())


class IBuilderConfig:
    __slots__ = ("_logger", "_flags", "_pools", "_cache", "_opt_level")

    def __init__(self, logger):
        self._logger, self._pools, self._cache, self._opt_level = logger, {}, None, 3
        self._flags = 1 << int(BuilderFlag.TF32)  # pyCoreDoc.h: TF32 is enabled by default

    @property
    def builder_optimization_level(self) -> int:
        return self._opt_level

    @builder_optimization_level.setter
    def builder_optimization_level(self, level):
        """NvInfer.h: must be non-negative (a negative level is an API error, ignored); above 5 acts as 5."""
        if int(level) < 0:
            emit(self._logger, Severity.ERROR, "IBuilderConfig::setBuilderOptimizationLevel: Error Code 3: API Usage "
                 f"Error (Parameter check failed, condition: level >= 0. Provided level: {level})")
            return
        self._opt_level = int(level)

    flags = property(lambda self: self._flags)

    def set_flag(self, flag):
        self._flags |= 1 << int(check_arg(flag, BuilderFlag, "set_flag", "flag"))

    def clear_flag(self, flag):
        self._flags &= ~(1 << int(check_arg(flag, BuilderFlag, "clear_flag", "flag")))

    def get_flag(self, flag) -> bool:
        return bool(self._flags & (1 << int(check_arg(flag, BuilderFlag, "get_flag", "flag"))))

    def set_memory_pool_limit(self, pool, pool_size):
        check_arg(pool, MemoryPoolType, "set_memory_pool_limit", "pool")
        self._pools[pool] = check_arg(pool_size, int, "set_memory_pool_limit", "pool_size")

    def get_memory_pool_limit(self, pool) -> int:
        return self._pools.get(check_arg(pool, MemoryPoolType, "get_memory_pool_limit", "pool"), 80 << 30)

    def create_timing_cache(self, serialized_timing_cache):
        data = memoryview(serialized_timing_cache).tobytes()
        if not data:
            return ITimingCache()
        try:
            body = json.loads(data.removeprefix(_CACHE_MAGIC).decode()) if data.startswith(_CACHE_MAGIC) else None
            return ITimingCache(body["layers"], body["trt_version"])
        except (TypeError, KeyError, ValueError):
            emit(self._logger, Severity.ERROR, "IBuilderConfig::createTimingCache: Error Code 1: Internal Error "
                 "(Failed to deserialize the timing cache: invalid or corrupted data)")
            return None

    def set_timing_cache(self, cache, ignore_mismatch) -> bool:
        check_arg(cache, ITimingCache, "set_timing_cache", "cache")
        if cache._version != trt_version() and not ignore_mismatch:
            emit(self._logger, Severity.ERROR, "IBuilderConfig::setTimingCache: the timing cache was created by "
                 f"TensorRT {cache._version}, this is {trt_version()}")
            return False
        self._cache = cache
        return True


class _BuildError(Exception):
    pass


class Builder:
    __slots__ = ("_logger",)

    def __init__(self, logger):
        self._logger = check_arg(logger, ILogger, "Builder.__init__", "logger")

    def create_network(self, flags=0):
        """``flags``: a bitmask of ``1 << int(NetworkDefinitionCreationFlag.X)`` (an enum passes as its value)."""
        return INetworkDefinition(check_arg(flags, int, "create_network", "flags").__index__())

    def create_builder_config(self):
        return IBuilderConfig(self._logger)

    def build_serialized_network(self, network, config):
        check_arg(network, INetworkDefinition, "build_serialized_network", "network")
        check_arg(config, IBuilderConfig, "build_serialized_network", "config")
        try:
            return IHostMemory(_build(network, config))
        except _BuildError as e:
            emit(self._logger, Severity.ERROR, f"IBuilder::buildSerializedNetwork: {e}")
            return None


def _build(network, config) -> bytes:
    src = network._source
    if src is None or network.num_outputs == 0:
        raise _BuildError("Error Code 4: API Usage Error (Network must have at least one output)")
    for t in network._inputs:
        if -1 in t.shape:
            raise _BuildError(f"Error Code 4: API Usage Error (Network has dynamic or shape inputs, but no "
                              f"optimization profile has been defined. Input {t.name} has shape {t.shape})")
    plugins = [_build_plugin(layer) for layer in network._plugins]
    if not (config.get_flag(BuilderFlag.DISABLE_TIMING_CACHE) or config.builder_optimization_level == 0):
        (config._cache or ITimingCache())._layers.update(src.layer_keys)
    outputs = {o.name for o in network._outputs}
    io = [{"name": t.name, "onnx_name": t.name[2:] if t.is_network_input and t.name[2:] in outputs else t.name,
           "mode": "INPUT" if t.is_network_input else "OUTPUT", "shape": list(t.shape), "dtype": t.dtype.name}
          for t in network._inputs + network._outputs]
    header = {"trt_version": trt_version(), "name": network.name, "num_layers": network.num_layers, "io": io,
              "device_memory_size": max(256, -(-src.activation_bytes // 256) * 256), "plugins": plugins,
              "onnx": {"path": src.path, "base_dir": src.base_dir, "embedded": src.model_bytes is not None},
              "config": {"flags": config.flags, "builder_optimization_level": config.builder_optimization_level}}
    return _fake.write_plan(header, src.model_bytes)


class _LaunchParams:
    """``IKernelLaunchParams``: where ``get_launch_params`` writes the grid, block and shared memory."""

    __slots__ = _LAUNCH_FIELDS


class _SymExprs(list):
    """``ISymExprs``: TensorRT's setter for the extra kernel arguments (``nbSymExprs``, then ``[i] = expr``)."""

    nbSymExprs = property(len, lambda self, n: self.__setitem__(slice(None), [None] * n))  # noqa: N815


def _value(expr) -> int:
    """A launch parameter or extra argument as TensorRT receives it (an IDimensionExpr), as an int."""
    if expr is None or not expr.is_constant():
        raise _BuildError("a kernel launch parameter or extra argument has no build-time value: build it from "
                          "Python ints and ShapeExprs (a numpy integer makes an empty SymInt32); the fake builds "
                          "static shapes only")
    return int(expr.get_constant_value())


def _build_plugin(layer: dict) -> dict:
    plugin, info, ins, outs = layer["plugin"], layer["info"], layer["inputs"], layer["outputs"]
    where = f"node {info['node']} ({info['namespace']}::{info['name']})"
    in_out = [DynamicPluginTensorDesc() for _ in ins + outs]
    for d, t in zip(in_out, ins + outs, strict=True):
        d.desc.dims, d.desc.type, d.min, d.opt, d.max = t.shape, t.dtype, t.shape, t.shape, t.shape
    try:
        plugin.set_tactic(0)
        if not isinstance(plugin, IPluginV3QuickAOTBuild):
            return {**info, "impl": "JIT", "fields": [
                {"name": f.name, "type": f.type.name, "size": f.size, "data": base64.b64encode(f._buf).decode()}
                for f in plugin.get_fields_to_serialize()]}
        exprs, args, launch = IExprBuilder(), _SymExprs(), _LaunchParams()
        plugin.get_launch_params([DimsExprs(exprs.constant(d) for d in t.shape) for t in ins], in_out, len(ins),
                                 launch, args, exprs)
        name, ptx = plugin.get_kernel([d.desc for d in in_out[: len(ins)]], [d.desc for d in in_out[len(ins):]])
    except Exception as e:  # noqa: BLE001 - TensorRT logs the Python exception and fails the build
        raise _BuildError(f"Error Code 9: API Usage Error (Exception in plugin {where}: {type(e).__name__}: {e})"
                          ) from None
    ptx = ptx.encode() if isinstance(ptx, str) else bytes(ptx)
    return {**info, "impl": "AOT", "kernel_name": name.decode() if isinstance(name, bytes) else str(name),
            "ptx_sha256": hashlib.sha256(ptx).hexdigest(), "ptx_size": len(ptx),
            "launch_params": {k: _value(getattr(launch, k, None)) for k in _LAUNCH_FIELDS},
            "extra_args": [_value(a) for a in args]}


def fields_from_json(items) -> PluginFieldCollection:
    """The fields of a JIT plugin node, as the plan keeps them."""
    out = PluginFieldCollection()
    for it in items:
        f = PluginField(it["name"], type=PluginFieldType[it["type"]])
        f.size, f._buf = it["size"], base64.b64decode(it["data"])
        out.append(f)
    return out
