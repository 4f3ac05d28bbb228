"""The meaning of the FastVARRestore op, as upstream FastVAR computes it (cached token restoration).

Every other implementation (ONNX standard-op spelling, ONNX Runtime custom op, Triton kernel, TensorRT
plugin) is tested against these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def area_upsample(cache: torch.Tensor, cache_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a token map (B, hc*wc, C) to (B, h*w, C) with ``F.interpolate(mode='area')``.

    Area mode is adaptive average pooling: output row i averages input rows
    [floor(i*hc/h), ceil((i+1)*hc/h)), the same for columns, so non-dividing sizes (24 -> 40) mix one- and
    two-tap averages. Upstream applies it to a channels-first view of the cache; so do we.
    """
    b, lc, c = cache.shape
    hc, wc = cache_hw
    h, w = out_hw
    if lc != hc * wc:
        raise ValueError(f"cache has {lc} tokens but cache_hw={cache_hw} implies {hc * wc}")
    grid = cache.reshape(b, hc, wc, c).permute(0, 3, 1, 2)
    up = F.interpolate(grid, size=(h, w), mode="area")
    return up.permute(0, 2, 3, 1).reshape(b, h * w, c)


def restore_reference(
    kept: torch.Tensor,
    kept_idx: torch.Tensor,
    cache: torch.Tensor,
    cache_hw: tuple[int, int],
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """Cached token restoration (CTR): the full (B, h*w, C) map of one sub-layer's output.

    ``kept`` (B, K, C) are the outputs computed for the kept tokens, ``kept_idx`` (B, K) their flat
    positions (int64, any order); every other position takes the area-upsampled cache of the same
    sub-layer and block. The result has the cache's dtype, as upstream's in-place ``scatter_`` does.
    """
    if kept.shape[:2] != kept_idx.shape:
        raise ValueError(f"kept {tuple(kept.shape)} and kept_idx {tuple(kept_idx.shape)} disagree on (B, K)")
    full = area_upsample(cache, cache_hw, out_hw)
    index = kept_idx.long().unsqueeze(-1).expand(-1, -1, full.shape[-1])
    return full.scatter(1, index, kept.to(full.dtype))


def restore_add_reference(
    residual: torch.Tensor,
    kept: torch.Tensor,
    kept_idx: torch.Tensor,
    cache: torch.Tensor,
    cache_hw: tuple[int, int],
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """``residual + restore_reference(...)``: the restore fused with the residual add that consumes it.

    FastVAR's blocks add every restored sub-layer output to the residual stream at once, so the fused op
    saves one write and one read of a (B, h*w, C) map per pruned sub-layer. The restored map is rounded to
    the cache's dtype first and the sum follows torch's type promotion (an fp32 residual stays fp32).
    """
    return residual + restore_reference(kept, kept_idx, cache, cache_hw, out_hw)
