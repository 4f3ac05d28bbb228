"""Infinity (bitwise tokens, a BSQ VAE, Flan-T5 text): the family every non-HART model name belongs to."""

from __future__ import annotations

import torch

from fastvar.family.base import ModelFamily, ResolvedExport, SamplingDefaults

INFINITY_TEXT_LEN = 64  # the export's default text bucket


class InfinityFamily(ModelFamily):
    name = "infinity"
    text_encoder = "flan-t5-xl"
    # upstream's Infinity-2B inference defaults (scripts/infer.sh): cfg 4, tau 0.5; cfg 1 is unguided
    sampling = SamplingDefaults(cfg=4.0, unguided_cfg=1.0, tau=0.5)
    loop_graph_kinds = ("condition", "step")

    def owns(self, model: str) -> bool:
        return True  # the fallback: an unknown name is refused by ``preset``, listing the Infinity models

    def model_names(self):
        from fastvar.export.models.infinity_config import ALIASES, PRESETS

        return [*PRESETS, *ALIASES]

    def preset(self, model: str):
        from fastvar.export.models.infinity_config import preset

        return preset(model)

    def build_pair(self, model, ckpt, vae, random_init, depth, seed, precision):
        from fastvar.export.models.checkpoint import build_random_infinity, build_random_vae, load_infinity, load_vae

        cfg = self.preset(model)
        if random_init:
            if ckpt or vae:
                raise ValueError("--random-init and --ckpt/--vae exclude each other: pick one")
            if depth is not None:
                cfg = cfg.with_depth(depth)
            transformer = build_random_infinity(cfg, seed)
            decoder = build_random_vae(cfg.vae, seed + 1)
        else:
            if not (ckpt and vae):
                raise ValueError("give both --ckpt (transformer) and --vae (VAE) checkpoints, or --random-init")
            if depth is not None:
                raise ValueError("--depth only applies with --random-init; a checkpoint's depth is read from it")
            decoder = load_vae(vae)
            transformer = load_infinity(ckpt, decoder.cfg)
        return transformer.set_precision(precision), decoder

    def checkpoint_files(self, ckpt, vae):
        if not (ckpt and vae):
            raise ValueError("give both --ckpt (transformer) and --vae (VAE) checkpoints, or --random-init")
        return {"ckpt": ckpt, "vae": vae}

    def skeleton(self, cfg, precision):
        from fastvar.export.models.infinity import Infinity

        with torch.device("meta"):
            return Infinity(cfg).set_precision(precision)

    def skeleton_decoder(self, cfg):
        from fastvar.export.models.bsq_vae import BSQVAEDecoder

        with torch.device("meta"):
            return BSQVAEDecoder(cfg.vae)

    def config_class(self):
        from fastvar.export.models.infinity_config import InfinityConfig

        return InfinityConfig

    def config_from_dict(self, d):
        from fastvar.export.models.infinity_config import InfinityConfig, VAEConfig

        c = dict(d)
        try:
            vae = c.pop("vae")
            for k in ("head_dim", "bits", "vocab"):
                c.pop(k, None)
            vae_cfg = VAEConfig(**{**vae, "level_channels": tuple(vae["level_channels"]),
                                   "upsample_levels": tuple(vae["upsample_levels"])})
            return InfinityConfig(**c, vae=vae_cfg)
        except (KeyError, TypeError, ValueError) as err:  # a field missing, unknown or of the wrong type
            raise ValueError(f"model.config is not an Infinity config ({type(err).__name__}: {err}); re-run "
                             "fastvar-export") from None

    def prune_plan(self, cfg, sched, spec: str):
        from fastvar.export.schedules import prune_plan

        return prune_plan(sched, spec, cfg.depth)

    def resolve_export(self, cfg, opts):
        if not 1 <= opts.text_len <= cfg.text_maxlen:
            raise ValueError(f"--text-len must be in [1, {cfg.text_maxlen}] (the model's text maximum), "
                             f"got {opts.text_len}")
        sched = self.schedule(cfg.to_dict(), opts.res, opts.aspect)
        return ResolvedExport(sched, self.prune_plan(cfg, sched, opts.schedule), opts.text_len)

    def check_resolution(self, resolution, aspect):
        self.schedule({}, resolution, aspect)

    def graphs(self, model, decoder, sched, plan, shapes, restore_fns, budget):
        from fastvar.export.graphs import ConditionGraph, DecoderGraph, StepGraph

        out: list = [ConditionGraph(model, shapes)]
        out += [StepGraph(model, sched, plan, st, shapes, attn_budget=budget, **restore_fns) for st in plan.executed]
        out += [StepGraph(model, sched, plan, st, shapes, given_indices=True, attn_budget=budget, **restore_fns)
                for st in plan.executed if st.pruned]
        last = sched.scales[-1]
        hw = (2 * last.h, 2 * last.w) if model.cfg.spatial_patchify else (last.h, last.w)
        out.append(DecoderGraph(decoder, hw, shapes.batch))
        return out

    def memory_plan(self, cfg, skeleton, decoder, sched, plan, shapes, precision):
        from fastvar.export.memory_plan import memory_plan

        return memory_plan(cfg, sched, plan, shapes.batch, precision, shapes.text_len, shapes.guidance)

    def check_bench(self, model, text_len, resolutions, aspect):
        return INFINITY_TEXT_LEN if text_len is None else text_len

    def text_width(self, cfg):
        return cfg["text_channels"]

    def schedule(self, cfg, resolution, aspect):
        from fastvar.export.schedules import scale_schedule

        return scale_schedule(resolution, aspect)

    def geometry(self, cfg):
        from fastvar.runtime.loop import Geometry

        return Geometry(bits=cfg["bits"], codebook_dim=cfg["vae"]["codebook_dim"], patchify=cfg["spatial_patchify"])

    def reference_backend(self, model, decoder, sched, plan):
        from fastvar.runtime.backends.torch_ref import TorchBackend

        return TorchBackend(model, decoder, sched, plan)

    def step_feeds(self, graph, inputs, cond, kv, caches, index, call, device, values_device):
        from fastvar.runtime.backends.feeds import role_feeds

        return role_feeds(inputs, cond, kv, caches, index, call, device, values_device)

    def step_macs(self, cfg, plan, rows, batch, text_len):
        from fastvar.runtime.flops import infinity_step_macs

        if text_len is None:
            raise ValueError("Infinity's count needs the text length (its cross-attention keys)")
        return infinity_step_macs(cfg, plan, rows, batch, text_len)

    def describe(self, cfg, sched, plan):
        h_px, w_px = sched.pixels
        return (f"{cfg.name}: depth {cfg.depth}, width {cfg.width}, {cfg.heads} heads, {cfg.bits} bits; "
                f"{h_px}x{w_px} (template h/w {sched.template:g}, tier {sched.tier}), {len(sched.scales)} scales; "
                f"schedule {plan.spec}: {len(plan.executed)} steps run"
                + (f", cache at step {plan.cache_scale}, blocks {plan.block_range[0]}..{plan.block_range[1] - 1} "
                   "pruned" if plan.cache_scale is not None else ""))
