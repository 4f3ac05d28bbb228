"""Foundational types: ``ILogger``/``Logger``, ``Dims``, ``IHostMemory``, and argument checking.

Bindings: ``python/src/infer/pyCore.cpp`` (``ILogger``, ``Logger(min_severity=Logger.WARNING)``, which prints
``[TRT] [E] msg`` lines to stdout and drops messages less severe than ``min_severity``) and
``python/src/infer/pyFoundationalTypes.cpp`` (``Dims``: tuple-like, ``MAX_DIMS`` = 8, equal to tuples and lists;
``IHostMemory``: buffer protocol, ``nbytes``, ``dtype``, no ``len()``/indexing).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from ._enums import DataType, Severity


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
    """Base logger: subclass it, call ``ILogger.__init__(self)`` and override ``log(severity, msg)`` (pyCore.cpp
    ``PyLogger``)."""

    Severity = Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = tuple(Severity)

    def __init__(self):
        self._pybind_initialized = True

    def log(self, severity, msg):
        raise RuntimeError('Tried to call pure virtual function "ILogger::log"')


class Logger(ILogger):
    """The default logger (pyCore.cpp ``DefaultLogger``)."""

    _PREFIX = {Severity.INTERNAL_ERROR: "F", Severity.ERROR: "E", Severity.WARNING: "W", Severity.INFO: "I",
               Severity.VERBOSE: "V"}

    def __init__(self, min_severity=Severity.WARNING):
        ILogger.__init__(self)
        check_arg(min_severity, Severity, "Logger.__init__", "min_severity")
        self.min_severity = min_severity

    def log(self, severity, msg):
        if severity > self.min_severity:
            return
        stamp = time.strftime("%m/%d/%Y-%H:%M:%S")
        print(f"[{stamp}] [TRT] [{self._PREFIX[severity]}] {msg}", file=sys.stdout, flush=True)


def emit(logger: ILogger | None, severity: Severity, msg: str) -> None:
    """Report through a user logger; a Python exception in ``log`` is swallowed as TensorRT does."""
    if logger is None:
        return
    try:
        logger.log(severity, msg)
    except Exception as e:  # noqa: BLE001 - pyCore.cpp PyLogger catches and prints every exception
        print(f"[ERROR] Exception caught in log(): {e}", file=sys.stderr)


class Dims:
    """Tuple-like shape (pyFoundationalTypes.cpp)."""

    __slots__ = ("_d",)
    MAX_DIMS = 8

    def __init__(self, shape=()):
        if isinstance(shape, int):
            shape = (0,) * shape
        shape = tuple(int(x) for x in shape)
        if len(shape) > self.MAX_DIMS:
            raise ValueError(f"Input length {len(shape)}. Max expected length is {self.MAX_DIMS}")
        self._d = list(shape)

    def __len__(self):
        return len(self._d)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self._d[index])
        if not -len(self._d) <= index < len(self._d):
            raise IndexError("Out of bounds")
        return self._d[index]

    def __setitem__(self, index, value):
        if not -len(self._d) <= index < len(self._d):
            raise IndexError("Out of bounds")
        self._d[index] = int(value)

    def __iter__(self):
        return iter(self._d)

    def __eq__(self, other):
        if isinstance(other, Dims):
            return self._d == other._d
        if isinstance(other, (tuple, list)):
            return self._d == [int(x) for x in other]
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return repr(tuple(self._d))

    __str__ = __repr__


class IHostMemory(bytes):
    """Serialized data with the buffer protocol (``bytes(m)``, ``memoryview(m)``, ``f.write(m)``).

    Python 3.11 cannot give a plain class the buffer protocol, so this subclasses ``bytes`` and removes what the
    pybind11 object lacks: ``len()``, indexing, iteration and value equality.
    """

    __slots__ = ()

    def __new__(cls, data=b""):
        return super().__new__(cls, data)

    @property
    def nbytes(self) -> int:
        return bytes.__len__(self)

    @property
    def dtype(self) -> DataType:
        return DataType.UINT8

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

    __hash__ = object.__hash__

    def __repr__(self):
        return f"<tensorrt.IHostMemory object at {id(self):#x}, nbytes={self.nbytes}>"

    __str__ = __repr__


def buffer_bytes(obj, func: str, name: str) -> bytes:
    """A ``py::buffer`` argument: anything with the buffer protocol (not ``str``)."""
    try:
        return memoryview(obj).tobytes()
    except TypeError:
        raise TypeError(f"{func}(): incompatible function arguments: {name} must support the buffer protocol, "
                        f"got {type(obj).__name__}") from None


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}


def nptype(trt_type):
    """The numpy type of a DataType (the wheel's ``__init__.py``): BF16/FP8/INT4/FP4 have none -> TypeError."""
    if trt_type in _NP:
        return _NP[trt_type]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


def volume(iterable) -> int:
    """Product of the elements; 1 for an empty iterable (the wheel's ``__init__.py``)."""
    vol = 1
    for elem in iterable:
        vol *= elem
    return vol
