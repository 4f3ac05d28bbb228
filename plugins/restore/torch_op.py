"""Two exportable spellings of FastVARRestore in torch.

* ``torch.ops.fastvar.restore`` is an opaque custom op: the dynamo ONNX exporter sees one call, so a
  translation table (``onnx_op.translation_table``) can emit one plugin node for TensorRT.
  ``torch.ops.fastvar.restore_add`` is the same op fused with the residual add that consumes it.
* ``restore_standard`` spells the same maths with ops every ONNX backend knows (two MatMuls with constant
  area matrices and a ScatterElements), for runtimes without the plugin and as a cross-check.

Only torch is imported here, so the package can import this module cheaply.
"""

from __future__ import annotations

import functools

import torch

from .reference import restore_add_reference, restore_reference

__all__ = ["area_matrix", "restore", "restore_add", "restore_add_custom", "restore_custom", "restore_standard"]


@torch.library.custom_op("fastvar::restore", mutates_args=())
def restore(
    kept: torch.Tensor,
    kept_idx: torch.Tensor,
    cache: torch.Tensor,
    cache_h: int,
    cache_w: int,
    out_h: int,
    out_w: int,
) -> torch.Tensor:
    """Eager meaning of the op: exactly ``restore_reference`` (the sizes are separate ints for the schema)."""
    return restore_reference(kept, kept_idx, cache, (cache_h, cache_w), (out_h, out_w))


@restore.register_fake
def _restore_fake(
    kept: torch.Tensor,
    kept_idx: torch.Tensor,
    cache: torch.Tensor,
    cache_h: int,
    cache_w: int,
    out_h: int,
    out_w: int,
) -> torch.Tensor:
    """Shape/dtype rule used when tracing: (B, out_h*out_w, C) in the cache's dtype."""
    torch._check(cache.shape[1] == cache_h * cache_w)
    return cache.new_empty((cache.shape[0], out_h * out_w, cache.shape[2]))


def restore_custom(
    kept: torch.Tensor,
    kept_idx: torch.Tensor,
    cache: torch.Tensor,
    cache_hw: tuple[int, int],
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """Call the custom op with the argument types the ONNX schema fixes.

    ``kept`` is cast to the cache's dtype and ``kept_idx`` to int64 here, in torch, so the exported plugin
    node always sees (T, int64, T); when the inputs already have those types nothing extra is traced.
    """
    kept = kept.to(cache.dtype)
    kept_idx = kept_idx.long()
    return torch.ops.fastvar.restore(kept, kept_idx, cache, int(cache_hw[0]), int(cache_hw[1]),
                                     int(out_hw[0]), int(out_hw[1]))


@torch.library.custom_op("fastvar::restore_add", mutates_args=())
def restore_add(
    residual: torch.Tensor,
    kept: torch.Tensor,
    kept_idx: torch.Tensor,
    cache: torch.Tensor,
    cache_h: int,
    cache_w: int,
    out_h: int,
    out_w: int,
) -> torch.Tensor:
    """Eager meaning of the fused op: exactly ``restore_add_reference``."""
    return restore_add_reference(residual, kept, kept_idx, cache, (cache_h, cache_w), (out_h, out_w))


@restore_add.register_fake
def _restore_add_fake(
    residual: torch.Tensor,
    kept: torch.Tensor,
    kept_idx: torch.Tensor,
    cache: torch.Tensor,
    cache_h: int,
    cache_w: int,
    out_h: int,
    out_w: int,
) -> torch.Tensor:
    """The residual's shape; the dtype torch's promotion gives residual + cache."""
    torch._check(cache.shape[1] == cache_h * cache_w)
    torch._check(residual.shape[1] == out_h * out_w)
    return residual.new_empty(residual.shape, dtype=torch.promote_types(residual.dtype, cache.dtype))


def restore_add_custom(
    residual: torch.Tensor,
    kept: torch.Tensor,
    kept_idx: torch.Tensor,
    cache: torch.Tensor,
    cache_hw: tuple[int, int],
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """The fused op with the types its ONNX schema fixes: the residual in its (promoted) output dtype,
    ``kept`` in the cache's dtype, int64 indices."""
    residual = residual.to(torch.promote_types(residual.dtype, cache.dtype))
    return torch.ops.fastvar.restore_add(residual, kept.to(cache.dtype), kept_idx.long(), cache, int(cache_hw[0]),
                                         int(cache_hw[1]), int(out_hw[0]), int(out_hw[1]))


@functools.lru_cache(maxsize=64)
def _area_rows(n_in: int, n_out: int) -> tuple[tuple[float, ...], ...]:
    # Plain Python values, not tensors: a tensor cached while the exporter traces would be a fake tensor.
    rows = []
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)  # ceil((i+1)*n_in/n_out) in integers
        rows.append(tuple(1.0 / (end - start) if start <= j < end else 0.0 for j in range(n_in)))
    return tuple(rows)


def area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float32 matrix whose row i averages inputs [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out)).

    These are PyTorch's adaptive-average (``F.interpolate(mode='area')``) windows, for up- and downsampling
    and for sizes that do not divide. Integer arithmetic keeps the window bounds exact.
    """
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"sizes must be positive, got n_in={n_in}, n_out={n_out}")
    return torch.tensor(_area_rows(int(n_in), int(n_out)), dtype=torch.float32)


def restore_standard(
    kept: torch.Tensor,
    kept_idx: torch.Tensor,
    cache: torch.Tensor,
    cache_hw: tuple[int, int],
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """``restore_reference`` written with standard ONNX ops only (MatMul, Reshape, Cast, Expand, ScatterElements).

    Area resizing is separable: the window mean over rows x columns equals applying the row matrix, then the
    column matrix. The products are computed in float32 and cast back to the cache's dtype. Summation order
    differs from ``F.interpolate`` (and the weights 1/3 etc. are rounded), so float32 results agree to about
    1e-6 relative, not bit for bit; low-precision dtypes agree to within one rounding of that dtype.
    """
    if kept.shape[:2] != kept_idx.shape:
        raise ValueError(f"kept {tuple(kept.shape)} and kept_idx {tuple(kept_idx.shape)} disagree on (B, K)")
    b, lc, c = cache.shape
    hc, wc = int(cache_hw[0]), int(cache_hw[1])
    h, w = int(out_hw[0]), int(out_hw[1])
    if lc != hc * wc:
        raise ValueError(f"cache has {lc} tokens but cache_hw={cache_hw} implies {hc * wc}")
    a_h = area_matrix(hc, h).to(cache.device)
    a_w = area_matrix(wc, w).to(cache.device)
    x = cache.to(torch.float32).reshape(b, hc, wc * c)
    x = torch.matmul(a_h, x)  # (b, h, wc*c): rows resized
    x = torch.matmul(a_w, x.reshape(b, h, wc, c))  # (b, h, w, c): columns resized
    full = x.reshape(b, h * w, c).to(cache.dtype)
    index = kept_idx.long().unsqueeze(-1).expand(-1, -1, c)
    return full.scatter(1, index, kept.to(cache.dtype))
