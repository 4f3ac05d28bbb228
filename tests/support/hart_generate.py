"""The whole HART generation in PyTorch, step by step: the meaning every exported backend must reproduce.

Upstream's ``autoregressive_infer_cfg`` with ``num_maskgit_iters=1`` (its default): steps 0..S-2 sample
every token of their scale; the last step is upstream's MaskGIT pass, which with one iteration predicts
all final-scale tokens at once in row-major order (the random order it draws is never used), then adds
the diffusion head's continuous residual. The KV cache lives here, outside the model, as in the Infinity
chain; the last step's K/V are never read and are not kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastvar.export.models import hart_fastvar
from fastvar.export.models.hart import HART
from fastvar.export.models.hart_sampling import (
    HARTNoise,
    cfg_weight,
    filter_logits,
    guidance_ratio,
    gumbel_soft_embedding,
    sample_indices,
    top_k_for,
)
from fastvar.export.models.hart_tokenizer import HARTTokenizer


@dataclass
class HARTResult:
    f_hat: torch.Tensor  # (B, Cvae, P, P) the summed latent
    indices: list[torch.Tensor]  # per step (B, l) sampled codebook indices
    image: torch.Tensor | None = None  # (B, 3, 16P, 16P) in [0, 1] when decoded
    logits: dict[int, torch.Tensor] = field(default_factory=dict)  # per step CFG-mixed, when kept
    kept: dict[int, list] = field(default_factory=dict)  # per pruned step, per block (attn, mlp) indices


@torch.no_grad()
def generate(model: HART, tok: HARTTokenizer, context: torch.Tensor, context_mask: torch.Tensor,
             noise: HARTNoise, cfg: float = 4.5, top_p: float = 0.0, more_smooth: bool = True,
             fastvar: bool | dict[int, float] = True, decode: bool = True, keep_logits: bool = False,
             force_indices: list[torch.Tensor] | None = None) -> HARTResult:
    """Text states (B, Lt, D) and their mask -> image, with FastVAR (upstream's 48/64 plan, or a
    side -> fraction dict) or without. ``force_indices`` teacher-forces the sampled indices so runs of
    different schedules can be compared step by step (with ``more_smooth`` the vectors fed back still
    follow each run's own logits, so compare with it off)."""
    mcfg = model.cfg
    pns, steps = mcfg.patch_nums, mcfg.num_scales
    if more_smooth and noise.gumbel is None:
        raise ValueError("more_smooth needs Gumbel noise: draw_noise(..., smooth=True)")
    fractions = None if fastvar is True else (fastvar or {})
    plan = hart_fastvar.plan(pns, fractions) if fastvar is not False else {}
    cond = model.condition(context, context_mask, cfg_active=True)
    b = cond.batch
    depth = mcfg.depth
    past_k: list[torch.Tensor | None] = [None] * depth
    past_v: list[torch.Tensor | None] = [None] * depth
    caches = None
    f_hat = torch.zeros(b, mcfg.cvae, pns[-1], pns[-1], device=tok.codebook.device)
    x_in = None
    result = HARTResult(f_hat=f_hat, indices=[])
    for si, pn in enumerate(pns):
        weight, ratio = cfg_weight(cfg, si, steps), guidance_ratio(si, steps)
        prune = plan.get(si)
        out = model.step(si, x_in, cond, past_k, past_v, weight, prune=prune,
                         restore_caches=caches if prune is not None else None,
                         collect_caches=bool(plan) and hart_fastvar.is_cache_step(pn))
        if out.caches is not None:
            caches = out.caches
        if prune is not None:
            result.kept[si] = out.kept_idx
        if si < steps - 1:
            past_k = [k if p is None else torch.cat((p, k), 0) for p, k in zip(past_k, out.new_k, strict=True)]
            past_v = [v if p is None else torch.cat((p, v), 0) for p, v in zip(past_v, out.new_v, strict=True)]
        if keep_logits:
            result.logits[si] = out.logits
        filtered = filter_logits(out.logits, top_k_for(si), top_p)
        idx = force_indices[si] if force_indices is not None else sample_indices(filtered, noise.tokens[si])
        result.indices.append(idx)
        h = gumbel_soft_embedding(filtered, ratio, noise.gumbel[si], tok.codebook) if more_smooth else tok.embed(idx)
        if si == steps - 1:
            z = model.diffusion_condition(out.hidden, tok.embed(idx), cond)
            resid = model.diffloss.sample(z, noise.diffusion, guidance=weight)
            h = h + resid.view(b, pn * pn, mcfg.cvae)
        f_hat, x_in = tok.next_input(si, f_hat, tok.tokens_to_map(h, pn), pns)
    result.f_hat = f_hat
    if decode:
        result.image = tok.to_image(f_hat)
    return result
