"""The graphs of one artifact, one class per kind: each knows its inputs, outputs and static shapes,
and builds the module that the exporter traces.

Every traced module calls the reference model's own code (``Infinity.condition``, ``Infinity.step``,
``BSQVAEDecoder.decode``), so a graph cannot drift from the reference. Transformer weights are graph
inputs (bound at run time to the one shared weight store, see docs/design/tensorrt.md), which
``torch.func.functional_call`` makes explicit while tracing; the VAE graph keeps its own weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
from torch.func import functional_call

from fastvar import graph_names as gn
from fastvar.export.fastvar import select_pivotal_topk
from fastvar.export.kv_layout import new_length, past_lengths
from fastvar.export.models.bsq_vae import BSQVAEDecoder
from fastvar.export.models.infinity import Conditioning, Infinity, PruneStep
from fastvar.export.models.rope import rope_freqs_grid, rope_table
from fastvar.export.schedules import PrunePlan, ScaleSchedule, StepPlan
from fastvar.export.step_parts import Part, block_weights, outside_blocks, run_parts, stream_name
from fastvar.runtime.sampling import sample_bits

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
               torch.bool: "bool", torch.int64: "int64", torch.int32: "int32", torch.uint8: "uint8"}
TORCH_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def empty(self) -> torch.Tensor:
        """An uninitialised example (untouched pages cost no memory): tracing reads only metadata."""
        return torch.empty(self.shape, dtype=TORCH_DTYPES[self.dtype])


def spec(name: str, shape: tuple[int, ...], dtype: torch.dtype | str) -> TensorSpec:
    return TensorSpec(name, tuple(int(d) for d in shape), dtype if isinstance(dtype, str) else DTYPE_NAMES[dtype])


@dataclass
class Shapes:
    """What fixes a graph's static shapes besides the schedule."""

    batch: int
    text_len: int
    guidance: bool

    @property
    def rows(self) -> int:
        """Rows through the transformer: conditional then unconditional half when CFG is on."""
        return 2 * self.batch if self.guidance else self.batch


@dataclass
class GraphDef:
    """One graph: a name, its data inputs/outputs in order, and the weights it binds."""

    name: str
    kind: str  # condition | step | decoder
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    weights: list[str] = field(default_factory=list)  # model parameter names traced as inputs
    step: int | None = None
    baked: dict = field(default_factory=dict)  # choices fixed inside the graph (e.g. attention query chunks)

    def signature(self) -> dict:
        return {"name": self.name, "kind": self.kind, "step": self.step,
                "inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs],
                "weights": list(self.weights), "baked": dict(self.baked)}


class Traced(nn.Module):
    """Maps a flat tuple (data inputs, then weights) onto a call of the model with those weights.

    The model is held, not registered as a submodule: ``torch.export`` lifts every registered parameter of
    what it exports, and the weights arrive as inputs anyway, so only what the call reads is traced (a part
    of one block then costs one block, not the whole model)."""

    def __init__(self, model: nn.Module, weight_names: list[str], n_data: int,
                 call: Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.__dict__["model"] = model
        self.weight_names, self.n_data, self.call = weight_names, n_data, call

    def train(self, mode: bool = True) -> Traced:
        self.model.train(mode)
        return super().train(mode)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        data, weights = tensors[: self.n_data], tensors[self.n_data:]
        params = dict(zip(self.weight_names, weights, strict=True))
        return functional_call(self.model, params, (data,), {"_call": self.call}, strict=False, tie_weights=False)


class CallModel(nn.Module):
    """Holds the model under ``m`` so ``Traced`` can swap its weights for graph inputs by name."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, data: tuple[torch.Tensor, ...], _call) -> tuple[torch.Tensor, ...]:
        return _call(self.m, data)


def param_names(model: nn.Module, prefix: str = "m.") -> list[str]:
    """Parameter and buffer names in ``named_parameters`` order: the graph's weight inputs (``m.`` for a
    ``CallModel``, no prefix for the names the manifest and the weight store use)."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return [prefix + n for n in names]


def weight_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the model under its upstream name (what the weight store holds)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


class PartsGraph:
    """A graph made of parts (``parts()``): its torch module runs them in order, and is what goldens are
    recorded on; the export traces each part's form once and stamps it (``fastvar.export.stamp``)."""

    model: nn.Module

    def module(self) -> nn.Module:
        d = self.definition()
        call = run_parts(self.parts(), [t.name for t in d.inputs], [t.name for t in d.outputs])
        return Traced(CallModel(self.model), param_names(self.model), len(d.inputs), call)


