"""Run the PyTorch reference end to end: build the model, plan the schedule, generate, write files."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fastvar.export.models.factory import build_pair
from fastvar.export.schedules import prune_plan, scale_schedule
from fastvar.runtime.backends.torch_ref import TorchBackend
from fastvar.runtime.chain import Geometry, generate
from fastvar.runtime.io import load_text_embeddings, read_npz, write_images, write_json, write_npz


@dataclass
class RunOptions:
    model: str = "infinity-tiny"
    ckpt: str | None = None
    vae: str | None = None
    random_init: bool = False
    depth: int | None = None
    weights_seed: int = 0
    res: str = "1024"
    aspect: str = "1:1"
    schedule: str = "fastvar"
    precision: str = "fp32"
    batch: int = 1
    text_embeddings: str | None = None
    seed: int = 0
    cfg: float = 4.0
    tau: float = 0.5


def run_reference(opts: RunOptions, out: str, save_tokens: str | None = None, save_logits: str | None = None,
                  force_tokens: str | None = None, timings: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    t0 = time.perf_counter()
    sched = scale_schedule(opts.res, opts.aspect)
    model, vae = build_pair(opts.model, opts.ckpt, opts.vae, opts.random_init, opts.depth, opts.weights_seed,
                            opts.precision)
    cfg = model.cfg
    plan = prune_plan(sched, opts.schedule, cfg.depth)
    text, lengths = load_text_embeddings(opts.text_embeddings, opts.batch, cfg.text_channels)
    forced = read_npz(force_tokens) if force_tokens else None
    load_s = time.perf_counter() - t0
    h_px, w_px = sched.pixels
    log(f"{cfg.name}: depth {cfg.depth}, width {cfg.width}, {cfg.heads} heads, {cfg.bits} bits; "
        f"{h_px}x{w_px} (template h/w {sched.template:g}, tier {sched.tier}), {len(sched.scales)} scales; "
        f"schedule {plan.spec}: {len(plan.executed)} steps run"
        + (f", cache at step {plan.cache_scale}, blocks {plan.block_range[0]}..{plan.block_range[1] - 1} pruned"
           if plan.cache_scale is not None else ""))
    backend = TorchBackend(model, vae, sched, plan)
    geom = Geometry(bits=cfg.bits, codebook_dim=cfg.vae.codebook_dim, patchify=cfg.spatial_patchify)
    res = generate(backend, sched, plan, geom, text, lengths, opts.seed, opts.cfg, opts.tau,
                   force_tokens=forced, keep_logits=save_logits is not None)
    paths = write_images(res.images, out)
    if save_tokens:
        write_npz(save_tokens, res.tokens)
    if save_logits:
        write_npz(save_logits, res.logits)
    report = {"load_s": load_s, **res.timings, "images": [str(p) for p in paths]}
    if timings:
        write_json(timings, report)
    log(f"loop {res.timings['loop_s']:.2f}s, decode {res.timings['decode_s']:.2f}s; per step: "
        + ", ".join(f"{s['index']}:{s['seconds']:.3f}s" for s in res.timings["steps"]))
    return report
