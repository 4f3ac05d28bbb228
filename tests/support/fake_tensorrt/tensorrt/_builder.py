"""``Builder``, ``IBuilderConfig`` and ``ITimingCache`` (``python/src/infer/pyCore.cpp``; docs: pyCoreDoc.h).

``build_serialized_network`` returns an ``IHostMemory`` plan or None after logging the reason at ERROR. The plan is
``_fake.PLAN_MAGIC`` + a JSON header (TensorRT version, I/O tensors, device memory size, plugins, and for an AOT
plugin node what its ``aot_impl`` returned, evaluated) + the ONNX bytes when the model was parsed from bytes.
Plugin build steps follow ``tensorrt/plugin/_plugin_class.py``: supported type/format combinations must include
the network's types, every advertised tactic is compiled (``aot_impl`` is called per tactic) and the first wins.
The timing cache holds one entry per distinct (op, input types and shapes) of the layers built with it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys

from . import _fake
from ._core import IHostMemory, ILogger, check_arg, emit
from ._enums import (
    BuilderFlag,
    EngineCapability,
    HardwareCompatibilityLevel,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    ProfilingVerbosity,
    Severity,
    TensorFormat,
)
from ._network import INetworkDefinition, IPluginV3Layer
from ._plugins import (
    DimsExprs,
    DynamicPluginTensorDesc,
    IExprBuilder,
    IPluginV3QuickAOTBuild,
    IPluginV3QuickRuntime,
    set_global_logger,
)

_CACHE_MAGIC = b"FAKETRTC"
_POOL_DEFAULTS = {MemoryPoolType.WORKSPACE: 80 << 30, MemoryPoolType.DLA_MANAGED_SRAM: 1 << 20,
                  MemoryPoolType.DLA_LOCAL_DRAM: 1 << 30, MemoryPoolType.DLA_GLOBAL_DRAM: 512 << 20,
                  MemoryPoolType.TACTIC_DRAM: 80 << 30, MemoryPoolType.TACTIC_SHARED_MEMORY: 228 << 10}


def trt_version() -> str:
    """``tensorrt.__version__`` now (tests monkeypatch it)."""
    return sys.modules[__package__].__version__


class TimingCacheKey:
    __slots__ = ("_hex",)

    def __init__(self, hex_text):
        self._hex = hex_text

    @staticmethod
    def parse(text):
        if len(text) != 34:
            raise ValueError("The text should have exactly 34 characters.")
        if text[:2] not in ("0x", "0X"):
            raise ValueError("The text should start with prefix `0x` or `0X`.")
        int(text[2:], 16)
        return TimingCacheKey(text.lower())

    def __str__(self):
        return self._hex

    def __eq__(self, other):
        return isinstance(other, TimingCacheKey) and other._hex == self._hex

    def __hash__(self):
        return hash(self._hex)


class TimingCacheValue:
    __slots__ = ("tacticHash", "timingMSec")

    def __init__(self, tacticHash, timingMSec):  # noqa: N803 - pyCore.cpp names
        self.tacticHash = tacticHash
        self.timingMSec = timingMSec


def _key_of(layer_key: str) -> str:
    return "0x" + hashlib.sha256(layer_key.encode()).hexdigest()[:32]


class ITimingCache:
    __slots__ = ("_entries", "_version")

    def __init__(self, entries=None, version=None):
        self._entries: dict[str, dict] = dict(entries or {})
        self._version = version or trt_version()

    def serialize(self) -> IHostMemory:
        body = json.dumps({"trt_version": self._version, "entries": self._entries}, sort_keys=True).encode()
        return IHostMemory(_CACHE_MAGIC + body)

    def combine(self, input_cache, ignore_mismatch) -> bool:
        check_arg(input_cache, ITimingCache, "combine", "input_cache")
        if input_cache._version != self._version:
            return False
        for k, v in input_cache._entries.items():
            self._entries.setdefault(k, v)
        return True

    def reset(self) -> bool:
        self._entries.clear()
        return True

    def queryKeys(self) -> list:  # noqa: N802 - pyCore.cpp name
        return [TimingCacheKey(k) for k in self._entries]

    def query(self, key):
        entry = self._entries.get(str(key))
        if entry is None:
            return TimingCacheValue(0, -1.0)
        return TimingCacheValue(entry["tactic"], entry["ms"])

    def update(self, key, value) -> bool:
        if str(key) not in self._entries:
            return False
        self._entries[str(key)] = {"layer": self._entries[str(key)]["layer"], "tactic": int(value.tacticHash),
                                   "ms": float(value.timingMSec)}
        return True

    def _record(self, layer_key: str) -> None:
        key = _key_of(layer_key)
        if key not in self._entries:
            self._entries[key] = {"layer": layer_key, "tactic": int(key[2:18], 16), "ms": 0.01}


class IBuilderConfig:
    __slots__ = ("_logger", "_flags", "_pools", "_cache", "_opt_level", "hardware_compatibility_level",
                 "max_aux_streams", "profiling_verbosity", "avg_timing_iterations", "max_num_tactics",
                 "_plugins_to_serialize", "profile_stream", "engine_capability", "progress_monitor")

    def __init__(self, logger):
        self._logger = logger
        self._flags = 0
        self._pools = dict(_POOL_DEFAULTS)
        self._cache = None
        self._opt_level = 3
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
        self.max_aux_streams = -1
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.avg_timing_iterations = 1
        self.max_num_tactics = -1
        self._plugins_to_serialize: list[str] = []
        self.profile_stream = 0
        self.engine_capability = EngineCapability.STANDARD
        self.progress_monitor = None

    @property
    def builder_optimization_level(self) -> int:
        return self._opt_level

    @builder_optimization_level.setter
    def builder_optimization_level(self, level):
        """NvInfer.h: must be non-negative; above 5 behaves as 5. A negative level is an API error (ignored)."""
        level = int(level)
        if level < 0:
            emit(self._logger, Severity.ERROR, "IBuilderConfig::setBuilderOptimizationLevel: Error Code 3: API Usage "
                 f"Error (Parameter check failed, condition: level >= 0. Provided level: {level})")
            return
        self._opt_level = level

    @property
    def flags(self) -> int:
        return self._flags

    @flags.setter
    def flags(self, value):
        self._flags = int(value)

    def set_flag(self, flag):
        self._flags |= 1 << int(check_arg(flag, BuilderFlag, "set_flag", "flag"))

    def clear_flag(self, flag):
        self._flags &= ~(1 << int(check_arg(flag, BuilderFlag, "clear_flag", "flag")))

    def get_flag(self, flag) -> bool:
        return bool(self._flags & (1 << int(check_arg(flag, BuilderFlag, "get_flag", "flag"))))

    def set_memory_pool_limit(self, pool, pool_size):
        check_arg(pool, MemoryPoolType, "set_memory_pool_limit", "pool")
        self._pools[pool] = int(check_arg(pool_size, int, "set_memory_pool_limit", "pool_size"))

    def get_memory_pool_limit(self, pool) -> int:
        return self._pools[check_arg(pool, MemoryPoolType, "get_memory_pool_limit", "pool")]

    def create_timing_cache(self, serialized_timing_cache):
        data = memoryview(serialized_timing_cache).tobytes()
        if not data:
            return ITimingCache()
        try:
            if not data.startswith(_CACHE_MAGIC):
                raise ValueError("magic")
            body = json.loads(data[len(_CACHE_MAGIC):].decode())
            return ITimingCache(body["entries"], body["trt_version"])
        except Exception:  # noqa: BLE001
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

    def get_timing_cache(self):
        return self._cache

    @property
    def plugins_to_serialize(self) -> list:
        return list(self._plugins_to_serialize)

    @plugins_to_serialize.setter
    def plugins_to_serialize(self, paths):
        self._plugins_to_serialize = [check_arg(p, str, "plugins_to_serialize", "paths[i]") for p in paths]

    @property
    def num_optimization_profiles(self) -> int:
        return 0

    def reset(self):
        self.__init__(self._logger)


class _BuildError(Exception):
    pass


class Builder:
    __slots__ = ("_logger", "max_threads", "error_recorder")

    def __init__(self, logger):
        self._logger = check_arg(logger, ILogger, "Builder.__init__", "logger")
        self.max_threads = 16
        self.error_recorder = None
        set_global_logger(logger)

    @property
    def logger(self):
        return self._logger

    def create_network(self, flags=0):
        """``flags``: an int bitmask of ``1 << int(NetworkDefinitionCreationFlag.X)`` (an enum passes as its int)."""
        flags = check_arg(flags, int, "create_network", "flags").__index__()
        if flags >> len(NetworkDefinitionCreationFlag):
            emit(self._logger, Severity.ERROR, f"IBuilder::createNetworkV2: Error Code 3: API Usage Error "
                 f"(invalid NetworkDefinitionCreationFlags {flags:#x})")
            return None
        return INetworkDefinition(self, flags)

    def create_builder_config(self):
        return IBuilderConfig(self._logger)

    def reset(self):
        pass

    def build_serialized_network(self, network, config):
        check_arg(network, INetworkDefinition, "build_serialized_network", "network")
        check_arg(config, IBuilderConfig, "build_serialized_network", "config")
        try:
            plan = self._build(network, config)
        except _BuildError as e:
            emit(self._logger, Severity.ERROR, str(e))
            return None
        return IHostMemory(plan)

    def is_network_supported(self, network, config) -> bool:
        return network._source is not None and network.num_outputs > 0

    def _build(self, network, config) -> bytes:
        src = network._source
        if src is None or network.num_outputs == 0:
            raise _BuildError("IBuilder::buildSerializedNetwork: Error Code 4: API Usage Error "
                              "(Network must have at least one output)")
        for t in network._inputs:
            if -1 in t.shape:
                raise _BuildError(f"IBuilder::buildSerializedNetwork: Error Code 4: API Usage Error (Network has "
                                  f"dynamic or shape inputs, but no optimization profile has been defined. Input "
                                  f"{t.name} has shape {t.shape})")
        plugins = [_build_plugin(layer) for layer in network._layers if isinstance(layer, IPluginV3Layer)]
        self._use_timing_cache(src.layer_keys, config)
        io = [{"name": t.name, "onnx_name": t.name[2:] if t.is_network_input and t.name.startswith("__")
               and t.name[2:] in {o.name for o in network._outputs} else t.name,
               "mode": "INPUT" if t.is_network_input else "OUTPUT", "shape": list(t.shape), "dtype": t.dtype.name}
              for t in network._inputs + network._outputs]
        header = {
            "format": 1, "trt_version": trt_version(), "name": network.name, "num_layers": network.num_layers,
            "io": io, "device_memory_size": max(256, -(-src.activation_bytes // 256) * 256),
            "onnx": {"path": src.path, "base_dir": src.base_dir, "embedded": src.model_bytes is not None,
                     "sha256": hashlib.sha256(src.model_bytes or src.path.encode()).hexdigest()},
            "plugins": plugins,
            "config": {"flags": config.flags, "builder_optimization_level": config.builder_optimization_level,
                       "hardware_compatibility_level": config.hardware_compatibility_level.name,
                       "max_aux_streams": config.max_aux_streams,
                       "plugins_to_serialize": config.plugins_to_serialize},
        }
        return _fake.write_plan(header, src.model_bytes)

    def _use_timing_cache(self, layer_keys, config) -> None:
        cache = config.get_timing_cache()
        if config.get_flag(BuilderFlag.DISABLE_TIMING_CACHE) or config.builder_optimization_level == 0:
            return
        if cache is None:
            cache = ITimingCache()  # the builder's private cache, dropped after the build
        if config.get_flag(BuilderFlag.ERROR_ON_TIMING_CACHE_MISS):
            missing = [k for k in layer_keys if _key_of(k) not in cache._entries]
            if missing:
                raise _BuildError(f"IBuilder::buildSerializedNetwork: Error Code 10: Internal Error (timing cache "
                                  f"miss with ERROR_ON_TIMING_CACHE_MISS set: {missing[0]})")
        for k in layer_keys:
            cache._record(k)


def _desc(tensor) -> DynamicPluginTensorDesc:
    d = DynamicPluginTensorDesc()
    d.desc.dims = tensor.shape
    d.desc.type = tensor.dtype
    d.desc.format = TensorFormat.LINEAR
    d.min = d.opt = d.max = tensor.shape
    return d


class _LaunchParams:
    """What ``get_launch_params`` writes into (``IKernelLaunchParams``)."""

    def __init__(self):
        for name in ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem"):
            setattr(self, name, None)


class _SymExprSetter(list):
    """``ISymExprs``: ``nbSymExprs`` then ``[i] = ISymExpr``."""

    @property
    def nbSymExprs(self):  # noqa: N802
        return len(self)

    @nbSymExprs.setter
    def nbSymExprs(self, n):  # noqa: N802
        self[:] = [None] * n


def _value(expr) -> int:
    """A launch parameter or extra arg as TensorRT receives it (ISymExpr / IDimensionExpr / int), as an int."""
    expr = getattr(expr, "expr", expr)
    if expr is None or not expr.is_constant():
        raise _BuildError("a kernel launch parameter or extra argument has no build-time value: build it from "
                          "Python ints and ShapeExprs (a numpy integer makes an empty SymInt32), and note that the "
                          "fake builds static shapes only")
    return int(expr.get_constant_value())


def _build_plugin(layer: IPluginV3Layer) -> dict:
    plugin, info = layer._plugin, layer._plugin_info
    where = f"node {info['node']} ({info['namespace']}::{info['name']})"
    ins, outs = layer._inputs, layer._outputs
    entry = {k: info[k] for k in ("node", "name", "namespace", "version", "request")}
    if not isinstance(plugin, (IPluginV3QuickAOTBuild, IPluginV3QuickRuntime)):
        entry.update(impl="V3", fields=_fields_json(info["fields"]))
        return entry
    in_out = [_desc(t) for t in ins + outs]
    try:
        combos = plugin.get_supported_format_combinations(in_out, len(ins))
        wanted = [(t.dtype, TensorFormat.LINEAR) for t in ins + outs]
        n = len(in_out)
        found = [list(combos[i: i + n]) for i in range(0, len(combos), n)
                 if [(c.type, c.format) for c in combos[i: i + n]] == wanted]
        if not found:
            raise _BuildError(f"IBuilder::buildSerializedNetwork: Error Code 10: Internal Error (Could not find any "
                              f"implementation for {where}: no supported type/format combination matches "
                              f"{[d.name for d, _ in wanted]})")
        plugin.configure_plugin(in_out[: len(ins)], in_out[len(ins):])
        tactics = sorted(plugin.get_valid_tactics()) or [0]
        if isinstance(plugin, IPluginV3QuickAOTBuild):
            compiled = [_compile_aot(plugin, layer, in_out, t) for t in tactics]
            entry.update(impl="AOT", **compiled[0], tactics_compiled=tactics)
        else:
            plugin.set_tactic(tactics[0])
            entry.update(impl="JIT", tactic=tactics[0], fields=_fields_json(plugin.get_fields_to_serialize()))
    except _BuildError:
        raise
    except Exception as e:  # noqa: BLE001 - TensorRT logs the Python exception and fails the build
        raise _BuildError(f"IBuilder::buildSerializedNetwork: Error Code 9: API Usage Error (Exception in plugin "
                          f"{where}: {type(e).__name__}: {e})") from None
    return entry


def _compile_aot(plugin, layer, in_out, tactic) -> dict:
    exprs = IExprBuilder()
    plugin.set_tactic(tactic)
    launch, args = _LaunchParams(), _SymExprSetter()
    in_exprs = [DimsExprs([exprs.constant(d) for d in t.shape]) for t in layer._inputs]
    plugin.get_launch_params(in_exprs, in_out, len(layer._inputs), launch, args, exprs)
    name, ptx = plugin.get_kernel([d.desc for d in in_out[: len(layer._inputs)]],
                                  [d.desc for d in in_out[len(layer._inputs):]])
    name = name.decode() if isinstance(name, bytes) else str(name)
    ptx = ptx.encode() if isinstance(ptx, str) else bytes(ptx)
    return {"tactic": tactic, "kernel_name": name, "ptx_sha256": hashlib.sha256(ptx).hexdigest(),
            "ptx_size": len(ptx),
            "launch_params": {k: _value(v) for k, v in vars(launch).items()},
            "extra_args": [_value(a) for a in args]}


def _fields_json(fields) -> list:
    return [{"name": f.name, "type": f.type.name, "size": f.size, "data": base64.b64encode(f._buf).decode()}
            for f in fields]


def fields_from_json(items):
    from ._enums import PluginFieldType
    from ._plugins import PluginField, PluginFieldCollection

    out = PluginFieldCollection()
    for it in items:
        f = PluginField(it["name"])
        f.type, f.size, f._buf = PluginFieldType[it["type"]], it["size"], base64.b64decode(it["data"])
        out.append(f)
    return out

