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
    """Maps a flat tuple (data inputs, then weights) onto a call of the model with those weights."""

    def __init__(self, model: nn.Module, weight_names: list[str], n_data: int,
                 call: Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.model, self.weight_names, self.n_data, self.call = model, weight_names, n_data, call

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


class ConditionGraph:
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

    def module(self) -> nn.Module:
        guidance = self.shapes.guidance

        def call(m: Infinity, data: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            text, lengths = data
            cond = m.condition(text, lengths, cfg_active=guidance)
            out = [cond.sos, cond.gss, cond.head_scale, cond.head_shift, cond.text_mask]
            for k, v in zip(cond.ca_k, cond.ca_v, strict=True):
                out += [k, v]
            return tuple(out)

        d = self.definition()
        return Traced(CallModel(self.model), param_names(self.model), len(d.inputs), call)


class FastVARStepGraph:
    """What a step graph of either family shares: the plan, the validation variant, which blocks prune,
    and the FastVAR prune step built with the export's graph spellings (selection by TopK, restoration
    by ``restore_fn``, optionally fused with its residual add by ``restore_add_fn``)."""

    prune_cls: type = PruneStep

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

    def _given(self, x: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, ...]] | None:
        if not self.given_indices:
            return None
        return [tuple(x[gn.kept(sub, i)] for sub in gn.INFINITY_SUBLAYERS) for i in self.blocks_pruned]

    def module(self) -> nn.Module:
        cfg, st, plan, shapes = self.model.cfg, self.st, self.plan, self.shapes
        d = self.definition()
        names = [t.name for t in d.inputs]
        scale = self.sched.scales[st.index]
        rope = rope_table(cfg.head_dim, (scale.h, scale.w), self.sched.rope_grid, rope_freqs_grid(cfg.head_dim))
        prune, last, pruned_blocks, given = self.prune_step(), self.last, self.blocks_pruned, self._given
        q_chunks = self.q_chunks()
        is_cache = st.index == plan.cache_scale

        def call(m: Infinity, data: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = dict(zip(names, data, strict=True))
            cond = Conditioning(batch=shapes.batch, sos=x.get(gn.SOS), gss=x[gn.GSS], head_scale=x[gn.HEAD_SCALE],
                                head_shift=x[gn.HEAD_SHIFT], text_mask=x[gn.TEXT_MASK],
                                ca_k=[x[gn.ca_k(i)] for i in range(cfg.depth)],
                                ca_v=[x[gn.ca_v(i)] for i in range(cfg.depth)])
            caches, step_prune = None, prune
            if prune is not None:
                step_prune = replace(prune, given=given(x))
                caches = [tuple(x[gn.cache(sub, i)] for sub in gn.INFINITY_SUBLAYERS) if i in pruned_blocks else None
                          for i in range(cfg.depth)]
            cfg_scale = x.get(gn.CFG_SCALE, torch.ones((), dtype=torch.float32))
            out = m.step(st.index, x.get(gn.CODES), cond, rope,
                         [x.get(gn.past_k(i)) for i in range(cfg.depth)],
                         [x.get(gn.past_v(i)) for i in range(cfg.depth)],
                         cfg_scale, x[gn.INV_TAU], prune=step_prune, restore_caches=caches, collect_caches=is_cache,
                         q_chunks=q_chunks)
            res = [out.logits, sample_bits(out.logits, x[gn.NOISE])]
            if not last:
                for k, v in zip(out.new_k, out.new_v, strict=True):
                    res += [k, v]
            if is_cache:
                for i in range(cfg.depth):
                    if plan.block_pruned(i):
                        res += list(out.caches[i])
            if prune is not None and not self.given_indices:
                for idx in out.kept_idx:
                    res += list(idx)
            return tuple(res)

        return Traced(CallModel(self.model), param_names(self.model), len(d.inputs), call)


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

