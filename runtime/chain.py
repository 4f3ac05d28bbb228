"""The generation loop, one for every backend and model family: noise, steps, sampling, feedback, decode.

A backend runs the graphs; a loop object (``runtime.loop``, from the model family) says what a token is,
how it is drawn and what it feeds back; this loop owns the order, teacher forcing, what is kept and the
timings, so neither backends nor families can drift apart in them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fastvar.export.models.bsq_vae import to_uint8_image
from fastvar.export.schedules import PrunePlan, ScaleSchedule
from fastvar.runtime.loop import Geometry, HARTGeometry

__all__ = ["Geometry", "HARTGeometry", "GenerationResult", "generate", "scale_key"]


@dataclass
class GenerationResult:
    images: np.ndarray  # (B, H, W, 3) uint8 RGB
    tokens: dict[str, np.ndarray] = field(default_factory=dict)  # scale_XX -> bits (B,h,w,bits) / indices (B,h,w)
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # scale_XX -> (B, h*w, V) float32
    timings: dict = field(default_factory=dict)


def scale_key(index: int) -> str:
    return f"scale_{index:02d}"


@torch.inference_mode()
def generate(backend, sched: ScaleSchedule, plan: PrunePlan, geom: Geometry | HARTGeometry, text: torch.Tensor,
             lengths: torch.Tensor, seed: int, cfg: float, tau: float | None,
             force_tokens: dict[str, np.ndarray] | None = None, keep_logits: bool = False) -> GenerationResult:
    """Generate a batch of images; text (B, Lt, D) padded, lengths (B,)."""
    loop = geom.loop(sched, tau)
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number, got {cfg}")
    batch = text.shape[0]
    noise = loop.draw(seed, batch)  # an input fixed by the seed: drawn before the timed loop
    t_start = time.perf_counter()
    backend.start(text, lengths, cfg_active=loop.guided(cfg))
    last_exec = plan.executed[-1].index
    steps_t = []
    tokens: dict[str, torch.Tensor] = {}
    logits_kept: dict[str, torch.Tensor] = {}
    for st in plan.executed:
        t0 = time.perf_counter()
        logits, sampled = loop.step(backend, st, noise, cfg, write_kv=st.index != last_exec)
        key = scale_key(st.index)
        drawn = loop.sample(logits, sampled, st, noise)
        if force_tokens is not None and key in force_tokens:
            drawn = loop.forced(np.asarray(force_tokens[key]), key, st, batch).to(logits.device)
        tokens[key] = drawn  # stays on the device: no host sync between steps
        if keep_logits:
            logits_kept[key] = logits.float().clone()
        loop.advance(backend, st, drawn, noise, cfg)
        steps_t.append({"index": st.index, "seconds": time.perf_counter() - t0})
    state = loop.state
    if state.device.type == "cuda":
        torch.cuda.synchronize(state.device)  # steps only queue work on a GPU: loop_s is the time they took
    t_dec = time.perf_counter()
    del noise, logits, sampled, drawn
    loop.end_loop()
    backend.end_loop()  # the decoder needs none of the loop's state: its peak is not added to theirs
    image = loop.decode(backend)
    result = GenerationResult(images=to_uint8_image(image))
    result.tokens = {k: t.cpu().numpy() for k, t in tokens.items()}
    result.logits = {k: t.cpu().numpy() for k, t in logits_kept.items()}
    t_end = time.perf_counter()
    result.timings = {"loop_s": t_dec - t_start, "decode_s": t_end - t_dec, "steps": steps_t}
    return result
