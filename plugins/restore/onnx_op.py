"""The FastVARRestore ONNX node: its schema and the dynamo-exporter translation that emits it.

TensorRT's ONNX parser dispatches on ``op_type`` alone and, for an unknown op, looks a plugin up by that
name plus the string attributes ``plugin_namespace`` / ``plugin_version``; every other attribute must be a
scalar the plugin creator names. The exporter refuses to emit a custom-domain node whose schema onnx does not
know, hence ``register_schema``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import onnx
from onnx.defs import OpSchema

DOMAIN = "fastvar"
OP_TYPE = "FastVARRestore"
OP_TYPE_ADD = "FastVARRestoreAdd"  # the restore fused with the residual add that consumes it
OP_TYPES = (OP_TYPE, OP_TYPE_ADD)
PLUGIN_VERSION = "1"
SCHEMA_VERSION = 1
SIZE_ATTRS = ("cache_h", "cache_w", "out_h", "out_w")

__all__ = ["DOMAIN", "OP_TYPE", "OP_TYPES", "OP_TYPE_ADD", "PLUGIN_VERSION", "SIZE_ATTRS", "register_schema",
           "translation_table"]

_LOCK = threading.Lock()


def _infer(ctx: Any) -> None:
    """Output type: the cache's element type, shape (B, out_h*out_w, C) with B and C taken from the cache."""
    cache_t = ctx.get_input_type(2)
    if cache_t is None or not cache_t.HasField("tensor_type"):
        return
    out = onnx.TypeProto()
    out.tensor_type.elem_type = cache_t.tensor_type.elem_type
    if cache_t.tensor_type.HasField("shape") and len(cache_t.tensor_type.shape.dim) == 3:
        out_h, out_w = ctx.get_attribute("out_h"), ctx.get_attribute("out_w")
        dims = cache_t.tensor_type.shape.dim
        out.tensor_type.shape.dim.add().CopyFrom(dims[0])
        middle = out.tensor_type.shape.dim.add()
        if out_h is not None and out_w is not None:
            middle.dim_value = out_h.i * out_w.i
        out.tensor_type.shape.dim.add().CopyFrom(dims[2])
    ctx.set_output_type(0, out)


def _infer_add(ctx: Any) -> None:
    """Output type: the residual's (input 0), shape and element type."""
    res_t = ctx.get_input_type(0)
    if res_t is not None and res_t.HasField("tensor_type"):
        ctx.set_output_type(0, res_t)


def _attrs() -> list:
    attrs = [OpSchema.Attribute(n, OpSchema.AttrType.INT, "token-grid size", required=True) for n in SIZE_ATTRS]
    return attrs + [
        OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace", required=False),
        OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version", required=False),
    ]


def _schema_add() -> OpSchema:
    param = OpSchema.FormalParameter
    floats = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    schema = OpSchema(
        OP_TYPE_ADD,
        DOMAIN,
        SCHEMA_VERSION,
        "residual (B, out_h*out_w, C) + FastVARRestore(kept, kept_idx, cache): the restored map in the cache's "
        "type, added in the residual's type.",
        inputs=[param("residual", "R"), param("kept", "T"), param("kept_idx", "tensor(int64)"), param("cache", "T")],
        outputs=[param("sum", "R")],
        type_constraints=[("R", floats, "residual and output type"), ("T", floats, "restored map type")],
        attributes=_attrs(),
    )
    schema.set_type_and_shape_inference_function(_infer_add)
    return schema


def _schema() -> OpSchema:
    param = OpSchema.FormalParameter
    attrs = _attrs()
    schema = OpSchema(
        OP_TYPE,
        DOMAIN,
        SCHEMA_VERSION,
        "Area-upsample cache (B, cache_h*cache_w, C) to (B, out_h*out_w, C) and scatter kept (B, K, C) "
        "into it at positions kept_idx (B, K).",
        inputs=[param("kept", "T"), param("kept_idx", "tensor(int64)"), param("cache", "T")],
        outputs=[param("restored", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float types")],
        attributes=attrs,
    )
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def register_schema() -> None:
    """Register FastVARRestore and FastVARRestoreAdd (domain ``fastvar``, version 1) with onnx once; later
    calls do nothing.

    Needed by the exporter and by ``onnx.checker.check_model(..., full_check=True)``. The schema carries a
    Python type-and-shape inference function. A schema someone else registered first is left in place.
    """
    with _LOCK:
        for op, make in ((OP_TYPE, _schema), (OP_TYPE_ADD, _schema_add)):
            if onnx.defs.has(op, SCHEMA_VERSION, DOMAIN):
                continue
            try:
                onnx.defs.register_schema(make())
            except onnx.defs.SchemaError:
                if not onnx.defs.has(op, SCHEMA_VERSION, DOMAIN):
                    raise


def translation_table() -> dict[Any, Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: fastvar::restore -> one plugin node."""
    import onnxscript
    import torch

    from . import torch_op  # noqa: F401  (defines torch.ops.fastvar.restore)

    register_schema()
    opset = onnxscript.values.Opset(DOMAIN, SCHEMA_VERSION)

    def fastvar_restore(kept, kept_idx, cache, cache_h: int, cache_w: int, out_h: int, out_w: int):
        # A plain function: wrapping it in @onnxscript.script breaks the exporter's inliner.
        return opset.FastVARRestore(
            kept,
            kept_idx,
            cache,
            cache_h=int(cache_h),
            cache_w=int(cache_w),
            out_h=int(out_h),
            out_w=int(out_w),
            plugin_namespace=DOMAIN,
            plugin_version=PLUGIN_VERSION,
        )

    def fastvar_restore_add(residual, kept, kept_idx, cache, cache_h: int, cache_w: int, out_h: int, out_w: int):
        return opset.FastVARRestoreAdd(
            residual,
            kept,
            kept_idx,
            cache,
            cache_h=int(cache_h),
            cache_w=int(cache_w),
            out_h=int(out_h),
            out_w=int(out_w),
            plugin_namespace=DOMAIN,
            plugin_version=PLUGIN_VERSION,
        )

    return {torch.ops.fastvar.restore.default: fastvar_restore,
            torch.ops.fastvar.restore_add.default: fastvar_restore_add}
