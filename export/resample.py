"""Separable resampling as two constant matrix products: how the graphs spell bicubic up and area down.

``F.interpolate`` in bicubic (align_corners False) and area mode is separable: out = M_h · x · M_wᵀ.
The matrices are taken from ``F.interpolate`` itself applied to unit vectors, so they carry PyTorch's
exact weights (border clamping, uneven area windows) and the graph needs only MatMul, whatever the
sizes: ONNX's Resize has no area mode, and AdaptiveAvgPool does not exist in ONNX for windows that do
not divide. Results equal the reference up to float summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("bicubic", "area")


def resample_matrix(src: int, dst: int, mode: str) -> torch.Tensor:
    """(dst, src) float32: row i holds the weights of the source cells output cell i reads."""
    if mode not in MODES:
        raise ValueError(f"unknown resampling mode {mode!r}; accepted: {', '.join(MODES)}")
    basis = torch.eye(src, dtype=torch.float64).view(src, 1, src, 1)
    out = F.interpolate(basis, size=(dst, 1), mode=mode)  # unit vector j -> column j
    return out[:, 0, :, 0].t().float().contiguous()


def resample_2d(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """x (B, C, H, W) -> (B, C, *size), as ``F.interpolate(x, size, mode=mode)`` computes it."""
    mh = resample_matrix(x.shape[-2], size[0], mode).to(x.device)
    mw = resample_matrix(x.shape[-1], size[1], mode).to(x.device)
    return mh @ x.float() @ mw.t()
