"""Symbolic shapes, tensor descriptors and launch parameters of ``tensorrt.plugin`` (the wheel's plugin/_tensor.py).

Expressions are built through the ``IExprBuilder`` TensorRT installs while it asks a plugin for shapes or launch
parameters (``SymIntExpr._exprBuilder``). Outside that a ``ShapeExpr`` is fake (``is_fake``) and arithmetic on it
gives another fake one; a ``SymIntExpr`` of an int is empty. Only ``+ - * // == <`` exist (no reflected ``2 * e``,
no ``/``). ``SymIntExprs.from_tuple`` wraps plain ints as ``SymIntExpr``, not ``SymInt32``: an AOT build then fails.
"""

from __future__ import annotations

import tensorrt as trt

_OP = trt.DimensionOperation


class SymExpr:
    """Base of the symbolic integer expressions."""


class SymIntExpr(SymExpr):
    """A symbolic integer (scalar) expression."""

    _exprBuilder = None  # the trt.IExprBuilder while TensorRT is in a shape or launch-parameter callback

    def __init__(self, value=None):
        self._int_expr = None
        if isinstance(value, int):  # a numpy integer is not an int: it makes an empty expression, as in the wheel
            self._int_expr = None if SymIntExpr._exprBuilder is None else SymIntExpr._exprBuilder.constant(value)
        elif isinstance(value, trt.IDimensionExpr):
            self._int_expr = value
        elif isinstance(value, SymIntExpr):
            self._int_expr = value._int_expr

    def _op(self, op, other):
        other = SymIntExpr(other) if isinstance(other, int) else other
        return SymIntExpr(SymIntExpr._exprBuilder.operation(op, self._expr, other._expr))

    def _binary(op):
        return lambda self, other: self._op(op, other)

    __add__, __sub__, __mul__ = _binary(_OP.SUM), _binary(_OP.SUB), _binary(_OP.PROD)
    __floordiv__, __eq__, __lt__ = _binary(_OP.FLOOR_DIV), _binary(_OP.EQUAL), _binary(_OP.LESS)
    __hash__ = None
    del _binary

    def __bool__(self):
        if not self.is_constant:
            raise RuntimeError("Cannot evaluate symbolic expression as boolean. "
                               "Use is_constant and constant_value() for conditional checks.")
        return bool(self._expr.get_constant_value())

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


class SymInt32(SymIntExpr):
    """A 32-bit integer expression: the only kind an AOT kernel's extra argument may be."""


class ShapeExpr(SymInt32):
    """One dimension of a tensor; fake outside a shape-calculation context."""

    def __init__(self, value=None):
        super().__init__(value)
        self._is_dummy = value is None or (isinstance(value, int) and SymIntExpr._exprBuilder is None)
        if isinstance(value, ShapeExpr):
            self._is_dummy = value._is_dummy

    def _op(self, op, other):
        return ShapeExpr() if self._is_dummy else ShapeExpr(super()._op(op, other))

    def __bool__(self):
        if self._is_dummy:
            raise RuntimeError("Cannot evaluate fake ShapeExpr as boolean. Check is_fake first.")
        return super().__bool__()

    @property
    def is_fake(self) -> bool:
        return self._is_dummy

    @property
    def is_constant(self) -> bool:
        if self._is_dummy:
            raise RuntimeError("Not accessible for fake 'ShapeExpr's. Check is_fake to determine accessibility.")
        return super().is_constant


def _from_scalar(s):
    if isinstance(s, int):
        return SymInt32(s)
    raise ValueError("Float symbolic expressions are not supported" if isinstance(s, float)
                     else f"Unsupported type: '{type(s)}'")


class SymExprs:
    """A fixed-length sequence of symbolic expressions."""

    _item, _wrap = SymExpr, staticmethod(_from_scalar)

    def __init__(self, length: int):
        self._length, self._exprs = length, [None] * length

    @classmethod
    def from_tuple(cls, shape_exprs):
        inst = cls(len(shape_exprs))
        inst._exprs = [e if isinstance(e, cls._item) else cls._wrap(e) for e in shape_exprs]
        return inst

    def __iter__(self):
        return iter(self._exprs)

    def __getitem__(self, index):
        return self._exprs[index]

    def __len__(self):
        return self._length


