"""Infinity's 2-D RoPE, computed with upstream's exact float32 operations ("star" positions, mode 2)."""

from __future__ import annotations

import torch

ROPE_BASE = 10000.0
ROPE_MAX_SIDE = 2048 // 16


def rope_freqs_grid(head_dim: int, max_side: int = ROPE_MAX_SIDE, base: float = ROPE_BASE) -> torch.Tensor:
    """cos/sin of every grid cell, (2, max_side, max_side, head_dim // 2): y angles, then x angles."""
    half_dim = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half_dim, 2, dtype=torch.int64).float() / half_dim))
    t = torch.arange(max_side, dtype=torch.int64).type_as(inv_freq)
    freqs = torch.outer(t, inv_freq)
    grid = torch.cat(
        [freqs[:, None, :].expand(-1, max_side, -1), freqs[None, :, :].expand(max_side, -1, -1)], dim=-1
    )
    return torch.stack([torch.cos(grid), torch.sin(grid)], dim=0)


def scale_positions(n: int, final: int) -> torch.Tensor:
    """Grid rows (or columns) of a scale of side n on the final grid: round-half-even(i * final / n)."""
    return (torch.arange(n) * (final / n)).round().long()


def rope_table(head_dim: int, hw: tuple[int, int], rope_grid: tuple[int, int],
               grid: torch.Tensor | None = None) -> torch.Tensor:
    """cos/sin rows of one scale in row-major token order: (2, h*w, head_dim // 2), float32."""
    if grid is None:
        grid = rope_freqs_grid(head_dim)
    h, w = hw
    uh, uw = rope_grid
    if max(uh, uw) > grid.shape[1]:
        raise ValueError(f"RoPE grid {rope_grid} exceeds the {grid.shape[1]}-cell table")
    rows = scale_positions(h, uh)[:, None].expand(h, w).reshape(-1)
    cols = scale_positions(w, uw)[None, :].expand(h, w).reshape(-1)
    return grid[:, rows, cols, :]


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1) of x (..., L, head_dim) by the table's angles.

    ``table`` is (2, L, hd/2) or (2, B, 1, L, hd/2) (per-row tables of kept tokens); float32 throughout.
    """
    cos, sin = table[0], table[1]
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([cos * a - sin * b, sin * a + cos * b], dim=-1)
    return out.reshape(x.shape)
