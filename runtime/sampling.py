"""Bit sampling from explicit uniform noise, reproducing upstream's rule so every backend agrees.

Upstream (Infinity ``sample_with_top_k_top_p_also_inplace_modifying_logits_`` with top_k=900, top_p=0.97)
treats each bit's logit pair (logit(bit=0), logit(bit=1)) as a 2-class distribution: top-k is a no-op on
two classes; top-p removes the less likely class when its probability is <= 1 - top_p (0.03); the bit
is then drawn from what is left. Upstream draws with ``torch.multinomial`` on a CUDA generator, whose
stream no other backend can reproduce; we draw ``bit = 1 if u < p1`` with u ~ U[0, 1) from a seeded CPU
generator, the same distribution, and the same bits on every backend given the same noise.
"""

from __future__ import annotations

import torch

TOP_P = 0.97


def bit_probabilities(logits: torch.Tensor, top_p: float = TOP_P) -> torch.Tensor:
    """(B, L, 2d) logits -> (B, L, d) probability that each bit is 1 after upstream's top-p filter."""
    b, n, v = logits.shape
    probs = logits.float().reshape(b, n, v // 2, 2).softmax(dim=-1)
    p0, p1 = probs[..., 0], probs[..., 1]
    thr = 1 - top_p
    p1 = torch.where((p1 < p0) & (p1 <= thr), torch.zeros_like(p1), p1)
    p1 = torch.where((p0 < p1) & (p0 <= thr), torch.ones_like(p1), p1)
    return p1


def sample_bits(logits: torch.Tensor, noise: torch.Tensor, top_p: float = TOP_P) -> torch.Tensor:
    """Bits (B, L, d) uint8 from logits (B, L, 2d) and uniform noise (B, L, d)."""
    p1 = bit_probabilities(logits, top_p)
    if noise.shape != p1.shape:
        raise ValueError(f"noise {tuple(noise.shape)} does not match the bits {tuple(p1.shape)}")
    return (noise.to(p1.device) < p1).to(torch.uint8)


def draw_noise(seed: int, token_counts: list[int], batch: int, bits: int) -> list[torch.Tensor]:
    """One uniform tensor (batch, tokens, bits) per scale of the schedule, executed or not.

    Drawing for skipped steps too keeps the noise of every step independent of the pruning schedule, so
    ``none`` and ``fastvar`` runs with the same seed see the same noise at the same step.
    """
    g = torch.Generator().manual_seed(int(seed))
    return [torch.rand((batch, n, bits), generator=g) for n in token_counts]
