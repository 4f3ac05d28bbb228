"""HART's graphs, one class per kind, sharing the Infinity graphs' interface (``GraphDef``, weights as inputs).

Every traced module calls the reference's own code: ``HART.condition``, ``HART.step`` (with FastVAR's
graph spellings of selection and restoration), ``HART.diffusion_condition`` + ``DiffusionHead.sample``
(the whole 8-step iDDPM loop unrolled, noise an input) and the tokenizer's Φ and decoder. Only the
tokenizer's resampling is spelled differently (constant matrices, see ``resample``). Transformer and
diffusion weights are graph inputs bound to the shared store; the tokenizer graphs keep their own.
Sampling stays in the generation loop (top-k, inverse CDF, the Gumbel-soft mixture).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn as nn

from fastvar import graph_names as gn
from fastvar.export.graphs import (
    CallModel,
    DecodeModule,
    FastVARStepGraph,
    GraphDef,
    Shapes,
    Traced,
    param_names,
    spec,
)
from fastvar.export.kv_layout import new_length, past_lengths
from fastvar.export.models.hart import HART, HARTConditioning
from fastvar.export.models.hart_fastvar import HARTPruneStep
from fastvar.export.models.hart_tokenizer import HARTTokenizer
from fastvar.export.resample import resample_2d
from fastvar.export.schedules import PrunePlan, StepPlan


def _cond(m: HART, batch: int, rows: int, x: dict[str, torch.Tensor]) -> HARTConditioning:
    """The conditioning a step graph rebuilds from its inputs (``sos`` only exists at step 0)."""
    sos = x.get(gn.SOS)
    if sos is None:
        sos = x[gn.HEAD_SCALE].new_zeros(rows, 1, m.cfg.width)
    return HARTConditioning(batch=batch, sos=sos, head_scale=x[gn.HEAD_SCALE], head_shift=x[gn.HEAD_SHIFT],
                            context_pos=x[gn.CONTEXT_POS])


class HARTConditionGraph:
    """Padded text states and lengths -> projected text (step 0's tokens), head AdaLN, text positions."""

    def __init__(self, model: HART, shapes: Shapes) -> None:
        self.model, self.shapes = model, shapes

    def definition(self) -> GraphDef:
        cfg, s = self.model.cfg, self.shapes
        r, c, lt = s.rows, cfg.width, cfg.context_tokens
        inputs = [spec(gn.TEXT, (s.batch, lt, cfg.context_dim), "float32"), spec(gn.TEXT_LENGTHS, (s.batch,), "int64")]
        outputs = [spec(gn.SOS, (r, lt, c), "float32"), spec(gn.HEAD_SCALE, (r, 1, c), "float32"),
                   spec(gn.HEAD_SHIFT, (r, 1, c), "float32"), spec(gn.CONTEXT_POS, (r, lt), "int64")]
        return GraphDef(gn.CONDITION_GRAPH, "condition", inputs, outputs, param_names(self.model, ""))

    def module(self) -> nn.Module:
        guidance, lt = self.shapes.guidance, self.model.cfg.context_tokens

        def call(m: HART, data: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            text, lengths = data
            mask = torch.arange(lt, device=lengths.device)[None, :] < lengths[:, None]
            cond = m.condition(text, mask, cfg_active=guidance)
            return cond.sos, cond.head_scale, cond.head_shift, cond.context_pos

        return Traced(CallModel(self.model), param_names(self.model), len(self.definition().inputs), call)


class HARTStepGraph(FastVARStepGraph):
    """One HART step at its static sizes, every state tensor explicit.

    Inputs: the projected text (step 0) or the area-downsampled f_hat tokens, the head AdaLN and text
    positions (RoPE is computed inside from them), each block's past K/V prefix, FastVAR's restore caches
    at pruned steps (and, in the validation variant, the kept indices), the step's guidance weight.
    Outputs: CFG-mixed logits, each block's new K/V (not at the last step), the restore caches at the
    36x36 step, the kept indices at pruned steps, and at the last step the hidden states the diffusion
    head reads.
    """

    prune_cls = HARTPruneStep

    def __init__(self, model: HART, plan: PrunePlan, st: StepPlan, shapes: Shapes,
                 restore_fn: Callable[..., torch.Tensor] | None = None, given_indices: bool = False,
                 restore_add_fn: Callable[..., torch.Tensor] | None = None) -> None:
        self._setup(model, plan, st, shapes, restore_fn, given_indices, restore_add_fn)

    def definition(self) -> GraphDef:
        cfg, s, st, plan = self.model.cfg, self.shapes, self.st, self.plan
        r, c, h, hd = s.rows, cfg.width, cfg.heads, cfg.head_dim
        past = past_lengths(plan, cfg.depth, st.index)
        lc = plan.steps[plan.cache_scale].tokens if plan.cache_scale is not None else 0
        n_in = cfg.step_tokens(st.index)
        inputs = [spec(gn.SOS, (r, n_in, c), "float32") if st.index == 0
                  else spec(gn.X_IN, (s.batch, n_in, cfg.cvae), "float32"),
                  spec(gn.HEAD_SCALE, (r, 1, c), "float32"), spec(gn.HEAD_SHIFT, (r, 1, c), "float32"),
                  spec(gn.CONTEXT_POS, (r, cfg.context_tokens), "int64")]
        for i in range(cfg.depth):
            if past[i]:
                inputs += [spec(gn.past_k(i), (past[i], r, h, hd), "float32"),
                           spec(gn.past_v(i), (past[i], r, h, hd), "float32")]
        for i in self.blocks_pruned:
            inputs += [spec(gn.cache(sub, i), (r, lc, c), "float32") for sub in gn.HART_SUBLAYERS]
        if self.given_indices:
            for i in self.blocks_pruned:
                inputs += [spec(gn.kept(sub, i), (r, st.kept), "int64") for sub in gn.HART_SUBLAYERS]
        if s.guidance:
            inputs.append(spec(gn.CFG_SCALE, (), "float32"))
        outputs = [spec(gn.LOGITS, (s.batch, st.tokens, cfg.vocab), "float32")]
        if self.last:
            outputs.append(spec(gn.HIDDEN, (r, n_in, c), "float32"))
        else:
            for i in range(cfg.depth):
                n = new_length(plan, st, i)
                outputs += [spec(name, (n, r, h, hd), "float32") for name in (gn.new_k(i), gn.new_v(i))]
        if st.index == plan.cache_scale:
            for i in range(cfg.depth):
                if plan.block_pruned(i):
                    outputs += [spec(gn.cache(sub, i), (r, n_in, c), "float32") for sub in gn.HART_SUBLAYERS]
        if not self.given_indices:
            for i in self.blocks_pruned:
                outputs += [spec(gn.kept(sub, i), (r, st.kept), "int64") for sub in gn.HART_SUBLAYERS]
        name, kind = (gn.validate_graph(st.index), "validate") if self.given_indices else \
            (gn.step_graph(st.index), "step")
        return GraphDef(name, kind, inputs, outputs, param_names(self.model, ""), st.index)

    def module(self) -> nn.Module:
        cfg, st, plan, shapes = self.model.cfg, self.st, self.plan, self.shapes
        d = self.definition()
        names = [t.name for t in d.inputs]
        prune, last, pruned_blocks, validate = self.prune_step(), self.last, self.blocks_pruned, self.given_indices
        is_cache = st.index == plan.cache_scale

        def call(m: HART, data: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = dict(zip(names, data, strict=True))
            cond = _cond(m, shapes.batch, shapes.rows, x)
            caches, step_prune = None, prune
            if prune is not None:
                given = [tuple(x[gn.kept(sub, i)] for sub in gn.HART_SUBLAYERS) for i in pruned_blocks] \
                    if validate else None
                step_prune = replace(prune, given=given)
                caches = [tuple(x[gn.cache(sub, i)] for sub in gn.HART_SUBLAYERS) if i in pruned_blocks else None
                          for i in range(cfg.depth)]
            weight = x.get(gn.CFG_SCALE, torch.zeros((), dtype=torch.float32))
            out = m.step(st.index, x.get(gn.X_IN), cond, [x.get(gn.past_k(i)) for i in range(cfg.depth)],
                         [x.get(gn.past_v(i)) for i in range(cfg.depth)], weight, prune=step_prune,
                         restore_caches=caches, collect_caches=is_cache)
            res = [out.logits]
            if last:
                res.append(out.hidden)
            else:
                for k, v in zip(out.new_k, out.new_v, strict=True):
                    res += [k, v]
            if is_cache:
                for i in range(cfg.depth):
                    if plan.block_pruned(i):
                        res += list(out.caches[i])
            if prune is not None and not validate:
                for idx in out.kept_idx:
                    res += list(idx)
            return tuple(res)

        return Traced(CallModel(self.model), param_names(self.model), len(d.inputs), call)


class HARTDiffusionGraph:
    """The last step's residual: diffusion condition from the hidden states and the sampled indices'
    codebook vectors, then the whole respaced iDDPM loop (unrolled) with its noise as an input."""

    def __init__(self, model: HART, shapes: Shapes) -> None:
        self.model, self.shapes = model, shapes

    def definition(self) -> GraphDef:
        cfg, s = self.model.cfg, self.shapes
        n = cfg.final_side ** 2
        inputs = [spec(gn.HIDDEN, (s.rows, n, cfg.width), "float32"),
                  spec(gn.DISCRETE, (s.batch, n, cfg.cvae), "float32"),
                  spec(gn.NOISE, (cfg.diff_steps, s.batch * n, cfg.cvae), "float32")]
        if s.guidance:
            inputs.append(spec(gn.CFG_SCALE, (), "float32"))
        outputs = [spec(gn.RESIDUAL, (s.batch, n, cfg.cvae), "float32")]
        return GraphDef(gn.DIFFUSION_GRAPH, "diffusion", inputs, outputs, param_names(self.model, ""))

    def module(self) -> nn.Module:
        shapes, cfg = self.shapes, self.model.cfg
        names = [t.name for t in self.definition().inputs]

        def call(m: HART, data: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = dict(zip(names, data, strict=True))
            # diffusion_condition reads only the row count: the other fields are not part of this graph
            cond = HARTConditioning(batch=shapes.batch, sos=x[gn.HIDDEN], head_scale=None, head_shift=None,
                                    context_pos=None)
            z = m.diffusion_condition(x[gn.HIDDEN], x[gn.DISCRETE], cond)
            res = m.diffloss.sample(z, x[gn.NOISE], guidance=x.get(gn.CFG_SCALE))
            return (res.view(shapes.batch, -1, cfg.cvae),)

        return Traced(CallModel(self.model), param_names(self.model), len(names), call)


class HARTNextInputGraph:
    """Step si's token map into f_hat (bicubic up to the final grid, Φ, add) and the next step's input
    (f_hat area-downsampled, as tokens). Keeps its Φ weights inside, like the decoder."""

    def __init__(self, tok: HARTTokenizer, patch_nums: tuple[int, ...], si: int, batch: int) -> None:
        if not 0 <= si < len(patch_nums) - 1:
            raise ValueError(f"step {si} has no next input (the last step adds its tokens to f_hat directly)")
        self.tok, self.patch_nums, self.si, self.batch = tok, patch_nums, si, batch

    def definition(self) -> GraphDef:
        pns, si, b, cv = self.patch_nums, self.si, self.batch, self.tok.cfg.cvae
        p = pns[-1]
        inputs = [spec(gn.F_HAT, (b, cv, p, p), "float32"), spec(gn.TOKENS, (b, pns[si] ** 2, cv), "float32")]
        outputs = [spec(gn.F_HAT_NEXT, (b, cv, p, p), "float32"), spec(gn.X_NEXT, (b, pns[si + 1] ** 2, cv), "float32")]
        return GraphDef(gn.next_input_graph(si), "next_input", inputs, outputs, [], si)

    def module(self) -> nn.Module:
        tok, pns, si = self.tok, self.patch_nums, self.si

        class _Next(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.tok = tok

            def forward(self, f_hat: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                final, side = pns[-1], pns[si + 1]
                h = HARTTokenizer.tokens_to_map(tokens, pns[si])
                up = resample_2d(h, (final, final), "bicubic")
                f_next = f_hat + self.tok.quantize.quant_resi[si / (len(pns) - 1)](up)
                nxt = resample_2d(f_next, (side, side), "area")
                return f_next, nxt.flatten(2).transpose(1, 2)

        return _Next()


class HARTDecoderGraph:
    """f_hat -> image in [-1, 1] (post_quant_conv + the VQ decoder); keeps its own weights."""

    def __init__(self, tok: HARTTokenizer, side: int, batch: int) -> None:
        self.tok, self.side, self.batch = tok, side, batch

    def definition(self) -> GraphDef:
        cv, p, stride = self.tok.cfg.cvae, self.side, self.tok.cfg.stride
        return GraphDef(gn.DECODER_GRAPH, "decoder", [spec(gn.F_HAT, (self.batch, cv, p, p), "float32")],
                        [spec(gn.IMAGE, (self.batch, 3, p * stride, p * stride), "float32")])

    def module(self) -> nn.Module:
        return DecodeModule(self.tok)
