"""Symbolic shapes, tensor descriptors and launch parameters of ``tensorrt.plugin``.

Behaviour of python/packaging/bindings_wheel/tensorrt/plugin/_tensor.py: expressions are built through the
``IExprBuilder`` TensorRT installs while it asks the plugin for shapes or launch parameters
(``SymIntExpr._exprBuilder``); outside that, a ``ShapeExpr`` is "fake" (``is_fake``) and any arithmetic on it
gives another fake one. Only ``+ - * // == <`` exist (no reflected ``2 * e``, no ``/``); ``cdiv``/``max``/``min``
are functions. ``SymIntExprs.from_tuple`` wraps plain ints as ``SymIntExpr``, not ``SymInt32``.
"""

from __future__ import annotations

import numpy as np

import tensorrt as trt

from ._export import public_api

_OP = trt.DimensionOperation


class SymExpr:
    """Base of the symbolic integer expressions."""


class SymIntExpr(SymExpr):
    """A symbolic integer (scalar) expression."""

    _exprBuilder = None  # the trt.IExprBuilder while TensorRT is in a shape/launch-parameter callback
    _is_dummy = False

    def __init__(self, value=None):
        self._int_expr = None
        if isinstance(value, int):
            builder = SymIntExpr._exprBuilder
            self._int_expr = None if builder is None else builder.constant(value)
        elif isinstance(value, trt.IDimensionExpr):
            self._int_expr = value
        elif isinstance(value, SymIntExpr):
            self._int_expr = value._int_expr

    def _op(self, op, other):
        other = SymIntExpr(other) if isinstance(other, int) else other
        return SymIntExpr(SymIntExpr._exprBuilder.operation(op, self._expr, other._expr))

    def __add__(self, other):
        return self._op(_OP.SUM, other)

    def __sub__(self, other):
        return self._op(_OP.SUB, other)

    def __mul__(self, other):
        return self._op(_OP.PROD, other)

    def __floordiv__(self, other):
        return self._op(_OP.FLOOR_DIV, other)

    def __eq__(self, other):
        return self._op(_OP.EQUAL, other)

    def __lt__(self, other):
        return self._op(_OP.LESS, other)

    __hash__ = None

    def __bool__(self):
        if not self.is_constant:
            raise RuntimeError("Cannot evaluate symbolic expression as boolean. "
                               "Use is_constant and constant_value() for conditional checks.")
        return bool(self._expr.get_constant_value())

    def __repr__(self):
        if self._is_dummy:
            return f"FakeSymIntExpr[id={id(self)}]"
        if not self.is_constant:
            return f"SymIntExpr[id={id(self)}]"
        return f"SymIntExpr[{self._expr.get_constant_value()}]"

    @property
    def is_constant(self) -> bool:
        return self._expr.is_constant()

    def constant_value(self) -> int:
        if not self.is_constant:
            raise RuntimeError("Not accessible for non-constant integer expressions. "
                               "Check is_constant to determine accessibility.")
        return self._expr.get_constant_value()

    @property
    def _expr(self):
        return self._int_expr

    def _clone(self):
        return SymIntExpr(self + 0)


class SymExprImpl(trt.ISymExpr):
    """What TensorRT receives for one extra kernel argument: the expression and its integer width."""

    def __init__(self, expr):
        trt.ISymExpr.__init__(self)
        self.type = trt.PluginArgType.INT
        widths = ((SymInt32, trt.PluginArgDataType.INT32), (SymInt16, trt.PluginArgDataType.INT16),
                  (SymInt8, trt.PluginArgDataType.INT8))
        for cls, width in widths:
            if isinstance(expr, cls):
                self.dtype = width
                break
        else:
            raise ValueError(f"Unknown SymIntExpr type {type(expr)}")
        self.expr = expr._expr


@public_api()
class SymInt32(SymIntExpr):
    """Symbolic expression for a 32-bit integer."""

    def __call__(self):
        return SymExprImpl(self)


@public_api()
class SymInt8(SymIntExpr):
    """Symbolic expression for an 8-bit integer."""


@public_api()
class SymInt16(SymIntExpr):
    """Symbolic expression for a 16-bit integer."""


