"""FastVARRestore for ONNX Runtime on CPU: a NumPy kernel registered as an onnxruntime_extensions PyOp.

It lets the exported plugin graph run (and be checked) without TensorRT. It does not import torch: the
area windows and the scatter are computed here independently of ``reference.py``, so agreement between the
two is evidence, not tautology. PyOps live in the fixed domain ``ai.onnx.contrib``, hence ``for_onnxruntime``.
Float32 only (the PyOp type signature is fixed at registration).
"""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from fastvar.onnx_graph import walk_nodes

from .onnx_op import DOMAIN, OP_TYPE, OP_TYPE_ADD, OP_TYPES, SIZE_ATTRS

if TYPE_CHECKING:
    import onnxruntime

PYOP_DOMAIN = "ai.onnx.contrib"

__all__ = ["PYOP_DOMAIN", "area_upsample_np", "for_onnxruntime", "restore_np", "session_options"]

_LOCK = threading.Lock()
_REGISTERED = False


def _windows(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-average window [start, end) of each output index: floor(i*n_in/n_out), ceil((i+1)*n_in/n_out)."""
    i = np.arange(n_out, dtype=np.int64)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def area_upsample_np(cache: np.ndarray, cache_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Area-resize (B, hc*wc, C) to (B, h*w, C) in the cache's dtype.

    Each output sums its window row by row, left to right, starting from zero, then divides once by the
    window size: the order PyTorch's CPU kernel uses, so float32 results match it bit for bit. Window cells
    are visited by offset; cells past a window's end add an exact zero, which leaves the sum unchanged.
    """
    b, lc, c = cache.shape
    hc, wc = cache_hw
    h, w = out_hw
    if lc != hc * wc:
        raise ValueError(f"cache has {lc} tokens but cache_hw={cache_hw} implies {hc * wc}")
    grid = cache.reshape(b, hc, wc, c)
    r0, r1 = _windows(hc, h)
    c0, c1 = _windows(wc, w)
    acc = np.zeros((b, h, w, c), dtype=cache.dtype)
    for di in range(int((r1 - r0).max())):
        rows = r0 + di
        rows_ok = rows < r1
        band = grid[:, np.minimum(rows, hc - 1)]  # (b, h, wc, c)
        for dj in range(int((c1 - c0).max())):
            cols = c0 + dj
            ok = rows_ok[:, None] & (cols < c1)[None, :]
            vals = band[:, :, np.minimum(cols, wc - 1)]  # (b, h, w, c)
            acc += np.where(ok[None, :, :, None], vals, np.zeros((), dtype=cache.dtype))
    count = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).astype(cache.dtype)
    acc /= count[None, :, :, None]
    return acc.reshape(b, h * w, c)


def restore_np(
    kept: np.ndarray,
    kept_idx: np.ndarray,
    cache: np.ndarray,
    cache_hw: tuple[int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """NumPy FastVARRestore: the area-upsampled cache with ``kept[b, k]`` written at row ``kept_idx[b, k]``.

    Indices must lie in [0, h*w) (as for torch's scatter); with repeated indices the last write wins.
    """
    if kept.shape[:2] != kept_idx.shape:
        raise ValueError(f"kept {kept.shape} and kept_idx {kept_idx.shape} disagree on (B, K)")
    full = area_upsample_np(cache, cache_hw, out_hw)
    n = full.shape[1]
    if kept_idx.size and (kept_idx.min() < 0 or kept_idx.max() >= n):
        raise IndexError(f"kept_idx must lie in [0, {n})")
    full[np.arange(full.shape[0])[:, None], kept_idx.astype(np.int64)] = kept.astype(full.dtype)
    return full


def _extensions() -> Any:
    try:
        import onnxruntime_extensions
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "running FastVARRestore in ONNX Runtime needs the 'onnxruntime-extensions' package "
            "(pip install onnxruntime-extensions)"
        ) from e
    return onnxruntime_extensions


def _register_pyop() -> None:
    """Declare the PyOp once per process (onnxruntime_extensions keeps a global table)."""
    global _REGISTERED
    with _LOCK:
        if _REGISTERED:
            return
        ext = _extensions()
        dt = ext.PyCustomOpDef

        @ext.onnx_op(
            op_type=OP_TYPE,
            inputs=[dt.dt_float, dt.dt_int64, dt.dt_float],
            outputs=[dt.dt_float],
            attrs={name: dt.dt_int64 for name in SIZE_ATTRS},
        )
        def fastvar_restore(kept, kept_idx, cache, cache_h=0, cache_w=0, out_h=0, out_w=0):
            return restore_np(
                np.asarray(kept, dtype=np.float32),
                np.asarray(kept_idx),
                np.asarray(cache, dtype=np.float32),
                (cache_h, cache_w),
                (out_h, out_w),
            )

        @ext.onnx_op(
            op_type=OP_TYPE_ADD,
            inputs=[dt.dt_float, dt.dt_float, dt.dt_int64, dt.dt_float],
            outputs=[dt.dt_float],
            attrs={name: dt.dt_int64 for name in SIZE_ATTRS},
        )
        def fastvar_restore_add(residual, kept, kept_idx, cache, cache_h=0, cache_w=0, out_h=0, out_w=0):
            restored = fastvar_restore(kept, kept_idx, cache, cache_h, cache_w, out_h, out_w)
            return np.asarray(residual, dtype=np.float32) + restored

        _REGISTERED = True


def session_options(so: onnxruntime.SessionOptions | None = None) -> onnxruntime.SessionOptions:
    """Session options that can run FastVARRestore: the PyOp is declared and the extensions library loaded."""
    import onnxruntime

    ext = _extensions()
    _register_pyop()
    so = onnxruntime.SessionOptions() if so is None else so
    so.register_custom_ops_library(ext.get_library_path())
    return so


def for_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose FastVARRestore(Add) nodes are PyOp nodes (domain ``ai.onnx.contrib``).

    The TensorRT string attributes (plugin_namespace, plugin_version) stay: the PyOp reads only the attributes
    it declares and ignores the rest (checked with onnxruntime-extensions 0.15). The ``fastvar`` opset import
    goes when nothing else uses it. The input model is not modified.
    """
    out = copy.deepcopy(model)
    for node in walk_nodes(out.graph, out.functions):
        if node.op_type in OP_TYPES and node.domain == DOMAIN:
            node.domain = PYOP_DOMAIN
    used = {node.domain for node in walk_nodes(out.graph, out.functions)}
    imports = [op for op in out.opset_import if not (op.domain == DOMAIN and DOMAIN not in used)]
    if PYOP_DOMAIN in used and all(op.domain != PYOP_DOMAIN for op in imports):
        imports.append(onnx.helper.make_opsetid(PYOP_DOMAIN, 1))
    del out.opset_import[:]
    out.opset_import.extend(imports)
    return out
