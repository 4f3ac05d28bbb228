"""``Runtime``, ``ICudaEngine`` and ``IExecutionContext`` (``python/src/infer/pyCore.cpp``; NvInferRuntime.h).

There is no GPU: tensor addresses are HOST addresses (e.g. a CPU tensor's ``data_ptr()``). ``execute_async_v3``
returns False after an ERROR log when an I/O tensor has no address, when a USER_MANAGED context has no device
memory or too little, or when an output buffer overlaps another I/O buffer (real TensorRT leaves that undefined).
Otherwise it fills the user-managed scratch with 0xFF bytes (TensorRT owns it during a launch), reads every input
from its address, runs the ONNX with ONNX Runtime (``_fake.set_session_factory``), writes every output to its
address, appends the engine name to ``_fake.executions`` and returns True. BF16/FP8/INT4/FP4 I/O is not modelled.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import onnx

from . import _fake
from ._builder import fields_from_json, trt_version
from ._core import Dims, IHostMemory, ILogger, check_arg, emit, nptype, volume
from ._enums import (
    DataType,
    ExecutionContextAllocationStrategy,
    HardwareCompatibilityLevel,
    ProfilingVerbosity,
    Severity,
    TensorFormat,
    TensorIOMode,
    TensorLocation,
    TensorRTPhase,
)
from ._plugins import IPluginCreatorV3Quick, get_plugin_registry, set_global_logger


class Runtime:
    __slots__ = ("_logger", "max_threads", "error_recorder", "engine_host_code_allowed", "temporary_directory",
                 "DLA_core")

    def __init__(self, logger):
        self._logger = check_arg(logger, ILogger, "Runtime.__init__", "logger")
        self.max_threads = 16
        self.error_recorder = None
        self.engine_host_code_allowed = False
        self.temporary_directory = ""
        self.DLA_core = -1
        set_global_logger(logger)

    @property
    def logger(self):
        return self._logger

    def get_plugin_registry(self):
        return get_plugin_registry()

    def deserialize_cuda_engine(self, serialized_engine):
        try:
            data = memoryview(serialized_engine).tobytes()
        except TypeError:
            raise TypeError("deserialize_cuda_engine(): incompatible function arguments: serialized_engine must "
                            f"support the buffer protocol, got {type(serialized_engine).__name__}") from None
        where = "IRuntime::deserializeCudaEngine"
        try:
            header = _fake.read_plan(data)
        except (ValueError, UnicodeDecodeError):
            emit(self._logger, Severity.ERROR, f"{where}: Error Code 1: Serialization (Serialization assertion "
                 "magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
            return None
        if header["trt_version"] != trt_version():
            emit(self._logger, Severity.ERROR, f"{where}: Error Code 6: API Usage Error (The engine plan file is not "
                 f"compatible with this version of TensorRT, expecting library version {trt_version()} got "
                 f"{header['trt_version']}, please rebuild.)")
            return None
        for p in header["plugins"]:
            if p["impl"] == "AOT":
                continue  # the kernel is in the plan: nothing to look up
            creator = get_plugin_registry().get_creator(p["name"], p["version"], p["namespace"])
            if creator is None:
                emit(self._logger, Severity.ERROR, f"{where}: Error Code 1: Internal Error (Cannot deserialize plugin "
                     f"since corresponding IPluginCreator not found in Plugin Registry: {p['name']} version "
                     f"{p['version']} namespace {p['namespace']!r})")
                return None
            try:
                fields = fields_from_json(p["fields"])
                if isinstance(creator, IPluginCreatorV3Quick):
                    plugin = creator.create_plugin(p["name"], p["namespace"], fields, TensorRTPhase.RUNTIME)
                else:
                    plugin = creator.create_plugin(p["node"], fields, TensorRTPhase.RUNTIME)
            except Exception as e:  # noqa: BLE001
                emit(self._logger, Severity.ERROR, f"Exception caught in create_plugin(): {type(e).__name__}: {e}")
                plugin = None
            if plugin is None:
                emit(self._logger, Severity.ERROR, f"{where}: Error Code 1: Internal Error (Could not recreate "
                     f"plugin {p['namespace']}::{p['name']} for node {p['node']})")
                return None
        return ICudaEngine(header, _fake.plan_payload(data), data, self._logger)


class ICudaEngine:
    __slots__ = ("_header", "_payload", "_plan", "_logger", "_io", "_sessions", "error_recorder",
                 "weight_streaming_budget_v2")

    def __init__(self, header, payload, plan, logger):
        self._header, self._payload, self._plan, self._logger = header, payload, plan, logger
        self._io = {t["name"]: t for t in header["io"]}
        self._sessions = {}
        self.error_recorder = None
        self.weight_streaming_budget_v2 = -1

    # --- description ---
    @property
    def name(self) -> str:
        return self._header["name"]

    @property
    def num_layers(self) -> int:
        return self._header["num_layers"]

    @property
    def num_io_tensors(self) -> int:
        return len(self._header["io"])

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    @property
    def device_memory_size_v2(self) -> int:
        return self._header["device_memory_size"]

    def get_device_memory_size_for_profile_v2(self, profile_index) -> int:
        return self.device_memory_size_v2 if profile_index == 0 else 0

    @property
    def refittable(self) -> bool:
        return False

    @property
    def hardware_compatibility_level(self):
        return HardwareCompatibilityLevel[self._header["config"]["hardware_compatibility_level"]]

    @property
    def num_aux_streams(self) -> int:
        return max(0, self._header["config"]["max_aux_streams"])

    @property
    def streamable_weights_size(self) -> int:
        return 0

    def get_tensor_name(self, index):
        io = self._header["io"]
        return io[index]["name"] if 0 <= index < len(io) else None

    def __getitem__(self, index):
        n = self.num_io_tensors
        index = index + n if index < 0 else index
        if not 0 <= index < n:
            raise IndexError("Out of bounds")
        return self.get_tensor_name(index)

    def _tensor(self, name, func):
        t = self._io.get(name)
        if t is None:
            emit(self._logger, Severity.ERROR, f"ICudaEngine::{func}: Error Code 3: API Usage Error (Parameter check "
                 f"failed, condition: tensor name {name!r} is not an input or output of the engine)")
        return t

    def get_tensor_mode(self, name):
        t = self._io.get(name)
        return TensorIOMode.NONE if t is None else TensorIOMode[t["mode"]]

    def get_tensor_shape(self, name) -> Dims:
        t = self._tensor(name, "getTensorShape")
        return Dims(t["shape"]) if t is not None else Dims()

    def get_tensor_dtype(self, name):
        t = self._tensor(name, "getTensorDataType")
        return DataType[t["dtype"]] if t is not None else DataType.FLOAT

    def get_tensor_location(self, name):
        return TensorLocation.DEVICE

    def get_tensor_format(self, name, profile_index=0):
        return TensorFormat.LINEAR

    def is_shape_inference_io(self, name) -> bool:
        return False

    def get_aliased_input_tensor(self, name):
        return None

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._plan)

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        check_arg(strategy, ExecutionContextAllocationStrategy, "create_execution_context", "strategy")
        return IExecutionContext(self, strategy)

    # --- execution support ---
    def _model(self):
        """The ONNX for the session factory: a path, or bytes with any external data folded in."""
        src = self._header["onnx"]
        if not src["embedded"]:
            return src["path"]
        proto = onnx.load_model_from_string(self._payload)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            onnx.external_data_helper.load_external_data_for_model(proto, src["base_dir"] or os.getcwd())
            return proto.SerializeToString()
        return self._payload

    def _session(self):
        factory = _fake.session_factory()
        if factory not in self._sessions:
            try:
                self._sessions[factory] = factory(self._model())
            except Exception as e:
                plugins = [f"{p['namespace']}::{p['name']}" for p in self._header["plugins"]]
                hint = (f" The engine has plugin nodes ({', '.join(plugins)}): give ONNX Runtime an implementation "
                        "with tensorrt._fake.set_session_factory(fn).") if plugins else ""
                raise RuntimeError(f"fake TensorRT: could not create an ONNX Runtime session for engine "
                                   f"{self.name!r}: {e}.{hint}") from e
        return self._sessions[factory]


class IExecutionContext:
    __slots__ = ("_engine", "_strategy", "_addresses", "_scratch", "name", "debug_sync", "nvtx_verbosity",
                 "persistent_cache_limit", "profiler", "error_recorder", "enqueue_emits_profile",
                 "temporary_allocator")

    def __init__(self, engine, strategy):
        self._engine = engine
        self._strategy = strategy
        self._addresses: dict[str, int] = {}
        self._scratch = None  # (address, size or None) for USER_MANAGED
        self.name = ""
        self.debug_sync = False
        self.nvtx_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.persistent_cache_limit = 0
        self.profiler = None
        self.error_recorder = None
        self.enqueue_emits_profile = True
        self.temporary_allocator = None

    @property
    def engine(self) -> ICudaEngine:
        return self._engine

    @property
    def active_optimization_profile(self) -> int:
        return 0

    @property
    def all_binding_shapes_specified(self) -> bool:
        return True

    def _error(self, func, msg) -> bool:
        emit(self._engine._logger, Severity.ERROR, f"IExecutionContext::{func}: Error Code 3: API Usage Error ({msg})")
        return False

    def set_tensor_address(self, name, memory) -> bool:
        memory = int(check_arg(memory, int, "set_tensor_address", "memory"))
        if name not in self._engine._io:
            return self._error("setTensorAddress", f"Given invalid tensor name: {name}")
        self._addresses[name] = memory
        return True

    def get_tensor_address(self, name) -> int:
        return self._addresses.get(name, 0)

    def set_input_shape(self, name, shape) -> bool:
        t = self._engine._io.get(name)
        if t is None or t["mode"] != "INPUT":
            return self._error("setInputShape", f"Given invalid tensor name: {name}")
        if list(shape) != t["shape"]:
            return self._error("setInputShape", f"Static dimension mismatch for tensor {name}: engine shape "
                               f"{tuple(t['shape'])}, given {tuple(shape)}")
        return True

    def get_tensor_shape(self, name) -> Dims:
        return self._engine.get_tensor_shape(name)

    def get_tensor_strides(self, name) -> Dims:
        shape, strides, acc = list(self._engine.get_tensor_shape(name)), [], 1
        for d in reversed(shape):
            strides.insert(0, acc)
            acc *= max(d, 1)
        return Dims(strides)

    def infer_shapes(self) -> list:
        return []

    def set_optimization_profile_async(self, profile_index, stream_handle) -> bool:
        if profile_index != 0:
            raise RuntimeError("Error in set optimization profile async.")
        return True

    def _set_device_memory_v1(self, memory):
        self._scratch = (int(memory), None)

    device_memory = property(None, _set_device_memory_v1, doc="Write-only (pyCore.cpp binds no getter).")

    def set_device_memory(self, memory, size):
        self._scratch = (int(check_arg(memory, int, "set_device_memory", "memory")),
                         int(check_arg(size, int, "set_device_memory", "size")))

    def update_device_memory_size_for_shapes(self) -> int:
        return self._engine.device_memory_size_v2

    def execute_v2(self, bindings) -> bool:
        for name, addr in zip(self._engine._io, bindings, strict=False):
            self._addresses[name] = int(addr)
        return self._run("executeV2")

    def execute_async_v3(self, stream_handle) -> bool:
        check_arg(stream_handle, int, "execute_async_v3", "stream_handle")
        return self._run("enqueueV3")

    def _run(self, func) -> bool:
        eng = self._engine
        spans = []
        for name, t in eng._io.items():
            dtype = DataType[t["dtype"]]
            nbytes = int(volume(t["shape"]) * dtype.itemsize)
            addr = self._addresses.get(name, 0)
            if not addr and nbytes:
                kind = "input" if t["mode"] == "INPUT" else "output"
                return self._error(func, f"Neither address or allocator is set for {kind} tensor {name}. Call "
                                         "setOutputAllocator() or setTensorAddress() before enqueue/execute.")
            spans.append((name, t, dtype, addr, nbytes))
        if self._strategy == ExecutionContextAllocationStrategy.USER_MANAGED and eng.device_memory_size_v2:
            if self._scratch is None or not self._scratch[0]:
                return self._error(func, "Device memory is not set for an execution context created with "
                                         "ExecutionContextAllocationStrategy.USER_MANAGED.")
            if self._scratch[1] is not None and self._scratch[1] < eng.device_memory_size_v2:
                return self._error(func, f"Device memory size {self._scratch[1]} is smaller than the engine's "
                                         f"device_memory_size_v2 {eng.device_memory_size_v2}.")
        for name, t, _, addr, n in spans:
            if t["mode"] != "OUTPUT" or not n:
                continue
            for other, _, _, oaddr, on in spans:
                if other != name and on and addr < oaddr + on and oaddr < addr + n:
                    return self._error(func, f"The buffer of output tensor {name} [{addr:#x}, {addr + n:#x}) "
                                             f"overlaps the buffer of tensor {other} [{oaddr:#x}, {oaddr + on:#x}).")
        for name, _, dtype, _, _ in spans:
            if dtype not in (DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32, DataType.INT64,
                             DataType.BOOL, DataType.UINT8):
                raise NotImplementedError(f"the fake TensorRT cannot execute {dtype} I/O (tensor {name})")
        if self._strategy == ExecutionContextAllocationStrategy.USER_MANAGED and self._scratch:
            size = self._scratch[1] if self._scratch[1] is not None else eng.device_memory_size_v2
            ctypes.memset(self._scratch[0], 0xFF, min(size, eng.device_memory_size_v2))
        session = eng._session()
        feeds = {}
        wanted = {i.name: i for i in session.get_inputs()}
        for _name, t, dtype, addr, n in spans:
            if t["mode"] == "INPUT" and t["onnx_name"] in wanted:
                arr = _view(addr, n, dtype, t["shape"]).copy()
                feeds[t["onnx_name"]] = arr.astype(_ort_dtype(wanted[t["onnx_name"]].type, arr.dtype))
        outs = [s for s in spans if s[1]["mode"] == "OUTPUT"]
        results = session.run([s[1]["onnx_name"] for s in outs], feeds)
        for (name, t, dtype, addr, n), value in zip(outs, results, strict=True):
            value = np.asarray(value)
            if list(value.shape) != t["shape"]:
                raise RuntimeError(f"fake TensorRT: ONNX Runtime gave {name} shape {value.shape}, the engine says "
                                   f"{tuple(t['shape'])}")
            if n:
                _view(addr, n, dtype, t["shape"])[...] = value.astype(nptype(dtype))
        _fake.executions.append(eng.name)
        return True


def _view(addr, nbytes, dtype, shape) -> np.ndarray:
    buf = (ctypes.c_ubyte * nbytes).from_address(addr) if nbytes else bytearray()
    return np.frombuffer(buf, dtype=nptype(dtype)).reshape(shape)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def _ort_dtype(ort_type: str, fallback):
    return _ORT_TYPES.get(ort_type, fallback)

