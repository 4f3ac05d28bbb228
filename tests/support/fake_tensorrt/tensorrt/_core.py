"""Enums and foundational types, with pybind11's behaviour (pyFoundationalTypes.cpp, pyCore.cpp, NvInfer*.h).

Enums bound with ``py::arithmetic()`` are ``IntEnum``s (equal to ints, ``|`` with ints); the others equal only
themselves, so passing ``int(flag)`` where an enum is expected is a TypeError, as with the real bindings.
"""

from __future__ import annotations

import enum
import sys
import time

import numpy as np


class _Enum(enum.Enum):
    """``py::enum_`` without ``py::arithmetic``."""

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class _ArithEnum(enum.IntEnum):
    """``py::enum_`` with ``py::arithmetic``."""

    __repr__, __str__ = _Enum.__repr__, _Enum.__str__
    __format__ = object.__format__


def _enum(name: str, members: str, base=_Enum):
    """An enum whose members are numbered from 0 in order (``name=value`` pins a value)."""
    values, n = {}, 0
    for m in members.split():
        m, _, pinned = m.partition("=")
        n = int(pinned) if pinned else n
        values[m], n = n, n + 1
    return base(name, values, module=__name__)


DataType = _enum("DataType", "FLOAT HALF INT8 INT32 BOOL UINT8 FP8 BF16 INT64 INT4 FP4 E8M0")
_ITEMSIZE = dict(zip(DataType, (4, 2, 1, 4, 1, 1, 1, 2, 8, 0.5, 0.5, 1), strict=True))
DataType.itemsize = property(lambda self: _ITEMSIZE[self], doc="Bytes per element (the wheel's __init__.py).")
Severity = _enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE", _ArithEnum)
TensorIOMode = _enum("TensorIOMode", "NONE INPUT OUTPUT")
# NvInfer.h: STRONGLY_TYPED is deprecated in TensorRT 11 and ignored (strong typing is always on).
NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag",
                                      "STRONGLY_TYPED PREFER_JIT_PYTHON_PLUGINS PREFER_AOT_PYTHON_PLUGINS", _ArithEnum)
# TensorRT 11 binds no FP16/BF16/INT8/OBEY_PRECISION_CONSTRAINTS: the weak-typing precision flags are gone.
BuilderFlag = _enum("BuilderFlag", "DEBUG=2 GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS SAFETY_SCOPE "
                    "DIRECT_IO=11 VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME ERROR_ON_TIMING_CACHE_MISS=15 "
                    "DISABLE_COMPILATION_CACHE=17 STRIP_PLAN REFIT_IDENTICAL WEIGHT_STREAMING REFIT_INDIVIDUAL=22 "
                    "STRICT_NANS MONITOR_MEMORY EDITABLE_TIMING_CACHE=26 DISTRIBUTIVE_INDEPENDENCE", _ArithEnum)
MemoryPoolType = _enum("MemoryPoolType", "WORKSPACE DLA_MANAGED_SRAM DLA_LOCAL_DRAM DLA_GLOBAL_DRAM TACTIC_DRAM "
                       "TACTIC_SHARED_MEMORY")
ExecutionContextAllocationStrategy = _enum("ExecutionContextAllocationStrategy",
                                           "STATIC ON_PROFILE_CHANGE USER_MANAGED", _ArithEnum)
DimensionOperation = _enum("DimensionOperation", "SUM PROD MAX MIN SUB EQUAL LESS FLOOR_DIV CEIL_DIV", _ArithEnum)
PluginFieldType = _enum("PluginFieldType", "FLOAT16 FLOAT32 FLOAT64 INT8 INT16 INT32 CHAR DIMS UNKNOWN BF16 INT64 "
                        "FP8 INT4 FP4")
TensorRTPhase = _enum("TensorRTPhase", "BUILD RUNTIME", _ArithEnum)
QuickPluginCreationRequest = _enum("QuickPluginCreationRequest",
                                   "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT", _ArithEnum)


class ErrorCode(_Enum):
    """The ONNX parser's ErrorCode (pyOnnx.cpp): ``str()`` and ``repr()`` give the bare name."""

    SUCCESS, INTERNAL_ERROR, MEM_ALLOC_FAILED, MODEL_DESERIALIZE_FAILED, INVALID_VALUE, INVALID_GRAPH = range(6)
    INVALID_NODE, UNSUPPORTED_GRAPH, UNSUPPORTED_NODE, UNSUPPORTED_NODE_ATTR, UNSUPPORTED_NODE_INPUT = range(6, 11)
    UNSUPPORTED_NODE_DATATYPE, UNSUPPORTED_NODE_DYNAMIC, UNSUPPORTED_NODE_SHAPE, REFIT_FAILED = range(11, 15)

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__