@public_api()
class ShapeExpr(SymInt32):
    """Symbolic expression for one dimension of a tensor; "fake" outside a shape-calculation context."""

    def __init__(self, value=None):
        super().__init__(value)
        self._is_dummy = False
        self._is_size_tensor = False
        if value is None or (isinstance(value, int) and SymIntExpr._exprBuilder is None):
            self._is_dummy = True
        elif isinstance(value, ShapeExpr):
            self._is_dummy, self._is_size_tensor = value._is_dummy, value._is_size_tensor

    def _op(self, op, other):
        if self._is_size_tensor:
            raise ValueError("It is not permitted to perform binary operations on size tensor expressions")
        if self._is_dummy:
            return ShapeExpr()
        return ShapeExpr(super()._op(op, other))

    def __bool__(self):
        if self._is_dummy:
            raise RuntimeError("Cannot evaluate fake ShapeExpr as boolean. Check is_fake first.")
        return super().__bool__()

    def __repr__(self):
        if self._is_dummy:
            return f"FakeShapeExpr[id={id(self)}]"
        if not self.is_constant:
            return f"ShapeExpr[id={id(self)}]"
        return f"ShapeExpr[{self._expr.get_constant_value()}]"

    @property
    def is_fake(self) -> bool:
        return self._is_dummy

    @property
    def is_size_tensor(self) -> bool:
        return self._is_size_tensor

    @property
    def is_constant(self) -> bool:
        if self._is_dummy:
            raise RuntimeError("Not accessible for fake 'ShapeExpr's. Check is_fake to determine accessibility.")
        return super().is_constant

    def constant_value(self) -> int:
        if not self.is_constant:
            raise RuntimeError("Not accessible for non-constant shape expressions. "
                               "Check is_constant to determine accessibility.")
        return super().constant_value()

    def _clone(self):
        ret = ShapeExpr(self + 0)
        ret._is_dummy, ret._is_size_tensor = self._is_dummy, self._is_size_tensor
        return ret


@public_api()
class SizeTensorShapeExpr(ShapeExpr):
    """The shape expression of a size tensor (a data-dependent extent)."""

    def __init__(self, size_tensor_desc):
        super().__init__()
        self._is_size_tensor = True
        self._is_dummy = size_tensor_desc.opt.is_fake
        self._size_tensor_desc = size_tensor_desc

    def _op(self, op, other):
        raise ValueError("It is not permitted to perform binary operations on size tensor expressions")

    @property
    def is_constant(self):
        if self._is_dummy:
            raise RuntimeError("Not accessible for fake 'ShapeExpr's. Check is_fake to determine accessibility.")
        return False

    @property
    def _expr(self):
        if self._int_expr is None:
            d = self._size_tensor_desc
            self._int_expr = SymIntExpr._exprBuilder.declare_size_tensor(d.index, d.opt._expr, d.upper_bound._expr)
        return self._int_expr

    def __repr__(self):
        return f"ShapeExpr[is_size_tensor = True, id={id(self)}]"


def _from_scalar(s):
    if isinstance(s, int):
        return SymInt32(s)
    if isinstance(s, float):
        raise ValueError("Float symbolic expressions are not supported")
    raise ValueError(f"Unsupported type: '{type(s)}'")


@public_api()
class SymExprs:
    """A fixed-length sequence of symbolic expressions."""

    def __init__(self, length: int):
        self._length = length
        self._exprs = [None] * length

    @classmethod
    def from_tuple(cls, shape_exprs):
        exprs = [e if isinstance(e, SymExpr) else _from_scalar(e) for e in shape_exprs]
        inst = cls(len(exprs))
        inst._exprs = exprs
        return inst

    def __iter__(self):
        return iter(self._exprs)

    def __getitem__(self, index):
        return self._exprs[index]

    def __len__(self):
        return self._length

    def __setitem__(self, index, expr):
        if index >= self._length:
            raise IndexError("Index out of range")
        self._exprs[index] = expr if isinstance(expr, SymExpr) else _from_scalar(expr)

    def __repr__(self):
        return f"SymExprs[{', '.join(repr(s) for s in self._exprs)}]"


