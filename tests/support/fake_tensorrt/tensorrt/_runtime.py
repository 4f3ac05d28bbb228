"""``Runtime``, ``ICudaEngine`` and ``IExecutionContext`` (pyCore.cpp, NvInferRuntime.h). Addresses are HOST
addresses; ``execute_async_v3`` checks them as ../README.md says, then runs the ONNX on ONNX Runtime.
"""

from __future__ import annotations

import ctypes
import math
import os

import numpy as np
import onnx

from . import _fake
from ._builder import fields_from_json, trt_version
from ._core import (
    DataType,
    Dims,
    ExecutionContextAllocationStrategy,
    IHostMemory,
    ILogger,
    Severity,
    TensorIOMode,
    TensorRTPhase,
    buffer_bytes,
    check_arg,
    emit,
    nptype,
)
from ._plugins import get_plugin_registry


class Runtime:
    __slots__ = ("_logger",)

    def __init__(self, logger):
        self._logger = check_arg(logger, ILogger, "Runtime.__init__", "logger")

    def deserialize_cuda_engine(self, serialized_engine):
        data = buffer_bytes(serialized_engine, "deserialize_cuda_engine", "serialized_engine")
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
        for p in (p for p in header["plugins"] if p["impl"] == "JIT"):
            creator = get_plugin_registry().get_creator(p["name"], p["version"], p["namespace"])
            if creator is None:
                emit(self._logger, Severity.ERROR, f"{where}: Error Code 1: Internal Error (Cannot deserialize plugin "
                     f"since corresponding IPluginCreator not found in Plugin Registry: {p['name']} version "
                     f"{p['version']} namespace {p['namespace']!r})")
                return None
            try:
                plugin = creator.create_plugin(p["name"], p["namespace"], fields_from_json(p["fields"]),
                                               TensorRTPhase.RUNTIME)
            except Exception as e:  # noqa: BLE001
                emit(self._logger, Severity.ERROR, f"Exception caught in create_plugin(): {type(e).__name__}: {e}")
                plugin = None
            if plugin is None:
                emit(self._logger, Severity.ERROR, f"{where}: Error Code 1: Internal Error (Could not recreate "
                     f"plugin {p['namespace']}::{p['name']} for node {p['node']})")
                return None
        return ICudaEngine(header, data, self._logger)


class ICudaEngine:
    __slots__ = ("_header", "_plan", "_logger", "_io", "_sessions")

    def __init__(self, header, plan, logger):
        self._header, self._plan, self._logger = header, plan, logger
        self._io = {t["name"]: t for t in header["io"]}
        self._sessions = {}

    name = property(lambda self: self._header["name"])
    num_io_tensors = property(lambda self: len(self._header["io"]))
    device_memory_size_v2 = property(lambda self: self._header["device_memory_size"])

    def get_tensor_name(self, index):
        io = self._header["io"]
        return io[index]["name"] if 0 <= index < len(io) else None

    def get_tensor_mode(self, name):
        t = self._io.get(name)
        return TensorIOMode.NONE if t is None else TensorIOMode[t["mode"]]

    def _tensor(self, name, func):
        if name not in self._io:
            emit(self._logger, Severity.ERROR, f"ICudaEngine::{func}: Error Code 3: API Usage Error (Parameter check "
                 f"failed, condition: tensor name {name!r} is not an input or output of the engine)")
        return self._io.get(name)

    def get_tensor_shape(self, name) -> Dims:
        t = self._tensor(name, "getTensorShape")
        return Dims(t["shape"] if t is not None else ())

    def get_tensor_dtype(self, name):
        t = self._tensor(name, "getTensorDataType")
        return DataType[t["dtype"]] if t is not None else DataType.FLOAT

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._plan)

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        check_arg(strategy, ExecutionContextAllocationStrategy, "create_execution_context", "strategy")
        return IExecutionContext(self, strategy)

    def _session(self):
        """The ONNX Runtime session of the session factory now (``_fake.set_session_factory``)."""
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

    def _model(self):
        """The ONNX: its path, or the embedded bytes with any external data folded in."""
        src = self._header["onnx"]
        if not src["embedded"]:
            return src["path"]
        payload = _fake.plan_payload(self._plan)
        proto = onnx.load_model_from_string(payload)
        if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            return payload
        onnx.external_data_helper.load_external_data_for_model(proto, src["base_dir"] or os.getcwd())
        return proto.SerializeToString()


