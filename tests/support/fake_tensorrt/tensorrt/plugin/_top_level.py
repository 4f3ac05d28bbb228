"""``cdiv``, ``max``, ``min``, ``size_tensor`` and ``from_shape_expr`` (plugin/_top_level.py of the wheel)."""

from __future__ import annotations

import tensorrt as trt

from ._export import public_api
from ._tensor import ShapeExpr, ShapeExprs, SizeTensorDesc, TensorDesc


def _binary(op, first, second) -> ShapeExpr:
    if isinstance(first, int):
        if isinstance(second, int):
            raise ValueError("Both arguments cannot be 'int's")
        first = ShapeExpr(first)
    return first._op(op, second)


@public_api()
def cdiv(first, second) -> ShapeExpr:
    """Symbolic ceiling division (``DimensionOperation.CEIL_DIV``); at least one argument must be a ShapeExpr."""
    return _binary(trt.DimensionOperation.CEIL_DIV, first, second)


@public_api(symbol="max")
def _max(first, second) -> ShapeExpr:
    """Symbolic maximum (``DimensionOperation.MAX``)."""
    return _binary(trt.DimensionOperation.MAX, first, second)


@public_api(symbol="min")
def _min(first, second) -> ShapeExpr:
    """Symbolic minimum (``DimensionOperation.MIN``)."""
    return _binary(trt.DimensionOperation.MIN, first, second)


@public_api()
def size_tensor(opt: ShapeExpr, upper_bound: ShapeExpr) -> SizeTensorDesc:
    """A size tensor whose autotune extent is ``opt`` and whose upper bound is ``upper_bound``."""
    return SizeTensorDesc(opt, upper_bound)


@public_api()
def from_shape_expr(shape_expr, dtype) -> TensorDesc:
    """A TensorDesc with these dimension expressions (a tuple of ShapeExpr/int, or ShapeExprs) and dtype."""
    exprs = ShapeExprs.from_tuple(shape_expr) if isinstance(shape_expr, tuple) else shape_expr
    return TensorDesc(exprs, dtype)
