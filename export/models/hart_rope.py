"""HART's rotary embeddings: 1-D for the text context, 2-D for image tokens, with upstream's position ids.

Upstream (``LlamaRotaryEmbedding1D`` / ``LlamaRotaryEmbedding`` and ``get_position_ids`` in basic_hart.py)
builds cos/sin over the whole head dimension and rotates with ``x * cos + rotate_half(x) * sin``:

* text: position ids are ``cumsum(mask) - 1`` per row (zeros for the unconditional CFG rows); inverse
  frequencies ``theta^(-2i/hd)``, i < hd/2, each used twice (halves concatenated);
* image token (row r, column c) of a pn x pn scale: the float position (r / pn * P, c / pn * P) on the
  final P x P grid, plus the row's last text position id; inverse frequencies ``theta^(-4i/hd)``,
  i < hd/4. The cos/sin layout along hd is [row, row, column, column] quarters, so ``rotate_half``
  pairs a row-angle channel with a column-angle channel (not an orthogonal rotation; it is what the
  released model was trained with, so it is reproduced exactly).
Everything is float32, as upstream forces (autocast disabled).
"""

from __future__ import annotations

import torch


def context_position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(B, Lt) bool valid-token mask -> (B, Lt) int64 position ids, as upstream's encode_prompts makes them.

    Summed in float32 (exact: counts stay far below 2**24) because TensorRT's CumSum takes floats only."""
    return (torch.cumsum(mask.float(), dim=1) - 1).long()


def _inv_freq(head_dim: int, stride: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, stride, dtype=torch.int64).float() / head_dim))


def rope_1d(pos: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) positions -> cos, sin (B, L, hd) float32."""
    freqs = pos.float()[:, :, None] * _inv_freq(head_dim, 2, theta).to(pos.device)[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def image_positions(pn: int, final: int) -> torch.Tensor:
    """(pn*pn, 2) float32 grid positions of a scale in row-major token order: (r, c) / pn * final."""
    r, c = torch.meshgrid(torch.arange(pn), torch.arange(pn), indexing="ij")
    cart = torch.stack((r, c), dim=-1).reshape(-1, 2)
    return cart / pn * final


def rope_2d(pos: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, 2) float positions -> cos, sin (B, L, hd) float32 in upstream's [r, r, c, c] quarter layout."""
    inv = _inv_freq(head_dim, 4, theta).to(pos.device)
    freqs = pos.float()[:, :, :, None] * inv[None, None, None, :]  # (B, L, 2, hd/4)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, L, 2, hd/2)
    emb = emb.reshape(pos.shape[0], pos.shape[1], head_dim)
    return emb.cos(), emb.sin()


def scale_rope(pn: int, final: int, last_pos: torch.Tensor, head_dim: int,
               theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, pn*pn, hd) of one image scale; ``last_pos`` (B,) is each row's last text position id."""
    pos = image_positions(pn, final).to(last_pos.device)[None] + last_pos[:, None, None]
    return rope_2d(pos, head_dim, theta)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, hd); cos/sin (B, L, hd) broadcast over heads."""
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin
