"""Device-memory plan of one compiled artifact: what must be resident on the GPU, item by item.

Every item is a closed-form count from the model geometry, the scale schedule and the FastVAR plan, so
the plan can be printed (and recorded in the manifest) before anything is built. Parameter counts come
from the real module graph built on the meta device (no allocation). Activation items are estimates of
what the exported graphs keep alive at their worst step; they are upper-bound style sums, not profiler
readings (TensorRT may fuse some of them away, and adds its own workspace on top).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch

from fastvar.export.kv_layout import block_cache_lengths, past_lengths
from fastvar.export.models.bsq_vae import BSQVAEDecoder
from fastvar.export.models.infinity import Infinity
from fastvar.export.models.infinity_config import InfinityConfig
from fastvar.export.schedules import PrunePlan, ScaleSchedule

GIB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
BLOCK_PREFIXES = ("block_chunks.", "blocks.")

# Flan-T5-XL (google/flan-t5-xl config.json): T5 v1.1 XL, gated-GELU FFN, untied embeddings. Only the
# encoder stack runs for Infinity; upstream loads it in fp16 (run_infinity.py:153).
T5_XL = dict(d_model=2048, d_ff=5120, num_layers=24, num_heads=32, d_kv=64, vocab=32128, buckets=32)
T5_PRECISION = "fp16"


class PlanDoesNotFit(ValueError):
    """The plan's total exceeds the given device memory."""


@dataclass
class MemoryItem:
    name: str
    bytes: int
    note: str