class ShapeExprs(SymExprs):
    """The ``ShapeExpr`` of each dimension of a tensor."""

    _item, _wrap = ShapeExpr, ShapeExpr

    def __init__(self, length, _is_dummy=False):
        if length > trt.Dims.MAX_DIMS:
            raise ValueError(f"ShapeExprs can only support up to trt.Dims.MAX_DIMS = {trt.Dims.MAX_DIMS} "
                             f"dimensions. {length} given.")
        super().__init__(length)
        if _is_dummy:
            self._exprs = [ShapeExpr()] * length

    def numel(self) -> ShapeExpr:
        ret = ShapeExpr(1)
        for s in self._exprs:
            ret = ret * s
        return ret


class SymIntExprs(SymExprs):
    """A sequence of ``SymIntExpr`` (e.g. the extra scalar arguments of an AOT kernel)."""

    _item, _wrap = SymIntExpr, SymIntExpr


class Shape(tuple):
    """A concrete tensor shape (-1 marks a dynamic dimension)."""

    def __new__(cls, tensor_desc=None):
        if isinstance(tensor_desc, (trt.DynamicPluginTensorDesc, trt.PluginTensorDesc)):
            tensor_desc = getattr(tensor_desc, "desc", tensor_desc).dims
        if tensor_desc is not None and not isinstance(tensor_desc, tuple):
            raise ValueError("Unsupported type used for constructing trt.plugin.Shape! tensor_desc must be a "
                             "Tuple[int], trt.DynamicPluginTensorDesc, or trt.PluginTensorDesc")
        return super().__new__(cls, tensor_desc or ())


class TensorDesc:
    """Describes a tensor (never holds data): symbolic shape and dtype always; the concrete shape only where
    TensorRT knows it (``has_shape``: in ``aot_impl``). The descriptors TensorRT hands a plugin are immutable."""

    def __init__(self, shape_expr=None, dtype=None):
        self._shape_expr, self._dtype, self._shape, self._immutable = shape_expr, dtype, None, False

    def __setattr__(self, name, value):
        if getattr(self, "_immutable", False) and name != "_immutable":
            raise ValueError("Cannot modify immutable TensorDesc properties")
        super().__setattr__(name, value)

    def like(self) -> TensorDesc:
        """A mutable copy with the same properties."""
        cloned = TensorDesc()
        cloned.__dict__.update(self.__dict__, _immutable=False)
        cloned._shape_expr = ShapeExprs.from_tuple([ShapeExpr(e) for e in self._shape_expr])
        return cloned

    shape_expr = property(lambda self: self._shape_expr, lambda self, v: setattr(self, "_shape_expr", v))
    dtype = property(lambda self: self._dtype, lambda self, v: setattr(self, "_dtype", v))
    has_shape = property(lambda self: self._shape is not None)

    @property
    def shape(self) -> Shape:
        if self._shape is None:
            raise ValueError("TensorDesc has no shape information available at this stage. "
                             "Inspect TensorDesc.has_shape to determine availability.")
        return self._shape


class Tensor:
    """A tensor with data, as a JIT ``impl`` receives it (the fake never calls an ``impl``)."""


_LAUNCH_FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")


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


def cdiv(first, second) -> ShapeExpr:
    """Symbolic ceiling division; at least one argument must be a ShapeExpr."""
    if isinstance(first, int):
        if isinstance(second, int):
            raise ValueError("Both arguments cannot be 'int's")
        first = ShapeExpr(first)
    return first._op(_OP.CEIL_DIV, second)


def from_shape_expr(shape_expr, dtype) -> TensorDesc:
    """A TensorDesc with these dimension expressions (a tuple of ShapeExpr/int, or ShapeExprs) and dtype."""
    return TensorDesc(ShapeExprs.from_tuple(shape_expr) if isinstance(shape_expr, tuple) else shape_expr, dtype)
