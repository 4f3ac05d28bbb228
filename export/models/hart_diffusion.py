"""HART's residual diffusion head: an MLP denoiser with AdaLN, sampled with iDDPM in 8 respaced steps.

Upstream (``DiffLoss`` / ``SimpleMLPAdaLN`` in hart/modules/diffusion/diffloss.py, the iDDPM sampler in
gaussian_diffusion.py and respace.py): cosine schedule over 1000 steps respaced to ``num_sampling_steps``
evenly spaced ones, epsilon prediction with a learned variance range (output 2*Cvae), the x0 estimate
clipped to [-1, 1], and the sample scaled by 0.6. Classifier-free guidance mixes the two halves' eps with
``(1 + w) * cond - w * uncond`` on the conditional half's state (both halves are fed the same x), taking
the variance from the conditional half. Upstream draws its noise from the global CUDA RNG; here every
draw is an explicit input, so all backends can be held equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

TRAIN_STEPS = 1000
VAE_SCALE = 0.6
TIME_FREQ_DIM = 256  # sinusoid width the timestep MLP reads


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (N,) -> (N, dim): cos half then sin half, float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
    if dim % 2:
        emb = torch.cat((emb, torch.zeros_like(emb[:, :1])), dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear (``mlp.0`` / ``mlp.2``); also HART's optional level embedding."""

    def __init__(self, hidden: int, freq_dim: int = TIME_FREQ_DIM) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(c, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c, 3 * c))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, c: int, out: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(c, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c, 2 * c))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """The denoiser: x (N, Cvae), integer timesteps t (N,), condition c (N, C) -> (N, 2*Cvae) [eps, var]."""

    def __init__(self, cvae: int, width: int, z_channels: int, depth: int) -> None:
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(cvae, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * cvae)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for blk in self.res_blocks:
            h = blk(h, y)
        return self.final_layer(h, y)


def respaced_timesteps(train_steps: int, steps: int) -> list[int]:
    """The original timesteps kept by upstream's respacing with one section of ``steps``, ascending.

    Stride (train_steps - 1) / (steps - 1) accumulated in floats, each rounded half-to-even (Python's
    ``round``): 0, 143, 285, 428, 571, 714, 856, 999 for 1000 -> 8.
    """
    if not 1 <= steps <= train_steps:
        raise ValueError(f"cannot respace {train_steps} diffusion steps into {steps}")
    stride = 1.0 if steps <= 1 else (train_steps - 1) / (steps - 1)
    kept, pos = [], 0.0
    for _ in range(steps):
        kept.append(round(pos))
        pos += stride
    return sorted(set(kept))


@dataclass(frozen=True)
class DiffusionSchedule:
    """Per respaced step i (0 = least noisy): float32 constants of upstream's float64 iDDPM arithmetic."""

    timestep_map: torch.Tensor  # (S,) int64: the original timestep the denoiser is told
    sqrt_recip_ac: torch.Tensor
    sqrt_recipm1_ac: torch.Tensor
    coef1: torch.Tensor
    coef2: torch.Tensor
    min_log: torch.Tensor  # clipped log posterior variance
    max_log: torch.Tensor  # log beta

    @property
    def steps(self) -> int:
        return int(self.timestep_map.numel())