@dataclass
class MemoryPlan:
    model: str
    resolution: str
    pixels: tuple[int, int]
    batch: int
    precision: str
    schedule: str
    items: list[MemoryItem] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(it.bytes for it in self.items)

    @property
    def label(self) -> str:
        h, w = self.pixels
        return f"{self.model} {h}x{w} b{self.batch} {self.precision} {self.schedule}"

    def item(self, name: str) -> MemoryItem:
        return find_item(self.items, name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pixels"] = list(self.pixels)
        d["total"] = self.total
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MemoryPlan:
        return cls(
            model=d["model"], resolution=d["resolution"], pixels=tuple(d["pixels"]), batch=d["batch"],
            precision=d["precision"], schedule=d["schedule"], items=[MemoryItem(**it) for it in d["items"]],
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        name_w = max(len("total"), *(len(it.name) for it in self.items))
        head = f"{'item':<{name_w}}  {'GiB':>8}  note"
        rule = "-" * len(head)
        lines = [f"memory plan: {self.label} (resolution {self.resolution})", head, rule]
        for it in self.items:
            lines.append(f"{it.name:<{name_w}}  {it.bytes / GIB:>8.3f}  {it.note}")
        lines.append(rule)
        lines.append(f"{'total':<{name_w}}  {self.total / GIB:>8.3f}")
        return "\n".join(lines)

    def check_fits(self, gpu_gib: float) -> None:
        budget = gpu_gib * GIB
        if self.total <= budget:
            return
        raise PlanDoesNotFit(
            f"{self.label} needs {self.total / GIB:.2f} GiB but the budget is {gpu_gib:.2f} GiB: "
            f"short by {(self.total - budget) / GIB:.2f} GiB; largest items: {largest_items(self.items)}"
        )


def find_item(items, name: str):
    """The plan item called ``name`` (device and run plans alike)."""
    for it in items:
        if it.name == name:
            return it
    raise KeyError(f"no item {name!r}; items: {', '.join(i.name for i in items)}")


def largest_items(items, n: int = 3) -> str:
    """The ``n`` largest items with their sizes, for a refusal's message."""
    biggest = sorted(items, key=lambda it: it.bytes, reverse=True)[:n]
    return ", ".join(f"{it.name} {it.bytes / GIB:.2f} GiB" for it in biggest)


# ---- counts ---------------------------------------------------------------------------------------

def _state_numels(module_cls, cfg) -> dict[str, int]:
    with torch.device("meta"):
        sd = module_cls(cfg).state_dict()
    return {k: v.numel() for k, v in sd.items()}


def transformer_param_counts(cfg: InfinityConfig) -> tuple[int, int]:
    """(block elements, other elements) of the state dict (parameters and buffers), built on meta."""
    numels = _state_numels(Infinity, cfg)
    block = sum(n for k, n in numels.items() if k.startswith(BLOCK_PREFIXES))
    return block, sum(numels.values()) - block


def transformer_weight_bytes(cfg: InfinityConfig, precision: str) -> int:
    block, other = transformer_param_counts(cfg)
    return block * DTYPE_BYTES[precision] + other * 4


def vae_param_count(cfg: InfinityConfig) -> int:
    return sum(_state_numels(BSQVAEDecoder, cfg.vae).values())


def t5_encoder_params(d_model: int, d_ff: int, num_layers: int, num_heads: int, d_kv: int, vocab: int,
                      buckets: int) -> int:
    """T5 v1.1 encoder (gated FFN, no biases, RMS norms): embeddings + layers + final norm + rel. bias."""
    inner = num_heads * d_kv
    attn = 4 * d_model * inner
    ffn = 3 * d_model * d_ff  # wi_0, wi_1, wo
    layer = attn + ffn + 2 * d_model
    return vocab * d_model + num_layers * layer + d_model + buckets * num_heads


def _vae_feature_maps(cfg: InfinityConfig, latent_hw: tuple[int, int]) -> list[tuple[str, int, int]]:
    """(where, channels, pixels) of every map the decoder produces, walking it as bsq_vae.Decoder does."""
    v = cfg.vae
    h, w = latent_hw
    chans = v.level_channels
    c = chans[-1]
    maps = [("conv_in/mid", c, h * w)]
    for level in reversed(range(len(chans))):
        c = chans[level]
        maps.append((f"up[{level}] blocks", c, h * w))
        if level in v.upsample_levels:
            h, w = 2 * h, 2 * w
            maps.append((f"up[{level}] upsample", c, h * w))
    return maps


def _step_geometry(plan: PrunePlan, depth: int) -> list[dict]:
    """Per executed step: tokens, and per block (query tokens L, past KV length P)."""
    out = []
    past = [0] * depth
    for s in plan.executed:
        lq = [s.kept if (s.pruned and plan.block_pruned(i)) else s.tokens for i in range(depth)]
        out.append({"step": s, "L": lq, "P": list(past)})
        past = [p + q for p, q in zip(past, lq, strict=True)]
    return out


# ---- the plan ----------------------------------------------------------------------------------

def memory_plan(cfg: InfinityConfig, sched: ScaleSchedule, plan: PrunePlan, batch: int, precision: str,
                text_len: int, guidance: bool = True) -> MemoryPlan:
    """The device-memory plan of one artifact (transformer engines + VAE decoder) at one schedule."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unsupported precision {precision!r}; accepted: fp32, bf16")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not 1 <= text_len <= cfg.text_maxlen:
        raise ValueError(f"text_len must be in [1, {cfg.text_maxlen}], got {text_len}")
    if len(plan.steps) != len(sched.scales):
        raise ValueError(f"the prune plan has {len(plan.steps)} steps but the schedule {len(sched.scales)}")
    cb = DTYPE_BYTES[precision]
    rows = 2 * batch if guidance else batch
    c, depth, heads = cfg.width, cfg.depth, cfg.heads
    dt = precision
    items: list[MemoryItem] = []

    # 1. transformer weights
    block, other = transformer_param_counts(cfg)
    items.append(MemoryItem(
        "transformer weights", block * cb + other * 4,
        f"{block + other:,} params: {block:,} block params in {dt}, {other:,} others fp32; held once, "
        "bound as a shared input of every per-scale engine",
    ))

    # 2. VAE decoder weights
    nv = vae_param_count(cfg)
    items.append(MemoryItem("VAE decoder weights", nv * 4, f"{nv:,} params fp32"))

    # 3. KV cache
    lens = block_cache_lengths(plan, depth)
    kv = sum(lens) * rows * c * 2 * cb
    items.append(MemoryItem(
        "KV cache", kv,
        f"k+v, {rows} rows x {c} ch {dt}; {sum(lens):,} token-entries over {depth} blocks "
        f"(per block {min(lens):,}..{max(lens):,}; last step not cached)",
    ))

    # 4. FastVAR restore caches
    if plan.cache_scale is not None:
        lc = plan.steps[plan.cache_scale].tokens
        nb = plan.block_range[1] - plan.block_range[0]
        per_block = rows * lc * c * (cb + 4 + 4)
        hw = plan.cache_hw
        items.append(MemoryItem(
            "FastVAR restore caches", nb * per_block,
            f"{nb} blocks [{plan.block_range[0]},{plan.block_range[1]}) x (sa {dt} + ca fp32 + ffn fp32) maps "
            f"of ({rows}, {lc}, {c}) from step {plan.cache_scale} ({hw[0]}x{hw[1]})",
        ))

    # 5. conditioning
    ca_kv = depth * 2 * rows * text_len * c * cb
    ada = rows * (6 * c + 3 * c) * 4 + rows * text_len  # gss, head scale/shift, sos fp32; bool text mask
    items.append(MemoryItem(
        "conditioning", ca_kv + ada,
        f"cross-attn k+v {depth} blocks x ({rows}, {heads}, {text_len}, {cfg.head_dim}) {dt}; "
        "AdaLN gss/head/sos fp32 + mask",
    ))

    # 6. peak step activations
    best = None
    for g in _step_geometry(plan, depth):
        s, lq, past = g["step"], g["L"], g["P"]
        b_worst = max(range(depth), key=lambda i: lq[i] * (past[i] + lq[i]))
        l_w, p_w = lq[b_worst], past[b_worst]
        scores = 2 * rows * heads * l_w * (p_w + l_w) * cb
        l_max = max(lq)
        ffn_h = rows * l_max * cfg.mlp_hidden * cb
        qkv = rows * l_max * 3 * c * cb
        resid = 3 * rows * s.tokens * c * 4
        logits = rows * s.tokens * cfg.vocab * 4
        total = scores + ffn_h + qkv + resid + logits
        if best is None or total > best[0]:
            best = (total, s, scores, l_w, p_w, b_worst)
    total, s, scores, l_w, p_w, b_worst = best
    items.append(MemoryItem(
        "peak step activations", total,
        f"step {s.index} ({s.h}x{s.w}); attn scores+probs ({rows}, {heads}, {l_w}, {p_w}+{l_w}) {dt} "
        f"(block {b_worst}) = {scores / GIB:.2f} GiB, {100 * scores / total:.0f}%; + FFN hidden, qkv, "
        "3 fp32 residual maps, logits",
    ))

    # 7. VAE decode activations
    ph, pw = sched.pixels
    stride = cfg.vae.stride
    maps = _vae_feature_maps(cfg, (ph // stride, pw // stride))
    where, ch, px = max(maps, key=lambda m: m[1] * m[2])
    vae_act = 3 * batch * ch * px * 4
    items.append(MemoryItem(
        "VAE decode activations", vae_act,
        f"estimate: 3 x largest map ({batch}, {ch}, {ph}x{pw}) at {where}, fp32",
    ))

    # 8. text encoder (external)
    nt = t5_encoder_params(**T5_XL)
    items.append(MemoryItem(
        "text encoder (external)", nt * DTYPE_BYTES[T5_PRECISION],
        f"Flan-T5-XL encoder {nt:,} params {T5_PRECISION}; runs outside the artifact, counted in the total",
    ))

    return MemoryPlan(model=cfg.name, resolution=sched.tier, pixels=tuple(sched.pixels), batch=batch,
                      precision=precision, schedule=plan.spec, items=items)


def markdown_table(plans: list[MemoryPlan]) -> str:
    """One markdown table: rows = items (in plan order), columns = plans, values in GiB (2 decimals)."""
    names: list[str] = []
    for p in plans:
        prev = None
        for it in p.items:
            if it.name not in names:
                names.insert(names.index(prev) + 1 if prev is not None else 0, it.name)
            prev = it.name

    def col(p: MemoryPlan) -> str:
        h, w = p.pixels
        return f"{p.model} {h}x{w} {p.schedule}"

    lines = ["| item | " + " | ".join(col(p) for p in plans) + " |", "|---|" + "---:|" * len(plans)]
    for n in names:
        cells = []
        for p in plans:
            hit = [it for it in p.items if it.name == n]
            cells.append(f"{hit[0].bytes / GIB:.2f}" if hit else "–")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{p.total / GIB:.2f}**" for p in plans) + " |")
    return "\n".join(lines)


def hart_memory_plan(model, tok, sched, plan: PrunePlan, batch: int, guidance: bool,
                     precision: str = "fp32") -> MemoryPlan:
    """HART's plan: weights, the KV cache as the schedule fills it, the FastVAR restore caches and f_hat.
    Counted from the (meta) modules at ``precision`` and the plan; the activation peak is an estimate of
    the largest step. In bf16 the blocks' weights, K/V, restore caches and attention are 2 bytes a value."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unsupported precision {precision!r}; accepted: fp32, bf16")
    cfg = model.cfg
    rows = 2 * batch if guidance else batch
    f32, cb = 4, DTYPE_BYTES[precision]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    block_params = sum(p.numel() for p in model.blocks.parameters())
    tok_weights = sum(p.numel() for p in tok.parameters()) * f32
    kv = sum(block_cache_lengths(plan, cfg.depth)) * 2 * rows * cfg.width * cb
    cache = 0
    if plan.cache_scale is not None:
        cache = cfg.depth * 2 * rows * plan.steps[plan.cache_scale].tokens * cfg.width * cb
    f_hat = batch * cfg.cvae * cfg.final_side ** 2 * f32
    peak, at = 0, 0
    for st in plan.executed:  # decomposed attention's scores + probabilities and the SwiGLU hidden pair
        n = st.kept if st.pruned else cfg.step_tokens(st.index)
        past = max(past_lengths(plan, cfg.depth, st.index), default=0)
        need = (2 * rows * cfg.heads * n * (past + n) + 2 * rows * n * cfg.mlp_hidden) * cb
        if need > peak:
            peak, at = need, st.index
    h, w = sched.pixels
    split = (f"{block_params:,} block params in {precision}, "
             f"{sum(p.numel() for p in model.parameters()) - block_params:,} others fp32")
    items = [MemoryItem("transformer weights", weights, f"HART blocks, head and diffusion MLP: {split}"),
             MemoryItem("tokenizer weights", tok_weights, "codebook, Φ and the VQ decoder, fp32"),
             MemoryItem("KV cache", kv, f"{rows} rows {precision}, step 0 holds the {cfg.context_tokens}-token text"),
             MemoryItem("restore caches", cache, f"attention and MLP outputs of every block at the 36x36 step, "
                        f"{precision}"),
             MemoryItem("f_hat", f_hat, "the summed latent, fp32"),
             MemoryItem("peak step activations", peak, f"step {at}: attention scores and probabilities, "
                        f"SwiGLU hidden, {precision} (estimate)")]
    return MemoryPlan(model=cfg.name, resolution=str(h), pixels=(h, w), batch=batch, precision=precision,
                      schedule=plan.spec, items=items)