@public_api()
class ShapeExprs(SymExprs):
    """The ``ShapeExpr`` of each dimension of a tensor."""

    def __init__(self, length, _is_dummy=False):
        if length > trt.Dims.MAX_DIMS:
            raise ValueError(f"ShapeExprs can only support up to trt.Dims.MAX_DIMS = {trt.Dims.MAX_DIMS} "
                             f"dimensions. {length} given.")
        super().__init__(length)
        self._is_dummy = _is_dummy
        if _is_dummy:
            self._exprs = [ShapeExpr()] * length

    @classmethod
    def from_tuple(cls, shape_exprs):
        exprs = [e if isinstance(e, ShapeExpr) else ShapeExpr(e) for e in shape_exprs]
        inst = cls(len(exprs))
        inst._exprs = exprs
        return inst

    def numel(self) -> ShapeExpr:
        ret = ShapeExpr(1)
        for s in self._exprs:
            ret = ret * s
        return ret

    def __setitem__(self, index, value):
        if index >= self._length:
            raise IndexError("Index out of range")
        if not isinstance(value, ShapeExpr):
            if not isinstance(value, int):
                raise ValueError(f"Value should be int or ShapeExpr. Got '{type(value)}'")
            value = ShapeExpr(value)
        self._exprs[index] = value

    def __repr__(self):
        return f"ShapeExprs[{', '.join(repr(s) for s in self._exprs)}]"

    def _clone(self):
        ret = ShapeExprs.from_tuple(tuple(e._clone() for e in self._exprs))
        ret._is_dummy = self._is_dummy
        return ret


@public_api()
class SymIntExprs(SymExprs):
    """A sequence of ``SymIntExpr`` (e.g. the extra scalar arguments of an AOT kernel)."""

    @classmethod
    def from_tuple(cls, shape_exprs):
        exprs = [e if isinstance(e, SymIntExpr) else SymIntExpr(e) for e in shape_exprs]
        inst = cls(len(exprs))
        inst._exprs = exprs
        return inst

    def __setitem__(self, index, value):
        if index >= self._length:
            raise IndexError("Index out of range")
        if not isinstance(value, SymIntExpr):
            if not isinstance(value, int):
                raise ValueError(f"Value should be int or SymIntExpr. Got '{type(value)}'")
            value = SymIntExpr(value)
        self._exprs[index] = value

    def __repr__(self):
        return f"SymIntExprs[{', '.join(repr(s) for s in self._exprs)}]"


@public_api()
class Shape:
    """A concrete tensor shape (-1 marks a dynamic dimension)."""

    def __init__(self, tensor_desc=None):
        self._is_dynamic = None
        if isinstance(tensor_desc, trt.DynamicPluginTensorDesc):
            self._shapes, self._desc = trt.Dims(tensor_desc.desc.dims), tensor_desc
        elif isinstance(tensor_desc, trt.PluginTensorDesc):
            self._shapes = trt.Dims(tensor_desc.dims)
        elif isinstance(tensor_desc, tuple):
            self._shapes = trt.Dims(tensor_desc)
        elif tensor_desc is None:
            self._shapes = trt.Dims(0)
        else:
            raise ValueError("Unsupported type used for constructing trt.plugin.Shape! tensor_desc must be a "
                             "Tuple[int], trt.DynamicPluginTensorDesc, or trt.PluginTensorDesc")
        self._length = len(self._shapes)

    def numel(self) -> int:
        if self.is_dynamic:
            raise ValueError("Shape has at least one dynamic dimension.")
        return int(np.prod(list(self._shapes)))

    def __iter__(self):
        yield from self._shapes

    def __getitem__(self, index):
        return self._shapes[index]

    def __len__(self):
        return self._length

    def __str__(self):
        return "Shape" + str(tuple(self))

    @property
    def is_dynamic(self) -> bool:
        if self._is_dynamic is None:
            self._is_dynamic = any(d == -1 for d in self._shapes)
        return self._is_dynamic

    def _bound(self, which):
        if not self.is_dynamic:
            raise ValueError(f"{which} property is only accessible if is_dynamic is true")
        if not hasattr(self, "_desc"):
            raise AttributeError(f"Shape object has at least one dynamic dimension, but no information is available "
                                 f"on '{which}' property.")
        return tuple(getattr(self._desc, which))

    @property
    def opt(self):
        return self._bound("opt")

    @property
    def min(self):
        return self._bound("min")

    @property
    def max(self):
        return self._bound("max")

    def __setitem__(self, index, val):
        if index >= self._length:
            raise IndexError("Index out of range")
        self._shapes[index] = val

    def _clone(self):
        ret = Shape()
        ret.__dict__.update(self.__dict__)
        return ret


