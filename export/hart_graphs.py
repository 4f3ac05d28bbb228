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
from fastvar.export.step_parts import Part, block_weights, outside_blocks, stream_name


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
    subs = gn.HART_SUBLAYERS

    def __init__(self, model: HART, plan: PrunePlan, st: StepPlan, shapes: Shapes,
                 restore_fn: Callable[..., torch.Tensor] | None = None, given_indices: bool = False,
                 restore_add_fn: Callable[..., torch.Tensor] | None = None) -> None:
        self._setup(model, plan, st, shapes, restore_fn, given_indices, restore_add_fn)

    def definition(self) -> GraphDef:
        cfg, s, st, plan = self.model.cfg, self.shapes, self.st, self.plan
        r, c, h, hd, dt = s.rows, cfg.width, cfg.heads, cfg.head_dim, self.model.compute_dtype
        past = past_lengths(plan, cfg.depth, st.index)
        lc = plan.steps[plan.cache_scale].tokens if plan.cache_scale is not None else 0
        n_in = cfg.step_tokens(st.index)
        inputs = [spec(gn.SOS, (r, n_in, c), "float32") if st.index == 0
                  else spec(gn.X_IN, (s.batch, n_in, cfg.cvae), "float32"),
                  spec(gn.HEAD_SCALE, (r, 1, c), "float32"), spec(gn.HEAD_SHIFT, (r, 1, c), "float32"),
                  spec(gn.CONTEXT_POS, (r, cfg.context_tokens), "int64")]
        for i in range(cfg.depth):
            if past[i]:
                inputs += [spec(gn.past_k(i), (past[i], r, h, hd), dt), spec(gn.past_v(i), (past[i], r, h, hd), dt)]
        # K/V and both sub-layers' outputs (what the restore caches hold) are in the blocks' dtype
        for i in self.blocks_pruned:
            inputs += [spec(gn.cache(sub, i), (r, lc, c), dt) for sub in gn.HART_SUBLAYERS]
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
                outputs += [spec(name, (n, r, h, hd), dt) for name in (gn.new_k(i), gn.new_v(i))]
        if st.index == plan.cache_scale:
            for i in range(cfg.depth):
                if plan.block_pruned(i):
                    outputs += [spec(gn.cache(sub, i), (r, n_in, c), dt) for sub in gn.HART_SUBLAYERS]
        if not self.given_indices:
            for i in self.blocks_pruned:
                outputs += [spec(gn.kept(sub, i), (r, st.kept), "int64") for sub in gn.HART_SUBLAYERS]
        name, kind = (gn.validate_graph(st.index), "validate") if self.given_indices else \
            (gn.step_graph(st.index), "step")
        return GraphDef(name, kind, inputs, outputs, param_names(self.model, ""), st.index)

    def parts(self) -> list[Part]:
        """The embedding (with the step's RoPE tables), one part per block, the head (see ``step_parts``)."""
        cfg, st, plan, shapes, model = self.model.cfg, self.st, self.plan, self.shapes, self.model
        d = self.definition()
        specs = {t.name: t for t in [*d.inputs, *d.outputs]}
        depth, si, rows = cfg.depth, st.index, shapes.rows
        n_in = cfg.step_tokens(si)
        prefixes = [f"blocks.{i}." for i in range(depth)]
        outer = outside_blocks(model, prefixes)
        xs = [spec(stream_name(f"x{i}"), (rows, n_in, cfg.width), "float32") for i in range(depth + 1)]
        if self.last:  # the last block's output is the graph's hidden-state output
            xs[depth] = specs[gn.HIDDEN]
        cos, sin = (spec(stream_name(n), (rows, n_in, cfg.head_dim), "float32") for n in ("cos", "sin"))
        prune, last = self.prune_step(), self.last
        past = past_lengths(plan, depth, si)
        batch = shapes.batch

        def embed(m: HART, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            sos = x.get(gn.SOS)
            if sos is None:  # only the row count is read after step 0
                sos = x[gn.HEAD_SCALE].new_zeros(rows, 1, m.cfg.width)
            cond = HARTConditioning(batch=batch, sos=sos, head_scale=x[gn.HEAD_SCALE], head_shift=None,
                                    context_pos=x[gn.CONTEXT_POS])
            c, s = m.rope(si, cond)
            return {xs[0].name: m.embed_input(si, x.get(gn.X_IN), cond), cos.name: c, sin.name: s}

        first = [specs[gn.SOS]] if si == 0 else [specs[gn.X_IN]]
        first += [specs[gn.HEAD_SCALE], specs[gn.CONTEXT_POS]]
        parts = [Part("embed", ("embed", si), tuple(first), (xs[0], cos, sin), outer, embed)]
        for i in range(depth):
            p = prune if prune is not None and prune.covers(i) else None
            ins, outs, cache_out = self.block_io(i, p is not None, [xs[i], cos, sin], xs[i + 1], specs, past)
            key = ("block", si, p is not None, self.given_indices, cache_out, past[i], last)
            call = self._block_call(i, p, xs[i].name, xs[i + 1].name, cos.name, sin.name)
            parts.append(Part(f"block{i}", key, tuple(ins), tuple(outs), block_weights(model, prefixes[i]), call))

        def head(m: HART, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            cond = HARTConditioning(batch=batch, sos=None, head_scale=x[gn.HEAD_SCALE], head_shift=x[gn.HEAD_SHIFT],
                                    context_pos=None)
            weight = x.get(gn.CFG_SCALE, torch.zeros((), dtype=torch.float32))
            return {gn.LOGITS: m.finish(si, x[xs[depth].name], cond, weight)}

        ins = [xs[depth], specs[gn.HEAD_SCALE], specs[gn.HEAD_SHIFT]]
        ins += [specs[gn.CFG_SCALE]] if shapes.guidance else []
        parts.append(Part("head", ("head", si, last), tuple(ins), (specs[gn.LOGITS],), outer, head))
        return parts

    def _block_call(self, i: int, p: HARTPruneStep | None, x_in: str, x_out: str, cos: str,
                    sin: str) -> Callable[[HART, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        def call(m: HART, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            bp, rc = self.block_prune(p, i, x)
            y, k, v, outs, idx = m.block(m.blocks[i], i, x[x_in], x[cos], x[sin], x.get(gn.past_k(i)),
                                         x.get(gn.past_v(i)), bp, rc)
            return self.block_outputs(i, x_out, y, k, v, outs, idx, p is not None)

        return call


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
