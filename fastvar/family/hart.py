"""HART (codebook indices, a residual diffusion head, Qwen2 text): model names starting with ``hart``."""

from __future__ import annotations

import torch

from fastvar.family.base import ModelFamily, ResolvedExport, SamplingDefaults

CODEBOOK_KEY = "tokenizer.quantize.embedding.weight"  # the store's copy of the codebook the loop embeds with


class HARTFamily(ModelFamily):
    name = "hart"
    text_encoder = "qwen2-1.5b"
    # upstream's sample.py: cfg 4.5 (the per-step weight ramps to it); 0 is unguided; no tau
    sampling = SamplingDefaults(cfg=4.5, unguided_cfg=0.0, tau=None, more_smooth=True)
    # the diffusion head and next_input are graphs of HART's loop (the tokenizer step is host code in Infinity's)
    loop_graph_kinds = ("condition", "step", "diffusion", "next_input")
    codebook_key = CODEBOOK_KEY

    def model_names(self):
        from fastvar.export.models.hart_config import ALIASES, PRESETS

        return [*PRESETS, *ALIASES]

    def preset(self, model: str):
        from fastvar.export.models.hart_config import preset

        return preset(model)

    def build_pair(self, model, ckpt, vae, random_init, depth, seed, precision):
        """From the preset (random weights) or from upstream's release folder given as ``--ckpt DIR``, at
        ``precision`` (bf16: the blocks' weights rounded once, after loading)."""
        from fastvar.export.models import hart_checkpoint

        if vae:
            raise ValueError("HART reads its tokenizer from the release folder's tokenizer/: give --ckpt DIR, "
                             "not --vae")
        cfg = self.preset(model)
        if random_init:
            if ckpt:
                raise ValueError("--random-init and --ckpt exclude each other: pick one")
            if depth is not None:
                cfg = cfg.with_depth(depth)
            return (hart_checkpoint.build_random_hart(cfg, seed).set_precision(precision),
                    hart_checkpoint.build_random_tokenizer(cfg.tokenizer, seed + 1))
        if not ckpt:
            raise ValueError("give --ckpt DIR (upstream's hart-0.7b-1024px folder with llm/ and tokenizer/), "
                             "or --random-init")
        if depth is not None:
            raise ValueError("--depth only applies with --random-init; a checkpoint's depth is read from it")
        model, tok = hart_checkpoint.load_hart_pair(ckpt)
        return model.set_precision(precision), tok

    def checkpoint_files(self, ckpt, vae):
        return {"ckpt": ckpt}

    def skeleton(self, cfg, precision):
        from fastvar.export.models.hart import HART

        with torch.device("meta"):
            return HART(cfg).set_precision(precision)

    def skeleton_decoder(self, cfg):
        from fastvar.export.models.hart_tokenizer import HARTTokenizer

        with torch.device("meta"):
            return HARTTokenizer(cfg.tokenizer)

    def config_class(self):
        from fastvar.export.models.hart_config import HARTConfig

        return HARTConfig

    def config_from_dict(self, d):
        from fastvar.export.models.hart_config import HARTConfig

        try:
            return HARTConfig.from_dict(dict(d))
        except (KeyError, TypeError, ValueError) as err:  # a field missing, unknown or of the wrong type
            raise ValueError(f"model.config is not a HART config ({type(err).__name__}: {err}); re-run "
                             "fastvar-export") from None

    def prune_plan(self, cfg, sched, spec: str):
        from fastvar.export.schedules import hart_prune_plan

        return hart_prune_plan(sched, spec, cfg.depth, cfg.context_tokens)

    def resolve_export(self, cfg, opts):
        """The checkpoint's schedule, its FastVAR plan, and the text padded to exactly its context length."""
        if opts.text_len not in (type(opts).text_len, cfg.context_tokens):
            raise ValueError(f"HART takes exactly {cfg.context_tokens} text tokens (padded); --text-len "
                             f"{opts.text_len} does not apply to it")
        sched = self.schedule(cfg.to_dict(), opts.res, opts.aspect)
        return ResolvedExport(sched, self.prune_plan(cfg, sched, opts.schedule), cfg.context_tokens)

    def graphs(self, model, decoder, sched, plan, shapes, restore_fns, budget):
        """Condition, one per step (+ validation variants), the diffusion head, the tokenizer's next-input per
        step and its decoder."""
        from fastvar.export.hart_graphs import (
            HARTConditionGraph,
            HARTDecoderGraph,
            HARTDiffusionGraph,
            HARTNextInputGraph,
            HARTStepGraph,
        )

        pns = model.cfg.patch_nums
        out: list = [HARTConditionGraph(model, shapes)]
        out += [HARTStepGraph(model, plan, st, shapes, **restore_fns) for st in plan.executed]
        out += [HARTStepGraph(model, plan, st, shapes, given_indices=True, **restore_fns)
                for st in plan.executed if st.pruned]
        out.append(HARTDiffusionGraph(model, shapes))
        out += [HARTNextInputGraph(decoder, pns, si, shapes.batch) for si in range(len(pns) - 1)]
        out.append(HARTDecoderGraph(decoder, pns[-1], shapes.batch))
        return out

    def memory_plan(self, cfg, skeleton, decoder, sched, plan, shapes, precision):
        from fastvar.export.memory_plan import hart_memory_plan

        return hart_memory_plan(skeleton, decoder, sched, plan, shapes.batch, shapes.guidance, precision)

    def extra_weights(self, decoder):
        return {self.codebook_key: decoder.codebook}

    def check_bench(self, model, text_len, resolutions, aspect):
        cfg = self.preset(model)
        if text_len not in (None, cfg.context_tokens):
            raise ValueError(f"{model} takes exactly {cfg.context_tokens} text tokens (its padded context); "
                             f"--text-len {text_len} does not apply to HART (leave it out)")
        for res in resolutions:
            self.schedule(cfg.to_dict(), res, aspect)  # refuses other resolutions and aspects, naming HART's
        return cfg.context_tokens

    def text_width(self, cfg):
        return cfg["context_dim"]

    def schedule(self, cfg, resolution, aspect):
        from fastvar.export.schedules import hart_schedule

        return hart_schedule(tuple(cfg["patch_nums"]), resolution, aspect)

    def geometry(self, cfg):
        from fastvar.runtime.loop import HARTGeometry

        return HARTGeometry(patch_nums=tuple(cfg["patch_nums"]), vocab=cfg["vocab"], cvae=cfg["cvae"],
                            diff_steps=cfg["diff_steps"])

    def reference_backend(self, model, decoder, sched, plan):
        from fastvar.runtime.backends.hart_torch import HARTTorchBackend

        return HARTTorchBackend(model, decoder, plan)

    def step_feeds(self, graph, inputs, cond, kv, caches, index, call, device, values_device):
        from fastvar import graph_names as gn
        from fastvar.runtime.backends.feeds import named_feeds

        given = {gn.CFG_SCALE: torch.tensor(call.cfg_scale, dtype=torch.float32, device=values_device)}
        if call.state is not None:
            given[gn.X_IN] = call.state.to(device, torch.float32).contiguous()
        return named_feeds(graph, inputs, given, cond, kv, caches)

    def step_macs(self, cfg, plan, rows, batch, text_len):
        from fastvar.runtime.flops import hart_step_macs

        return hart_step_macs(cfg, plan, rows, batch)

    def describe(self, cfg, sched, plan):
        pruned = [f"{st.h}x{st.w} keeps {st.kept}" for st in plan.executed if st.pruned]
        return (f"{cfg.name}: depth {cfg.depth}, width {cfg.width}, {cfg.heads} heads, "
                f"codebook {cfg.vocab}x{cfg.cvae}; {sched.pixels[0]}x{sched.pixels[1]}, {len(sched.scales)} scales; "
                f"schedule {plan.spec}: "
                f"{len(plan.executed)} steps run" + (f" ({', '.join(pruned)}; cache at step {plan.cache_scale})"
                                                     if pruned else ""))
