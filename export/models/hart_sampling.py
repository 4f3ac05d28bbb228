"""HART's sampling rules, with every random draw an explicit input so all backends can agree.

Upstream (``autoregressive_infer_cfg`` in hart_transformer_t2i.py, ``sample_with_top_k_top_p_`` and
``gumbel_softmax_with_rng`` in hart/modules/networks/utils.py):

* guidance weight t = cfg * ratio with ratio = si / (S - 1) for steps 0..S-2; the last (MaskGIT) step
  reuses the previous step's ratio, (S - 2) / (S - 1). Logits mix as (1 + t) * cond - t * uncond.
* top-k: 600 before step 7, 300 from it on (the last step included); logits below the k-th largest are
  dropped (ties at the threshold stay). top-p (off by default, 0) drops the smallest tokens whose
  cumulative probability stays <= 1 - top_p, never the largest.
* an index is drawn from the filtered softmax. Upstream uses ``torch.multinomial`` on its generator;
  we invert the CDF at a uniform u: the same distribution, and the same index on every backend.
* ``more_smooth`` (upstream's sample.py default): the token fed back is not the codebook row of the
  index but a Gumbel-softmax mixture of the codebook over the *filtered* logits scaled by (1 + ratio),
  temperature max(0.27 * (1 - 0.95 * ratio), 0.005). Gumbel noise g = -log(E), E ~ Exp(1) = -log(u).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvar.export.models.hart_config import HARTConfig
from fastvar.export.models.hart_diffusion import diffusion_noise

TOP_K_EARLY, TOP_K_LATE, TOP_K_SWITCH = 600, 300, 7


def guidance_ratio(si: int, num_scales: int) -> float:
    """si / (S - 1), frozen at (S - 2) / (S - 1) for the last step (upstream carries it over)."""
    return min(si, num_scales - 2) / (num_scales - 1)


def cfg_weight(cfg: float, si: int, num_scales: int) -> float:
    return cfg * guidance_ratio(si, num_scales)


def top_k_for(si: int) -> int:
    return TOP_K_EARLY if si < TOP_K_SWITCH else TOP_K_LATE


def gumbel_tau(ratio: float) -> float:
    return max(0.27 * (1 - ratio * 0.95), 0.005)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float = 0.0) -> torch.Tensor:
    """(B, L, V) -> float32 logits with the dropped entries at -inf (upstream's top-k then top-p)."""
    out = logits.float().clone()
    v = out.shape[-1]
    if 0 < top_k < v:
        kth = out.topk(top_k, dim=-1, largest=True, sorted=False).values.amin(dim=-1, keepdim=True)
        out = out.masked_fill(out < kth, -torch.inf)
    if top_p > 0:
        srt, order = out.sort(dim=-1, descending=False)
        drop = srt.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False
        out = out.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
    return out


def sample_indices(filtered: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices (B, L) int64 from filtered logits (B, L, V) and uniforms u (B, L) in [0, 1): inverse CDF."""
    if u.shape != filtered.shape[:-1]:
        raise ValueError(f"uniform noise {tuple(u.shape)} does not match the tokens {tuple(filtered.shape[:-1])}")
    cdf = filtered.softmax(dim=-1).cumsum(dim=-1)
    target = (u.to(cdf.device).float() * cdf[..., -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(cdf.shape[-1] - 1)


def gumbel_soft_embedding(filtered: torch.Tensor, ratio: float, u: torch.Tensor,
                          codebook: torch.Tensor) -> torch.Tensor:
    """``more_smooth`` token vectors (B, L, Cvae): softmax((filtered * (1 + ratio) + g) / tau) @ codebook."""
    if u.shape != filtered.shape:
        raise ValueError(f"Gumbel noise {tuple(u.shape)} does not match the logits {tuple(filtered.shape)}")
    e = -torch.log(u.to(filtered.device).float().clamp(1e-20, 1.0))
    g = -torch.log(e.clamp_min(1e-20))
    y = ((filtered * (1 + ratio) + g) / gumbel_tau(ratio)).softmax(dim=-1)
    return y @ codebook.float()


@dataclass
class HARTNoise:
    """Every random draw of one generation: per step token uniforms (B, l), optional Gumbel uniforms
    (B, l, V), and the diffusion head's normals (steps, B * L_last, Cvae)."""

    tokens: list[torch.Tensor]
    gumbel: list[torch.Tensor] | None
    diffusion: torch.Tensor

    def to(self, device: torch.device) -> HARTNoise:
        """All draws on ``device`` at once (one upload per image, not one blocking copy per step)."""
        def move(t: torch.Tensor) -> torch.Tensor:
            if t.device == device:
                return t
            if device.type == "cuda":
                return t.pin_memory().to(device, non_blocking=True)
            return t.to(device)

        return HARTNoise(tokens=[move(t) for t in self.tokens],
                         gumbel=None if self.gumbel is None else [move(t) for t in self.gumbel],
                         diffusion=move(self.diffusion))


def concat_noise(rows: list[HARTNoise]) -> HARTNoise:
    """Rows drawn one by one stacked into one batch (the diffusion normals are row-major: B * L_last)."""
    gumbel = None if rows[0].gumbel is None else [torch.cat(ts) for ts in zip(*(r.gumbel for r in rows), strict=True)]
    return HARTNoise(tokens=[torch.cat(ts) for ts in zip(*(r.tokens for r in rows), strict=True)], gumbel=gumbel,
                     diffusion=torch.cat([r.diffusion for r in rows], dim=1))


def draw_noise(seed: int, cfg: HARTConfig, batch: int, smooth: bool = True) -> HARTNoise:
    """All draws from one seeded CPU generator, per step in order (token counts 1, pn^2, ...)."""
    g = torch.Generator().manual_seed(int(seed))
    counts = [1] + [p * p for p in cfg.patch_nums[1:]]
    tokens = [torch.rand((batch, n), generator=g) for n in counts]
    gumbel = [torch.rand((batch, n, cfg.vocab), generator=g) for n in counts] if smooth else None
    diff = diffusion_noise(int(torch.randint(0, 2**31 - 1, (1,), generator=g)), cfg.diff_steps,
                           batch * cfg.final_side ** 2, cfg.cvae)
    return HARTNoise(tokens=tokens, gumbel=gumbel, diffusion=diff)
