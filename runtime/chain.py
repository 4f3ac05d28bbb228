"""The generation loop, one for every backend: noise, steps, sampling, codes bookkeeping, decode.

A backend runs the steps; this loop owns everything between them, so backends cannot drift apart in
how tokens are sampled, how codes are summed or how the next scale's input is formed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fastvar.export.models.bsq_vae import bits_to_codes, next_input, to_uint8_image, upsample_codes
from fastvar.export.schedules import PrunePlan, ScaleSchedule
from fastvar.runtime.sampling import draw_noise, sample_bits


@dataclass
class Geometry:
    """What the loop needs to know of the model: bits per token and the VAE's code layout."""

    bits: int
    codebook_dim: int
    patchify: bool

    def vae_hw(self, h: int, w: int) -> tuple[int, int]:
        return (2 * h, 2 * w) if self.patchify else (h, w)


@dataclass
class GenerationResult:
    images: np.ndarray  # (B, H, W, 3) uint8 RGB
    tokens: dict[str, np.ndarray] = field(default_factory=dict)  # scale_XX -> (B, h, w, bits) uint8
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # scale_XX -> (B, h*w, V) float32
    timings: dict = field(default_factory=dict)


def scale_key(index: int) -> str:
    return f"scale_{index:02d}"


def _forced_bits(force_tokens: dict[str, np.ndarray], key: str, shape: tuple[int, ...]) -> torch.Tensor:
    arr = np.asarray(force_tokens[key])
    if arr.shape != shape:
        raise ValueError(f"--force-tokens: {key} has shape {arr.shape}, this run needs {shape} (batch, h, w, bits)")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"--force-tokens: {key} holds values other than 0 and 1 (bits are expected)")
    return torch.from_numpy(arr.astype(np.uint8))


@torch.inference_mode()
def generate(backend, sched: ScaleSchedule, plan: PrunePlan, geom: Geometry, text: torch.Tensor,
             lengths: torch.Tensor, seed: int, cfg: float, tau: float,
             force_tokens: dict[str, np.ndarray] | None = None, keep_logits: bool = False) -> GenerationResult:
    """Generate a batch of images; text (B, Lt, D) padded, lengths (B,)."""
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number, got {cfg}")
    t_start = time.perf_counter()
    batch = text.shape[0]
    noise = draw_noise(seed, [s.tokens for s in sched.scales], batch, geom.bits)
    backend.start(text, lengths, cfg_active=cfg != 1)
    last_exec = plan.executed[-1].index
    last_scale = sched.scales[-1]
    final_hw = geom.vae_hw(last_scale.h, last_scale.w)
    result = GenerationResult(images=np.empty(0))
    steps_t = []
    tokens: dict[str, torch.Tensor] = {}
    logits_kept: dict[str, torch.Tensor] = {}
    summed = None
    for st in plan.steps:
        if st.skipped:
            continue
        t0 = time.perf_counter()
        codes_in = None if st.index == 0 else next_input(summed, geom.vae_hw(st.h, st.w), geom.patchify)
        logits, sampled = backend.step(st, codes_in, cfg, 1.0 / tau, write_kv=st.index != last_exec,
                                       noise=noise[st.index])
        key = scale_key(st.index)
        if force_tokens is not None and key in force_tokens:
            bits = _forced_bits(force_tokens, key, (batch, st.h, st.w, geom.bits)).to(logits.device)
        else:
            if sampled is None:  # a backend without in-graph sampling: the same rule, here
                sampled = sample_bits(logits, noise[st.index])
            bits = sampled.view(batch, st.h, st.w, geom.bits)
        tokens[key] = bits  # stays on the device: no host sync between steps
        if keep_logits:
            logits_kept[key] = logits.float().clone()
        codes = bits_to_codes(bits, geom.codebook_dim, geom.patchify)
        if st.index != last_scale.index:
            codes = upsample_codes(codes, final_hw)
        summed = codes if summed is None else summed + codes
        steps_t.append({"index": st.index, "seconds": time.perf_counter() - t0})
    if summed.device.type == "cuda":
        torch.cuda.synchronize(summed.device)  # steps only queue work on a GPU: loop_s is the time they took
    t_dec = time.perf_counter()
    image = backend.decode(summed.squeeze(-3))
    result.images = to_uint8_image(image)
    result.tokens = {k: t.cpu().numpy() for k, t in tokens.items()}
    result.logits = {k: t.cpu().numpy() for k, t in logits_kept.items()}
    t_end = time.perf_counter()
    result.timings = {"loop_s": t_dec - t_start, "decode_s": t_end - t_dec, "steps": steps_t}
    return result