def check_arg(value, types, func: str, name: str):
    """pybind11 rejects an argument of the wrong type with TypeError ("incompatible function arguments")."""
    if not isinstance(value, types):
        wanted = " | ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise TypeError(f"{func}(): incompatible function arguments: {name} must be {wanted}, "
                        f"got {type(value).__name__}")
    return value


class _BoundClass(type):
    """pybind11 refuses a Python subclass whose ``__init__`` did not call the bound base ``__init__``."""

    def __call__(cls, *args, **kwargs):
        obj = super().__call__(*args, **kwargs)
        if not getattr(obj, "_pybind_initialized", False):
            raise TypeError(f"tensorrt.ILogger.__init__() must be called when overriding __init__ ({cls.__name__})")
        return obj


class ILogger(metaclass=_BoundClass):
    """Subclass it, call ``ILogger.__init__(self)`` and override ``log(severity, msg)`` (pyCore.cpp PyLogger)."""

    Severity = Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = tuple(Severity)

    def __init__(self):
        self._pybind_initialized = True

    def log(self, severity, msg):
        raise RuntimeError('Tried to call pure virtual function "ILogger::log"')


class Logger(ILogger):
    """The default logger: ``[TRT] [E] msg`` lines on stdout, dropping those less severe than ``min_severity``."""

    def __init__(self, min_severity=Severity.WARNING):
        ILogger.__init__(self)
        self.min_severity = check_arg(min_severity, Severity, "Logger.__init__", "min_severity")

    def log(self, severity, msg):
        if severity <= self.min_severity:
            print(f"[{time.strftime('%m/%d/%Y-%H:%M:%S')}] [TRT] [{'FEWIV'[severity]}] {msg}", flush=True)


def emit(logger: ILogger | None, severity: Severity, msg: str) -> None:
    """Report through a user logger; TensorRT swallows (and prints) an exception raised in ``log``."""
    try:
        if logger is not None:
            logger.log(severity, msg)
    except Exception as e:  # noqa: BLE001 - pyCore.cpp PyLogger catches every exception
        print(f"[ERROR] Exception caught in log(): {e}", file=sys.stderr)


class Dims(tuple):
    """A shape: at most ``MAX_DIMS`` = 8 entries, equal to tuples."""

    MAX_DIMS = 8

    def __new__(cls, shape=()):
        shape = (0,) * shape if isinstance(shape, int) else tuple(int(x) for x in shape)
        if len(shape) > cls.MAX_DIMS:
            raise ValueError(f"Input length {len(shape)}. Max expected length is {cls.MAX_DIMS}")
        return super().__new__(cls, shape)


class IHostMemory(bytes):
    """A plan or cache: buffer protocol (``bytes(m)``, ``memoryview(m)``), ``nbytes``, ``dtype``.

    A plain class cannot have the buffer protocol before Python 3.12, so this subclasses ``bytes`` and removes
    what the pybind11 object lacks: ``len()``, indexing, iteration and value equality.
    """

    __slots__ = ()
    nbytes = property(bytes.__len__)
    dtype = property(lambda self: DataType.UINT8)
    __hash__ = object.__hash__

    def __bool__(self):
        return True

    def __len__(self):
        raise TypeError("object of type 'tensorrt.IHostMemory' has no len()")

    def __getitem__(self, key):
        raise TypeError("'tensorrt.IHostMemory' object is not subscriptable")

    def __iter__(self):
        raise TypeError("'tensorrt.IHostMemory' object is not iterable")

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def __repr__(self):
        return f"<tensorrt.IHostMemory object at {id(self):#x}, nbytes={self.nbytes}>"


def buffer_bytes(obj, func: str, name: str) -> bytes:
    """A ``py::buffer`` argument: anything with the buffer protocol (a ``str`` is refused)."""
    try:
        return memoryview(obj).tobytes()
    except TypeError:
        raise TypeError(f"{func}(): incompatible function arguments: {name} must support the buffer protocol, "
                        f"got {type(obj).__name__}") from None


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}


def nptype(trt_type):
    """The numpy type of a DataType (the wheel's ``__init__.py``): BF16/FP8/INT4/FP4 have none -> TypeError."""
    if trt_type not in _NP:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return _NP[trt_type]
