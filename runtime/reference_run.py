"""``fastvar-run --model``: build the PyTorch reference from a preset or checkpoint and generate with it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fastvar.export.models.factory import ModelOptions, build_pair
from fastvar.family import for_model
from fastvar.runtime.chain import generate
from fastvar.runtime.io import load_text_embeddings, read_npz, write_json, write_outputs
from fastvar.runtime.nonfinite import failed_records, raise_for_failed_rows
from fastvar.sampling import SamplingSettings


@dataclass
class RunOptions(ModelOptions):
    text_embeddings: str | None = None
    seed: int = 0
    cfg: float | None = None  # None: the model family's default
    tau: float | None = None  # None: the model family's default (a family without tau refuses one)
    more_smooth: bool | None = None  # HART: Gumbel-soft feedback (None: upstream's sample.py default, on)


def run_reference(opts: RunOptions, out: str, save_tokens: str | None = None, save_logits: str | None = None,
                  force_tokens: str | None = None, timings: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Generate with the PyTorch reference built from a preset or checkpoint (``fastvar-run --model``)."""
    t0 = time.perf_counter()
    fam = for_model(opts.model)
    fam.check_resolution(opts.res, opts.aspect)
    model, decoder = build_pair(opts.model, opts.ckpt, opts.vae, opts.random_init, opts.depth, opts.weights_seed,
                                opts.precision)
    cfg = model.cfg
    sched = fam.schedule(cfg.to_dict(), opts.res, opts.aspect)
    plan = fam.prune_plan(cfg, sched, opts.schedule)
    text, lengths = load_text_embeddings(opts.text_embeddings, opts.batch, fam.text_width(cfg.to_dict()))
    forced = read_npz(force_tokens, "--force-tokens") if force_tokens else None
    load_s = time.perf_counter() - t0
    log(fam.describe(cfg, sched, plan))
    backend = fam.reference_backend(model, decoder, sched, plan)
    settings = SamplingSettings.for_batch(fam.sampling, text.shape[0], opts.seed, opts.cfg, opts.tau, opts.more_smooth)
    res = generate(backend, sched, plan, fam.geometry(cfg.to_dict()), text, lengths, settings, force_tokens=forced,
                   keep_logits=save_logits is not None, allow_failed_rows=True)
    paths = write_outputs(res, out, save_tokens, save_logits)
    report = {"load_s": load_s, **res.timings, "images": [str(p) for p in paths],
              "failed": failed_records(res.failed, settings.seeds)}
    if timings:
        write_json(timings, report, "the --timings report")
    log(f"loop {res.timings['loop_s']:.2f}s, decode {res.timings['decode_s']:.2f}s; per step: "
        + ", ".join(f"{s['index']}:{s['seconds']:.3f}s" for s in res.timings["steps"]))
    raise_for_failed_rows(res.failed, settings.seeds, paths)
    return report
