"""How far bf16 moves a model's logits from fp32: the PyTorch reference in both precisions, same weights,
teacher-forced on the bf16 run's tokens, per step max |fp32 - bf16| over the logit scale (positions whose
FastVAR kept/pruned status differs between the two runs are left out and counted).

    python tools/precision_gap.py --model hart-0.7b --random-init
    python tools/precision_gap.py --model hart-0.7b --ckpt RELEASE_DIR --json gap.json

This is the band bf16 graphs are judged in (docs/design/tensorrt.md, docs/design/hart.md): a graph's own
deviation from the bf16 reference should stay well inside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from fastvar.export.artifact import ExportOptions, resolve
from fastvar.runtime.chain import SamplingSettings, generate
from fastvar.runtime.io import load_text_embeddings
from fastvar.runtime.parity import kept_flips, logit_errors


def gap(opts: ExportOptions, seed: int, cfg: float | None) -> dict:
    """Per-step errors, kept-set overlaps and flipped counts of fp32 against bf16 for ``opts``' model."""
    runs = {}
    for precision in ("bf16", "fp32"):
        o = dataclasses.replace(opts, precision=precision)
        source, sched, plan, shapes = resolve(o)
        fam = source.family
        model, dec = source.pair()
        be = fam.reference_backend(model, dec, sched, plan)
        geom = fam.geometry(model.cfg.to_dict())
        text, lengths = load_text_embeddings(None, 1, fam.text_width(model.cfg.to_dict()))
        settings = SamplingSettings.for_batch(fam.sampling, 1, seed, cfg)
        forced = runs["bf16"][0].tokens if runs else None
        t0 = time.perf_counter()
        with torch.no_grad():
            res = generate(be, sched, plan, geom, text, lengths, settings, force_tokens=forced, keep_logits=True)
        runs[precision] = (res, be, plan, time.perf_counter() - t0)
    (ref, ref_be, plan, t_b), (got, got_be, _, t_f) = runs["bf16"], runs["fp32"]
    tokens = {st.index: st.tokens for st in plan.steps}
    flipped, overlaps = kept_flips(ref_be.kept_sets, got_be.kept_sets, tokens)
    errors = logit_errors(ref.logits, got.logits, flipped)
    return {"errors": errors, "kept_overlap": overlaps, "flipped": {k: int(v.sum()) for k, v in flipped.items()},
            "seconds": {"bf16": round(t_b, 1), "fp32": round(t_f, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ckpt")
    ap.add_argument("--vae")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--depth", type=int)
    ap.add_argument("--res", default="1024")
    ap.add_argument("--schedule", default="fastvar")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, help="guidance [default: the family's]")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    opts = ExportOptions(model=a.model, ckpt=a.ckpt, vae=a.vae, random_init=a.random_init, depth=a.depth, res=a.res,
                         schedule=a.schedule)
    out = gap(opts, a.seed, a.cfg)
    for key, e in out["errors"].items():
        step = int(key.split("_")[1])
        extra = f"  kept overlap {out['kept_overlap'][step]:.3f}, {out['flipped'][step]} positions left out" \
            if step in out["kept_overlap"] else ""
        print(f"{key}: {e:.2e} of the logit scale{extra}")
    print(f"max {max(out['errors'].values()):.2e}; seconds {out['seconds']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