class IExecutionContext:
    __slots__ = ("_engine", "_strategy", "_addresses", "_scratch")

    def __init__(self, engine, strategy):
        self._engine, self._strategy = engine, strategy
        self._addresses: dict[str, int] = {}
        self._scratch = None  # (address, size) of the USER_MANAGED device memory

    def _error(self, func, msg) -> bool:
        emit(self._engine._logger, Severity.ERROR, f"IExecutionContext::{func}: Error Code 3: API Usage Error ({msg})")
        return False

    def set_tensor_address(self, name, memory) -> bool:
        memory = check_arg(memory, int, "set_tensor_address", "memory")
        if name not in self._engine._io:
            return self._error("setTensorAddress", f"Given invalid tensor name: {name}")
        self._addresses[name] = memory
        return True

    def get_tensor_address(self, name) -> int:
        return self._addresses.get(name, 0)

    def set_device_memory(self, memory, size):
        self._scratch = (check_arg(memory, int, "set_device_memory", "memory"),
                         check_arg(size, int, "set_device_memory", "size"))

    def execute_async_v3(self, stream_handle) -> bool:
        check_arg(stream_handle, int, "execute_async_v3", "stream_handle")
        eng, func, spans = self._engine, "enqueueV3", []
        for name, t in eng._io.items():
            dtype = DataType[t["dtype"]]
            nbytes, addr = int(math.prod(t["shape"]) * dtype.itemsize), self._addresses.get(name, 0)
            if not addr and nbytes:
                return self._error(func, f"Neither address or allocator is set for {t['mode'].lower()} tensor "
                                         f"{name}. Call setOutputAllocator() or setTensorAddress() before "
                                         "enqueue/execute.")
            spans.append((name, t, dtype, addr, nbytes))
        size = eng.device_memory_size_v2
        if self._strategy == ExecutionContextAllocationStrategy.USER_MANAGED and size:
            if self._scratch is None or not self._scratch[0]:
                return self._error(func, "Device memory is not set for an execution context created with "
                                         "ExecutionContextAllocationStrategy.USER_MANAGED.")
            if self._scratch[1] < size:
                return self._error(func, f"Device memory size {self._scratch[1]} is smaller than the engine's "
                                         f"device_memory_size_v2 {size}.")
        for name, t, _, addr, n in spans:
            for other, _, _, oaddr, on in spans:
                if t["mode"] == "OUTPUT" and other != name and n and on and addr < oaddr + on and oaddr < addr + n:
                    return self._error(func, f"The buffer of output tensor {name} [{addr:#x}, {addr + n:#x}) "
                                             f"overlaps the buffer of tensor {other} [{oaddr:#x}, {oaddr + on:#x}).")
        if self._strategy == ExecutionContextAllocationStrategy.USER_MANAGED and self._scratch:
            ctypes.memset(self._scratch[0], 0xFF, size)
        session = eng._session()
        wanted = {i.name: i.type for i in session.get_inputs()}
        feeds = {t["onnx_name"]: _view(addr, n, dtype, t["shape"]).astype(_ORT_TYPES.get(wanted[t["onnx_name"]],
                                                                                           nptype(dtype)))
                 for _, t, dtype, addr, n in spans if t["mode"] == "INPUT" and t["onnx_name"] in wanted}
        outs = [s for s in spans if s[1]["mode"] == "OUTPUT"]
        for (name, t, dtype, addr, n), value in zip(outs, session.run([s[1]["onnx_name"] for s in outs], feeds),
                                                    strict=True):
            if list(np.shape(value)) != t["shape"]:
                raise RuntimeError(f"fake TensorRT: ONNX Runtime gave {name} shape {np.shape(value)}, the engine "
                                   f"says {tuple(t['shape'])}")
            if n:
                _view(addr, n, dtype, t["shape"])[...] = np.asarray(value).astype(nptype(dtype))
        _fake.executions.append(eng.name)
        return True


def _view(addr, nbytes, dtype, shape) -> np.ndarray:
    """The tensor at a host address; BF16/FP8/INT4/FP4 I/O cannot be viewed (nptype raises TypeError)."""
    buf = (ctypes.c_ubyte * nbytes).from_address(addr) if nbytes else bytearray()
    return np.frombuffer(buf, dtype=nptype(dtype)).reshape(shape)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