class ConditionGraph(PartsGraph):
    """Text embeddings -> pooled condition, AdaLN parameters and every block's cross-attention K/V."""

    def __init__(self, model: Infinity, shapes: Shapes) -> None:
        self.model, self.shapes = model, shapes

    def definition(self) -> GraphDef:
        cfg, s, dt = self.model.cfg, self.shapes, self.model.compute_dtype
        r, c = s.rows, cfg.width
        inputs = [spec(gn.TEXT, (s.batch, s.text_len, cfg.text_channels), "float32"),
                  spec(gn.TEXT_LENGTHS, (s.batch,), "int64")]
        outputs = [spec(gn.SOS, (r, 1, c), "float32"), spec(gn.GSS, (r, 1, 6, c), "float32"),
                   spec(gn.HEAD_SCALE, (r, 1, c), "float32"), spec(gn.HEAD_SHIFT, (r, 1, c), "float32"),
                   spec(gn.TEXT_MASK, (r, s.text_len), "bool")]
        for i in range(cfg.depth):
            for name in (gn.ca_k(i), gn.ca_v(i)):
                outputs.append(spec(name, (r, cfg.heads, s.text_len, cfg.head_dim), dt))
        return GraphDef(gn.CONDITION_GRAPH, "condition", inputs, outputs, param_names(self.model, ""))

    def parts(self) -> list[Part]:
        """The text part (pooled condition, AdaLN parameters, mask, the projected text), then one part per block
        (its cross-attention K/V of the projected text): every block part has one form."""
        cfg, s, model = self.model.cfg, self.shapes, self.model
        d = self.definition()
        specs = {t.name: t for t in [*d.inputs, *d.outputs]}
        prefixes = [cfg.block_prefix(i) for i in range(cfg.depth)]
        ca_text = spec(stream_name("ca_text"), (s.rows, s.text_len, cfg.width), model.compute_dtype)
        guidance = s.guidance
        shared = (gn.SOS, gn.GSS, gn.HEAD_SCALE, gn.HEAD_SHIFT, gn.TEXT_MASK)

        def text(m: Infinity, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            cond, projected = m.condition_text(x[gn.TEXT], x[gn.TEXT_LENGTHS], cfg_active=guidance)
            return {gn.SOS: cond.sos, gn.GSS: cond.gss, gn.HEAD_SCALE: cond.head_scale,
                    gn.HEAD_SHIFT: cond.head_shift, gn.TEXT_MASK: cond.text_mask, ca_text.name: projected}

        parts = [Part("text", ("text",), (specs[gn.TEXT], specs[gn.TEXT_LENGTHS]),
                      (*[specs[n] for n in shared], ca_text), outside_blocks(model, prefixes), text)]
        for i in range(cfg.depth):
            parts.append(Part(f"block{i}", ("text_kv",), (ca_text,), (specs[gn.ca_k(i)], specs[gn.ca_v(i)]),
                              block_weights(model, prefixes[i]), self._kv_call(i, ca_text.name)))
        return parts

    @staticmethod
    def _kv_call(i: int, ca_text: str) -> Callable[[Infinity, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        def call(m: Infinity, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            k, v = m.block_list[i].ca.kv(x[ca_text], m.compute_dtype)
            return {gn.ca_k(i): k, gn.ca_v(i): v}

        return call


class FastVARStepGraph(PartsGraph):
    """What a step graph of either family shares: the plan, the validation variant, which blocks prune,
    the FastVAR prune step built with the export's graph spellings (selection by TopK, restoration
    by ``restore_fn``, optionally fused with its residual add by ``restore_add_fn``), and what a block's
    part takes and returns besides the family's own inputs."""

    prune_cls: type = PruneStep
    subs: tuple[str, ...] = gn.INFINITY_SUBLAYERS  # the sub-layers FastVAR restores

    def _setup(self, model, plan: PrunePlan, st: StepPlan, shapes: Shapes,
               restore_fn: Callable[..., torch.Tensor] | None, given_indices: bool,
               restore_add_fn: Callable[..., torch.Tensor] | None) -> None:
        if given_indices and not st.pruned:
            raise ValueError(f"step {st.index} is not pruned: it has no validation variant")
        self.model, self.plan, self.st, self.shapes = model, plan, st, shapes
        self.given_indices = given_indices  # the validation variant: kept indices are inputs
        self.restore_fn = restore_fn
        self.restore_add_fn = restore_add_fn  # the restore fused with its residual add (one node instead of two)
        self.last = st.index == plan.executed[-1].index

    @property
    def blocks_pruned(self) -> list[int]:
        return [i for i in range(self.model.cfg.depth) if self.st.pruned and self.plan.block_pruned(i)]

    def prune_step(self):
        st, plan = self.st, self.plan
        if not st.pruned:
            return None
        extra = {} if self.restore_fn is None else {"restore": self.restore_fn}
        if self.restore_add_fn is not None:
            extra["restore_add"] = self.restore_add_fn
        return self.prune_cls(kept=st.kept, hw=(st.h, st.w), cache_hw=plan.cache_hw, block_range=plan.block_range,
                              select=select_pivotal_topk, **extra)

    def block_io(self, i: int, pruned: bool, first: list[TensorSpec], x_out: TensorSpec,
                 specs: dict[str, TensorSpec], past: list[int]) -> tuple[list[TensorSpec], list[TensorSpec], bool]:
        """Block i's part interface: ``first`` (the family's inputs), its past K/V, and where it is pruned its
        restore caches (and in the validation variant its kept indices); out: ``x_out``, its new K/V (not at
        the last step), its restore caches at the cache step, and its kept indices. Also whether it returns
        caches (part of its form)."""
        subs, ins, outs = self.subs, list(first), [x_out]
        if past[i]:
            ins += [specs[gn.past_k(i)], specs[gn.past_v(i)]]
        if not self.last:
            outs += [specs[gn.new_k(i)], specs[gn.new_v(i)]]
        cache_out = self.st.index == self.plan.cache_scale and self.plan.block_pruned(i)
        if cache_out:
            outs += [specs[gn.cache(sub, i)] for sub in subs]
        if pruned:
            ins += [specs[gn.cache(sub, i)] for sub in subs]
            ins += [specs[gn.kept(sub, i)] for sub in subs] if self.given_indices else []
            outs += [] if self.given_indices else [specs[gn.kept(sub, i)] for sub in subs]
        return ins, outs, cache_out

    def block_prune(self, p, i: int, x: dict[str, torch.Tensor]) -> tuple[object, tuple | None]:
        """The prune step and restore caches block i runs with, read from its part's inputs."""
        if p is None:
            return None, None
        rc = tuple(x[gn.cache(sub, i)] for sub in self.subs)
        if not self.given_indices:
            return p, rc
        lo = 0 if p.block_range is None else p.block_range[0]
        picked = [None] * (i - lo + 1)  # ``given`` is indexed from the first pruned block
        picked[-1] = tuple(x[gn.kept(sub, i)] for sub in self.subs)
        return replace(p, given=picked), rc

    def block_outputs(self, i: int, x_out: str, y: torch.Tensor, k: torch.Tensor, v: torch.Tensor, outs: tuple,
                      idx: tuple, pruned: bool) -> dict[str, torch.Tensor]:
        """What a block's part returns, by name (its part picks the ones it declares)."""
        res = {x_out: y, gn.new_k(i): k, gn.new_v(i): v}
        res.update((gn.cache(sub, i), o) for sub, o in zip(self.subs, outs, strict=True))
        if pruned:
            res.update((gn.kept(sub, i), t) for sub, t in zip(self.subs, idx, strict=True))
        return res


class StepGraph(FastVARStepGraph):
    """One executed scale with every state tensor explicit, at this step's static sizes.

    Inputs: the scale's tokens (sos at step 0, else the upsampled codes), the conditioning, each
    block's past K/V prefix (absent at step 0), FastVAR's restore caches at pruned steps, cfg, 1/tau
    and the step's uniform noise. Outputs: CFG-mixed logits, the sampled bits (upstream's top-p rule,
    so a device chain needs no host round trip), each block's new K/V slice (not at the last step),
    the restore caches at the cache step, and the kept indices at pruned steps (kept-set reports).
    """

    def __init__(self, model: Infinity, sched: ScaleSchedule, plan: PrunePlan, st: StepPlan, shapes: Shapes,
                 restore_fn: Callable[..., torch.Tensor] | None = None, given_indices: bool = False,
                 attn_budget: int | None = None, restore_add_fn: Callable[..., torch.Tensor] | None = None) -> None:
        if st.skipped:
            raise ValueError(f"step {st.index} is skipped by the schedule and has no graph")
        self._setup(model, plan, st, shapes, restore_fn, given_indices, restore_add_fn)
        self.attn_budget = attn_budget  # bytes of attention scores (+ probabilities) one chunk may hold
        self.sched = sched

    def definition(self) -> GraphDef:
        cfg, s, st, plan = self.model.cfg, self.shapes, self.st, self.plan
        dt, r, c, h, hd = self.model.compute_dtype, s.rows, cfg.width, cfg.heads, cfg.head_dim
        past = past_lengths(plan, cfg.depth, st.index)
        lc = plan.steps[plan.cache_scale].tokens if plan.cache_scale is not None else 0
        inputs = [spec(gn.SOS, (r, 1, c), "float32") if st.index == 0
                  else spec(gn.CODES, (s.batch, st.tokens, cfg.bits), "float32"),
                  spec(gn.GSS, (r, 1, 6, c), "float32"), spec(gn.HEAD_SCALE, (r, 1, c), "float32"),
                  spec(gn.HEAD_SHIFT, (r, 1, c), "float32"), spec(gn.TEXT_MASK, (r, s.text_len), "bool")]
        for i in range(cfg.depth):
            inputs += [spec(gn.ca_k(i), (r, h, s.text_len, hd), dt), spec(gn.ca_v(i), (r, h, s.text_len, hd), dt)]
        for i in range(cfg.depth):
            if past[i]:
                inputs += [spec(gn.past_k(i), (past[i], r, h, hd), dt), spec(gn.past_v(i), (past[i], r, h, hd), dt)]
        # the self-attention branch stays in the compute dtype; cross-attention and FFN promote to fp32
        cache_dtypes = dict(zip(gn.INFINITY_SUBLAYERS, (dt, "float32", "float32"), strict=True))
        for i in self.blocks_pruned:
            inputs += [spec(gn.cache(sub, i), (r, lc, c), cache_dtypes[sub]) for sub in gn.INFINITY_SUBLAYERS]
        if self.given_indices:
            for i in self.blocks_pruned:
                inputs += [spec(gn.kept(sub, i), (r, st.kept), "int64") for sub in gn.INFINITY_SUBLAYERS]
        if s.guidance:
            inputs.append(spec(gn.CFG_SCALE, (), "float32"))
        inputs += [spec(gn.INV_TAU, (), "float32"), spec(gn.NOISE, (s.batch, st.tokens, cfg.bits), "float32")]
        outputs = [spec(gn.LOGITS, (s.batch, st.tokens, cfg.vocab), "float32"),
                   spec(gn.BITS, (s.batch, st.tokens, cfg.bits), "uint8")]
        if not self.last:
            for i in range(cfg.depth):
                n = new_length(plan, st, i)
                outputs += [spec(gn.new_k(i), (n, r, h, hd), dt), spec(gn.new_v(i), (n, r, h, hd), dt)]
        if st.index == plan.cache_scale:
            for i in range(cfg.depth):
                if plan.block_pruned(i):
                    outputs += [spec(gn.cache(sub, i), (r, st.tokens, c), cache_dtypes[sub])
                                for sub in gn.INFINITY_SUBLAYERS]
        if not self.given_indices:
            for i in self.blocks_pruned:
                outputs += [spec(gn.kept(sub, i), (r, st.kept), "int64") for sub in gn.INFINITY_SUBLAYERS]
        name, kind = (gn.validate_graph(st.index), "validate") if self.given_indices else \
            (gn.step_graph(st.index), "step")
        chunks = self.q_chunks()
        baked = {"attention_query_chunks": chunks} if any(chunks) else {}
        return GraphDef(name, kind, inputs, outputs, param_names(self.model, ""), st.index, baked)

    def q_chunks(self) -> list[int | None]:
        """Per block, the query chunk that keeps decomposed attention's scores and probabilities within the
        budget (None: no chunking). Graphs for fused attention (TensorRT) are exported without a budget."""
        cfg, plan, st = self.model.cfg, self.plan, self.st
        if not self.attn_budget:
            return [None] * cfg.depth
        past = past_lengths(plan, cfg.depth, st.index)
        item = torch.empty((), dtype=self.model.compute_dtype).element_size()
        out: list[int | None] = []
        for i in range(cfg.depth):
            n = new_length(plan, st, i)
            per_query = 2 * self.shapes.rows * cfg.heads * (past[i] + n) * item
            chunk = max(1, self.attn_budget // per_query)
            chunk = chunk - chunk % 64 if chunk >= 128 else chunk
            out.append(None if chunk >= n else int(chunk))
        return out

    def parts(self) -> list[Part]:
        """The embedding, one part per block, the head (see ``step_parts``): what the export traces per form and
        stamps per block, and what ``module`` runs in order."""
        cfg, st, plan, shapes, model = self.model.cfg, self.st, self.plan, self.shapes, self.model
        d = self.definition()
        specs = {t.name: t for t in [*d.inputs, *d.outputs]}
        depth, si = cfg.depth, st.index
        prefixes = [cfg.block_prefix(i) for i in range(depth)]
        outer = outside_blocks(model, prefixes)
        xs = [spec(stream_name(f"x{i}"), (shapes.rows, st.tokens, cfg.width), "float32") for i in range(depth + 1)]
        scale = self.sched.scales[si]
        rope = rope_table(cfg.head_dim, (scale.h, scale.w), self.sched.rope_grid, rope_freqs_grid(cfg.head_dim))
        prune, q_chunks = self.prune_step(), self.q_chunks()
        past = past_lengths(plan, depth, si)
        batch = shapes.batch

        def embed(m: Infinity, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            cond = Conditioning(batch=batch, sos=x.get(gn.SOS), gss=x.get(gn.GSS), head_scale=None, head_shift=None,
                                text_mask=None)
            return {xs[0].name: m.embed_input(si, x.get(gn.CODES), cond)}

        first = [specs[gn.SOS]] if si == 0 else [specs[gn.CODES], specs[gn.GSS]]
        parts = [Part("embed", ("embed", si), tuple(first), (xs[0],), outer, embed)]
        for i in range(depth):
            p = prune if prune is not None and prune.covers(i) else None
            first = [xs[i], specs[gn.GSS], specs[gn.TEXT_MASK], specs[gn.ca_k(i)], specs[gn.ca_v(i)]]
            ins, outs, cache_out = self.block_io(i, p is not None, first, xs[i + 1], specs, past)
            key = ("block", si, p is not None, self.given_indices, cache_out, past[i], q_chunks[i])
            call = self._block_call(i, p, rope, q_chunks[i], xs[i].name, xs[i + 1].name)
            parts.append(Part(f"block{i}", key, tuple(ins), tuple(outs), block_weights(model, prefixes[i]), call))

        def head(m: Infinity, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            cond = Conditioning(batch=batch, sos=None, gss=None, head_scale=x[gn.HEAD_SCALE],
                                head_shift=x[gn.HEAD_SHIFT], text_mask=None)
            cfg_scale = x.get(gn.CFG_SCALE, torch.ones((), dtype=torch.float32))
            logits = m.finish(x[xs[depth].name], cond, cfg_scale, x[gn.INV_TAU])
            return {gn.LOGITS: logits, gn.BITS: sample_bits(logits, x[gn.NOISE])}

        ins = [xs[depth], specs[gn.HEAD_SCALE], specs[gn.HEAD_SHIFT]]
        ins += [specs[gn.CFG_SCALE]] if shapes.guidance else []
        ins += [specs[gn.INV_TAU], specs[gn.NOISE]]
        parts.append(Part("head", ("head", si), tuple(ins), (specs[gn.LOGITS], specs[gn.BITS]), outer, head))
        return parts

    def _block_call(self, i: int, p: PruneStep | None, rope: torch.Tensor, q_chunk: int | None, x_in: str,
                    x_out: str) -> Callable[[Infinity, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        depth, batch = self.model.cfg.depth, self.shapes.batch

        def call(m: Infinity, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            ca_k, ca_v = [None] * depth, [None] * depth
            ca_k[i], ca_v[i] = x[gn.ca_k(i)], x[gn.ca_v(i)]
            cond = Conditioning(batch=batch, sos=None, gss=x[gn.GSS], head_scale=None, head_shift=None,
                                text_mask=x[gn.TEXT_MASK], ca_k=ca_k, ca_v=ca_v)
            bp, rc = self.block_prune(p, i, x)
            y, k, v, outs, idx = m.block(m.block_list[i], x[x_in], cond, i, rope, x.get(gn.past_k(i)),
                                         x.get(gn.past_v(i)), bp, rc, q_chunk)
            return self.block_outputs(i, x_out, y, k, v, outs, idx, p is not None)

        return call


class DecoderGraph:
    """Summed codes at the final scale -> image in [-1, 1]; keeps its own weights (one graph uses them)."""

    def __init__(self, vae: BSQVAEDecoder, code_hw: tuple[int, int], batch: int) -> None:
        self.vae, self.code_hw, self.batch = vae, code_hw, batch

    def definition(self) -> GraphDef:
        h, w = self.code_hw
        stride = self.vae.cfg.stride
        codes = spec(gn.CODES, (self.batch, self.vae.cfg.codebook_dim, h, w), "float32")
        image = spec(gn.IMAGE, (self.batch, 3, h * stride, w * stride), "float32")
        return GraphDef(gn.DECODER_GRAPH, "decoder", [codes], [image])

    def module(self) -> nn.Module:
        return DecodeModule(self.vae)


class DecodeModule(nn.Module):
    """``decoder.decode`` as a module of its own: what a decoder graph traces (its weights stay initializers)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder.decode(codes)