_NO_SHAPE = ("TensorDesc has no shape information available at this stage. "
             "Inspect TensorDesc.has_shape to determine availability.")


@public_api()
class TensorDesc:
    """Describes a tensor (never holds data): symbolic shape and dtype always; concrete shape, format and scale
    only where TensorRT knows them (``has_shape``: autotune and aot_impl)."""

    def __init__(self, shape_expr=None, dtype=None, format=None, scale=None):
        self._shape_expr = shape_expr
        self._dtype = dtype
        self._shape = None
        self._format = format
        self._scale = scale
        self._aliased_to = None
        self._immutable = False

    def numel(self) -> int:
        if not self.has_shape:
            raise ValueError(_NO_SHAPE)
        return int(np.prod(list(self.shape)))

    @property
    def ndim(self) -> int:
        return len(self._shape_expr)

    @property
    def is_size_tensor(self):
        return False

    def like(self) -> TensorDesc:
        """A mutable copy with the same properties."""
        cloned = self._clone()
        cloned._immutable = False
        return cloned

    def aliased(self) -> TensorDesc:
        """An immutable copy that shares this tensor's buffer (an in-place output)."""
        cloned = self._clone()
        cloned._immutable = False
        cloned._aliased_to = self
        cloned._immutable = True
        return cloned

    def _clone(self) -> TensorDesc:
        cloned = TensorDesc()
        cloned.__dict__.update(self.__dict__)
        cloned._immutable = False
        cloned._shape_expr = self._shape_expr._clone()
        if self._shape is not None:
            cloned._shape = self._shape._clone()
        cloned._immutable = True
        return cloned

    def get_aliased(self):
        return self._aliased_to

    def _validate_has_shape(self):
        if not self.has_shape:
            raise ValueError(_NO_SHAPE)

    def _validate_not_immutable(self):
        if getattr(self, "_immutable", False):
            raise ValueError("Cannot modify immutable TensorDesc")

    @property
    def shape_expr(self):
        return self._shape_expr

    @shape_expr.setter
    def shape_expr(self, value):
        self._shape_expr = value

    @property
    def dtype(self):
        return self._dtype

    @dtype.setter
    def dtype(self, value):
        self._dtype = value

    @property
    def shape(self):
        self._validate_has_shape()
        return self._shape

    @shape.setter
    def shape(self, value):
        self._validate_not_immutable()
        self._shape = value

    @property
    def format(self):
        self._validate_has_shape()
        return self._format

    @format.setter
    def format(self, value):
        self._validate_not_immutable()
        self._format = value

    @property
    def scale(self):
        self._validate_has_shape()
        return self._scale

    @scale.setter
    def scale(self, value):
        self._validate_not_immutable()
        self._scale = value

    @property
    def is_aliased(self) -> bool:
        return self._aliased_to is not None

    @property
    def has_shape(self) -> bool:
        return self._shape is not None

    @property
    def is_dynamic(self) -> bool:
        if not self.has_shape:
            raise ValueError(_NO_SHAPE)
        return self.shape.is_dynamic

    @property
    def has_shape_expr(self) -> bool:
        return self.shape_expr is not None

    def __setattr__(self, name, value):
        if getattr(self, "_immutable", False) and name != "_immutable":
            raise ValueError("Cannot modify immutable TensorDesc properties")
        super().__setattr__(name, value)


@public_api()
class SizeTensorDesc(TensorDesc):
    """A scalar INT32/INT64 output giving the extent of a data-dependent dimension (``size_tensor``)."""

    def __init__(self, opt, upper_bound):
        super().__init__(ShapeExprs(0), trt.int32)
        self._opt = opt
        self._upper_bound = upper_bound
        self._index = None
        self._expr = SizeTensorShapeExpr(self)

    @property
    def is_size_tensor(self):
        return True

    @property
    def opt(self):
        return self._opt

    @property
    def upper_bound(self):
        return self._upper_bound

    @property
    def index(self) -> int:
        return self._index

    def _set_index(self, idx: int):
        self._index = idx

    def expr(self):
        return self._expr


