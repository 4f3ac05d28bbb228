"""What differs between model families inside the one generation loop (``chain.generate``).

A loop object (one per model family) says how a step is called, how its tokens are drawn from explicit
noise, what state is fed back to the next step, and how the final state is decoded. The loop owns the rest
(order, timing, teacher forcing, what is kept), so backends and families cannot drift apart in it.

* Infinity: bits per token; the summed (upsampled) codes are the state; one guidance scale and a τ.
* HART: codebook indices; the state is ``f_hat`` (Φ-corrected residual sum) and the next scale's
  input; the guidance weight ramps per step; the last step adds the diffusion head's residual.

``advance`` returns what else the step sampled from besides the logits (HART's diffusion residual), so
the loop can flag a row that went non-finite there too (``runtime.nonfinite``).

Noise is drawn row by row from each row's seed (``SamplingSettings``) and stacked, so an image does not
depend on what else is in its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fastvar.export.models.bsq_vae import bits_to_codes, next_input, upsample_codes
from fastvar.export.models.hart_sampling import (
    HARTNoise,
    cfg_weight,
    concat_noise,
    filter_logits,
    guidance_ratio,
    gumbel_soft_embedding,
    sample_indices,
    top_k_for,
)
from fastvar.export.models.hart_sampling import (
    draw_noise as hart_draw_noise,
)
from fastvar.export.schedules import ScaleSchedule, StepPlan
from fastvar.runtime.sampling import draw_noise, sample_bits
from fastvar.runtime.step_call import StepCall
from fastvar.sampling import SamplingSettings


@dataclass
class Geometry:
    """Infinity: bits per token and the VAE's code layout."""

    bits: int
    codebook_dim: int
    patchify: bool

    def vae_hw(self, h: int, w: int) -> tuple[int, int]:
        return (2 * h, 2 * w) if self.patchify else (h, w)

    def loop(self, sched: ScaleSchedule, settings: SamplingSettings) -> InfinityLoop:
        return InfinityLoop(self, sched, settings.tau)


@dataclass
class HARTGeometry:
    """HART: the schedule's sides, the codebook, the diffusion head's steps and the sampling switches."""

    patch_nums: tuple[int, ...]
    vocab: int
    cvae: int
    diff_steps: int
    top_p: float = 0.0

    @property
    def final_side(self) -> int:
        return self.patch_nums[-1]

    def loop(self, sched: ScaleSchedule, settings: SamplingSettings) -> HARTLoop:
        return HARTLoop(self, settings.more_smooth)


class InfinityLoop:
    token_name = "bits"

    def __init__(self, geom: Geometry, sched: ScaleSchedule, tau: float | None) -> None:
        if tau is None or not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"tau must be a finite number > 0 (Infinity samples with a temperature), got {tau}")
        self.geom, self.sched, self.tau = geom, sched, tau
        last = sched.scales[-1]
        self.final_hw = geom.vae_hw(last.h, last.w)
        self.summed: torch.Tensor | None = None

    @staticmethod
    def guided(cfg: float) -> bool:
        return cfg != 1

    def draw(self, seeds: tuple[int, ...]) -> list[torch.Tensor]:
        counts = [s.tokens for s in self.sched.scales]
        rows = [draw_noise(seed, counts, 1, self.geom.bits) for seed in seeds]
        return [torch.cat(per_scale) for per_scale in zip(*rows, strict=True)]

    def step(self, backend, st: StepPlan, noise, cfg: float, write_kv: bool):
        g = self.geom
        codes_in = None if st.index == 0 else next_input(self.summed, g.vae_hw(st.h, st.w), g.patchify)
        return backend.step(st, StepCall(codes_in, cfg, write_kv, inv_tau=1.0 / self.tau, noise=noise[st.index]))

    def sample(self, logits: torch.Tensor, sampled: torch.Tensor | None, st: StepPlan, noise) -> torch.Tensor:
        if sampled is None:  # a backend without in-graph sampling: the same rule, here
            sampled = sample_bits(logits, noise[st.index])
        return sampled.view(logits.shape[0], st.h, st.w, self.geom.bits)

    def forced(self, arr: np.ndarray, key: str, st: StepPlan, batch: int) -> torch.Tensor:
        shape = (batch, st.h, st.w, self.geom.bits)
        if arr.shape != shape:
            raise ValueError(f"--force-tokens: {key} has shape {arr.shape}, this run needs {shape} (batch, h, w, bits)")
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"--force-tokens: {key} holds values other than 0 and 1 (bits are expected)")
        return torch.from_numpy(arr.astype(np.uint8))

    def advance(self, backend, st: StepPlan, tokens: torch.Tensor, noise, cfg: float) -> dict[str, torch.Tensor]:
        """Add the step's codes to the sum; nothing besides the logits is sampled from."""
        codes = bits_to_codes(tokens, self.geom.codebook_dim, self.geom.patchify)
        if st.index != self.sched.scales[-1].index:
            codes = upsample_codes(codes, self.final_hw)
        self.summed = codes if self.summed is None else self.summed + codes
        return {}

    @property
    def state(self) -> torch.Tensor:
        return self.summed

    def end_loop(self) -> None:
        """Nothing to drop: the summed codes are the decoder's input."""

    def decode(self, backend) -> torch.Tensor:
        return backend.decode(self.summed.squeeze(-3))