def cosine_schedule(steps: int, train_steps: int = TRAIN_STEPS) -> DiffusionSchedule:
    """Cosine betas (max 0.999) over ``train_steps``, respaced to ``steps``, as upstream's create_diffusion."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    base = np.array([min(1 - alpha_bar((i + 1) / train_steps) / alpha_bar(i / train_steps), 0.999)
                     for i in range(train_steps)], dtype=np.float64)
    base_ac = np.cumprod(1.0 - base)
    keep = respaced_timesteps(train_steps, steps)
    betas, last = [], 1.0
    for i in keep:
        betas.append(1 - base_ac[i] / last)
        last = base_ac[i]
    betas = np.array(betas, dtype=np.float64)
    ac = np.cumprod(1.0 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    post_log = np.log(np.append(post_var[1], post_var[1:])) if len(post_var) > 1 else np.zeros(0)

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.float64)).float()

    # device="cpu": a model built on the meta device (to load a checkpoint over it) still gets real constants
    return DiffusionSchedule(
        timestep_map=torch.tensor(keep, dtype=torch.int64, device="cpu"),
        sqrt_recip_ac=f32(np.sqrt(1.0 / ac)), sqrt_recipm1_ac=f32(np.sqrt(1.0 / ac - 1)),
        coef1=f32(betas * np.sqrt(ac_prev) / (1.0 - ac)),
        coef2=f32((1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac)),
        min_log=f32(post_log), max_log=f32(np.log(betas)),
    )


class DiffusionHead(nn.Module):
    """Upstream's ``DiffLoss`` at inference: only ``net`` holds weights (``diffloss.net.*``)."""

    def __init__(self, cvae: int, z_channels: int, width: int, depth: int, steps: int) -> None:
        super().__init__()
        self.cvae = cvae
        self.net = SimpleMLPAdaLN(cvae, width, z_channels, depth)
        self.schedule = cosine_schedule(steps)

    def denoise_step(self, i: int, x: torch.Tensor, z: torch.Tensor, guidance: float | torch.Tensor | None,
                     noise: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
        """x_{i} -> x_{i-1} for respaced step i (S-1 .. 0). With ``guidance``, z holds [cond; uncond] rows."""
        s, n = self.schedule, x.shape[0]
        t = s.timestep_map[i].expand(z.shape[0]).to(x.device)
        if guidance is None:
            out = self.net(x, t, z)
            eps, var = out[:, :self.cvae], out[:, self.cvae:]
        else:
            out = self.net(torch.cat((x, x), 0), t, z)
            cond_eps = out[:n, :self.cvae]
            eps = (1 + guidance) * cond_eps - guidance * out[n:, :self.cvae]
            if isinstance(guidance, torch.Tensor):  # a graph input: upstream's t == 1 switch, as a select
                eps = torch.where(guidance == 1, cond_eps, eps)
            var = out[:n, self.cvae:]
        frac = (var + 1) / 2
        log_var = frac * s.max_log[i] + (1 - frac) * s.min_log[i]
        x0 = (s.sqrt_recip_ac[i] * x - s.sqrt_recipm1_ac[i] * eps).clamp(-1, 1)
        mean = s.coef1[i] * x0 + s.coef2[i] * x
        if i == 0:
            return mean
        return mean + torch.exp(0.5 * log_var) * noise * temperature

    def sample(self, z: torch.Tensor, noise: torch.Tensor, guidance: float | torch.Tensor | None,
               temperature: float = 1.0) -> torch.Tensor:
        """Residual latents (N, Cvae) from conditions z and standard-normal noise (S, N, Cvae).

        ``noise[0]`` is the starting x_T; ``noise[j]`` (j >= 1) is added at respaced step S - j (the last
        step adds none). With ``guidance`` (upstream's weight t), z is (2N, C): [cond; uncond]. Upstream
        switches guidance off when the weight is exactly 1.0 (its ``cfg == 1.0`` test), and so do we.
        """
        steps = self.schedule.steps
        n = noise.shape[1]
        if noise.shape != (steps, n, self.cvae):
            raise ValueError(f"diffusion noise {tuple(noise.shape)} is not (steps={steps}, N, {self.cvae})")
        if guidance is not None and not isinstance(guidance, torch.Tensor) and float(guidance) == 1.0:
            guidance, z = None, z[:n]
        if z.shape[0] != (2 * n if guidance is not None else n):
            raise ValueError(f"condition rows {z.shape[0]} do not match {n} noise rows (x2 with guidance)")
        x = noise[0].to(z.device, torch.float32)
        for j, i in enumerate(reversed(range(steps))):
            nz = noise[j + 1].to(x.device) if i > 0 else None
            x = self.denoise_step(i, x, z.float(), guidance, nz, temperature)
        return x * VAE_SCALE


def diffusion_noise(seed: int, steps: int, n: int, cvae: int) -> torch.Tensor:
    """Standard-normal noise (steps, n, cvae) from a seeded CPU generator."""
    return torch.randn((steps, n, cvae), generator=torch.Generator().manual_seed(int(seed)))