@public_api()
class Tensor:
    """A tensor with data, as a JIT ``impl`` receives it (``__cuda_array_interface__``; immutable)."""

    def __init__(self):
        self._data_ptr = None
        self._shape = None
        self._format = None
        self._dtype = None
        self._scale = None
        self._strides = None
        self._aliased_to = None
        self._stream = None
        self._read_only = None
        self._immutable = False

    @property
    def ndim(self) -> int:
        return len(self._shape)

    data_ptr = property(lambda self: self._data_ptr, lambda self, v: setattr(self, "_data_ptr", v))
    dtype = property(lambda self: self._dtype, lambda self, v: setattr(self, "_dtype", v))
    shape = property(lambda self: self._shape, lambda self, v: setattr(self, "_shape", v))
    format = property(lambda self: self._format, lambda self, v: setattr(self, "_format", v))
    scale = property(lambda self: self._scale, lambda self, v: setattr(self, "_scale", v))
    strides = property(lambda self: self._strides, lambda self, v: setattr(self, "_strides", v))

    def numel(self) -> int:
        if self.is_data_dependent:
            raise ValueError("Tensor has a data-dependent dimension. Examine Tensor.shape to determine wildcards "
                             "(representing data-dependent dimensions).")
        return int(np.prod(list(self._shape)))

    @property
    def __cuda_array_interface__(self):
        if self._dtype in (trt.DataType.BF16, trt.DataType.FP8, trt.DataType.INT4):
            raise ValueError(f"Handling {self._dtype} via '__cuda_array_interface__' is not supported")
        item = np.dtype(trt.nptype(self._dtype))
        return {"shape": tuple(self._shape), "typestr": item.str, "stream": self._stream, "version": 3,
                "data": (self._data_ptr, False), "strides": tuple(s * item.itemsize for s in self._strides)}

    def __setattr__(self, name, value):
        if getattr(self, "_immutable", False) and name != "_immutable":
            raise ValueError("Cannot modify immutable Tensor properties")
        super().__setattr__(name, value)

    def get_aliased(self):
        return self._aliased_to

    @property
    def is_aliased(self):
        # As the wheel has it (_tensor.py): True when NOT aliased.
        return self._aliased_to is None

    @property
    def is_data_dependent(self):
        return self._shape.is_dynamic

    def aliased(self, shape=None) -> Tensor:
        """A Tensor on the same buffer with another shape (no larger in volume)."""
        cloned = Tensor()
        cloned.__dict__.update(self.__dict__)
        cloned._immutable = False
        if isinstance(shape, trt.PluginTensorDesc):
            cloned._shape = Shape(shape)
        elif isinstance(shape, Shape):
            cloned._shape = shape
        elif isinstance(shape, tuple):
            cloned._shape = Shape(shape)
        elif shape is not None:
            raise ValueError("Unsupported type for 'shape'")
        if not self.is_data_dependent and cloned.is_data_dependent and cloned._shape.numel() > self.numel():
            raise ValueError("Volume of this tensor is less than the provided 'shape'.")
        cloned._aliased_to = self
        return cloned


_LAUNCH_FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")


@public_api()
class KernelLaunchParams:
    """Grid/block sizes (default 1) and shared memory (default 0) of an AOT kernel, each a SymInt32."""

    def __init__(self, grid_x=1, grid_y=1, grid_z=1, block_x=1, block_y=1, block_z=1, shared_mem=0):
        for name, value in zip(_LAUNCH_FIELDS, (grid_x, grid_y, grid_z, block_x, block_y, block_z, shared_mem),
                               strict=True):
            setattr(self, name, value)

    def __setattr__(self, name, value):
        if name not in _LAUNCH_FIELDS:
            raise AttributeError(f"KernelLaunchParams object has no attribute '{name}'")
        self.__dict__[name] = SymInt32(value)