class HARTLoop:
    token_name = "codebook indices"

    def __init__(self, geom: HARTGeometry, more_smooth: bool) -> None:
        self.geom, self.more_smooth = geom, more_smooth
        self.f_hat: torch.Tensor | None = None
        self.x_in: torch.Tensor | None = None
        self.filtered: torch.Tensor | None = None
        self.noise: HARTNoise | None = None  # this image's draws on the backend's device

    @staticmethod
    def guided(cfg: float) -> bool:
        """HART's weight is cfg * ratio: cfg 0 is the unguided model (upstream always guides)."""
        return cfg != 0

    def draw(self, seeds: tuple[int, ...]) -> HARTNoise:
        return concat_noise([hart_draw_noise(seed, self.geom, 1, smooth=self.more_smooth) for seed in seeds])

    def weight(self, cfg: float, si: int) -> float:
        return cfg_weight(cfg, si, len(self.geom.patch_nums))

    def step(self, backend, st: StepPlan, noise, cfg: float, write_kv: bool):
        if st.index == 0:
            p = self.geom.final_side
            self.f_hat = torch.zeros(backend.batch, self.geom.cvae, p, p, device=backend.device)
            self.x_in = None
            self.noise = noise.to(self.f_hat.device)
        return backend.step(st, StepCall(self.x_in, self.weight(cfg, st.index), write_kv))

    def sample(self, logits: torch.Tensor, sampled: torch.Tensor | None, st: StepPlan, noise) -> torch.Tensor:
        self.filtered = filter_logits(logits, top_k_for(st.index), self.geom.top_p)
        idx = sampled if sampled is not None else sample_indices(self.filtered, self.noise.tokens[st.index])
        return idx.view(logits.shape[0], st.h, st.w).to(torch.int32)

    def forced(self, arr: np.ndarray, key: str, st: StepPlan, batch: int) -> torch.Tensor:
        shape = (batch, st.h, st.w)
        if arr.shape != shape:
            raise ValueError(f"--force-tokens: {key} has shape {arr.shape}, this run needs {shape} (batch, h, w)")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"--force-tokens: {key} is {arr.dtype}; HART takes integer codebook indices")
        if arr.size and (arr.min() < 0 or arr.max() >= self.geom.vocab):
            raise ValueError(f"--force-tokens: {key} holds indices outside [0, {self.geom.vocab})")
        return torch.from_numpy(arr.astype(np.int32))

    def advance(self, backend, st: StepPlan, tokens: torch.Tensor, noise, cfg: float) -> dict[str, torch.Tensor]:
        """Feed back the token vectors (Gumbel-soft or codebook rows), plus the diffusion residual at the end
        (returned: the diffusion head samples with its own guidance, so its output is checked too)."""
        si, steps = st.index, len(self.geom.patch_nums)
        b = tokens.shape[0]
        codebook = backend.codebook
        idx = tokens.view(b, -1).long().to(codebook.device)
        if self.more_smooth:
            h = gumbel_soft_embedding(self.filtered, guidance_ratio(si, steps), self.noise.gumbel[si], codebook)
        else:
            h = codebook[idx].float()
        sampled = {}
        if si == steps - 1:
            residual = backend.diffusion(codebook[idx].float(), self.noise.diffusion, self.weight(cfg, si))
            sampled["the diffusion head's output"] = residual
            h = h + residual
        self.f_hat, self.x_in = backend.next_input(si, self.f_hat, h)
        return sampled

    @property
    def state(self) -> torch.Tensor:
        return self.f_hat

    def end_loop(self) -> None:
        """Drop the loop's buffers (next input, filtered logits, noise); f_hat is the decoder's input."""
        self.x_in, self.filtered, self.noise = None, None, None

    def decode(self, backend) -> torch.Tensor:
        return backend.decode(self.f_hat)
