"""The HART transformer (text-to-image inference path) with upstream's math and parameter names.

Upstream: ``HARTForT2I`` (hart/modules/models/transformer/hart_transformer_t2i.py) with the blocks of
hart/modules/networks/basic_hart.py, in the branch the released 1024-px model runs: pre-norm RMSNorm
blocks without AdaLN, Llama attention (q/v biases, 1-D RoPE on the text, 2-D RoPE on image tokens,
softmax scale 0.25/sqrt(hd), or cosine attention when ``attn_l2_norm``), SwiGLU MLP, a level embedding,
and the head's AdaLN conditioned on the max-pooled projected text.

State is explicit, as in the Infinity reference: ``condition`` computes what is fixed per image, ``step``
runs one scale (step 0 is the 300-token text context) and returns its CFG-mixed logits, its final hidden
states (the last step's feed the diffusion head), its new KV entries and, at FastVAR's cache step, the
per-block sub-layer outputs later steps restore from. The module caches nothing itself.

Precision is explicit casts, as in the Infinity reference (autocast does not export): ``fp32`` everywhere,
or ``bf16`` (``set_precision``): block weights, block matmuls, attention, K/V and the FastVAR restore caches
in bf16; the residual stream, norms, RoPE, the head, the text projection, the diffusion head and the
tokenizer in fp32. A block computes in the dtype of its own weights, so the same code is both.
Upstream runs fp16 autocast (docs/design/hart.md says where its rounding differs from this).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvar.export.fastvar import gather_tokens
from fastvar.export.models.hart_config import HARTConfig
from fastvar.export.models.hart_diffusion import DiffusionHead, TimestepEmbedder
from fastvar.export.models.hart_fastvar import HARTPruneStep
from fastvar.export.models.hart_rope import apply_rope, context_position_ids, rope_1d, scale_rope
from fastvar.export.models.precision import cast_blocks

# Upstream buffers that a saved state dict may carry and inference never reads (the training mask is
# (1, 1, 9750, 9750) at 1024 px).
UNUSED_BUFFERS = ("lvl_1L", "attn_bias_for_masking")


class RMSNorm(nn.Module):
    """RMSNorm with a weight (upstream's norms always carry one, even ``ln_wo_grad``), in float32."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


def _linear(x: torch.Tensor, layer: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    """A linear layer computed in ``dtype`` (inputs, weight and bias cast explicitly; no-ops in fp32)."""
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return F.linear(x.to(dtype), layer.weight.to(dtype), bias)


class HARTAttention(nn.Module):
    """Llama-style attention: no k bias, RoPE from precomputed cos/sin, past K/V passed in."""

    def __init__(self, c: int, heads: int, l2_norm: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, c // heads
        self.l2_norm = l2_norm
        self.qkv_proj = nn.Linear(c, 3 * c, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(c))
        self.v_bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.proj = nn.Linear(c, c)
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.scale = 1.0 if l2_norm else 0.25 / self.head_dim ** 0.5

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past_k: torch.Tensor | None,
                past_v: torch.Tensor | None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, C) normed; cos/sin (B, L, hd); past (P, B, H, hd) sequence-major or None.

        Returns the projected output and this step's k, v (L, B, H, hd), in the block's dtype. ``mask``
        (L, P + L) bool is only for the teacher-forced recomputation; inference attends to everything
        cached, as upstream. In bf16, q and k are normalised and rotated in fp32, then rounded."""
        b, n, c = x.shape
        dt = self.qkv_proj.weight.dtype
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)).to(dt)
        qkv = F.linear(x.to(dt), self.qkv_proj.weight, bias).view(b, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = q.float(), k.float()
        if self.l2_norm:
            mul = self.scale_mul_1H11.float().clamp_max(torch.log(torch.tensor(100.0)).item()).exp()
            q = F.normalize(q, dim=-1) * mul
            k = F.normalize(k, dim=-1)
        q, k = apply_rope(q, cos, sin).to(dt), apply_rope(k, cos, sin).to(dt)
        k_new, v_new = k.permute(2, 0, 1, 3).contiguous(), v.permute(2, 0, 1, 3).contiguous()
        k_all = k_new if past_k is None else torch.cat((past_k, k_new), 0)
        v_all = v_new if past_v is None else torch.cat((past_v, v_new), 0)
        out = F.scaled_dot_product_attention(q, k_all.permute(1, 2, 0, 3), v_all.permute(1, 2, 0, 3),
                                             attn_mask=mask, scale=self.scale)
        return _linear(out.transpose(1, 2).reshape(b, n, c), self.proj, dt), k_new, v_new


class LlamaMLP(nn.Module):
    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c, hidden, bias=False)
        self.up_proj = nn.Linear(c, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """SwiGLU in the block's dtype (fp32 input cast once)."""
        x = x.to(self.gate_proj.weight.dtype)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class HARTBlock(nn.Module):
    """Upstream's AdaLNSelfAttn with ``disable_aln`` (plain pre-norm; one norm shared by both sub-layers)."""

    def __init__(self, cfg: HARTConfig) -> None:
        super().__init__()
        self.attn = HARTAttention(cfg.width, cfg.heads, cfg.attn_l2_norm)
        self.ffn = LlamaMLP(cfg.width, cfg.mlp_hidden)
        self.ln_wo_grad = RMSNorm(cfg.width, cfg.norm_eps)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, c: int, d: int, eps: float) -> None:
        super().__init__()
        self.ln_wo_grad = RMSNorm(c, eps)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * c))


@dataclass
class HARTConditioning:
    """Per-image tensors, computed once: rows are [cond..., uncond...] when CFG is on."""

    batch: int  # B: images; rows are 2B with CFG
    sos: torch.Tensor  # (B2, Lt, C) projected text: step 0's tokens before the level embedding
    head_scale: torch.Tensor  # (B2, 1, C)
    head_shift: torch.Tensor  # (B2, 1, C)
    context_pos: torch.Tensor  # (B2, Lt) int64 text position ids (zeros on uncond rows, as upstream)

    @property
    def last_pos(self) -> torch.Tensor:
        """(B2,) the last text position id: the offset of every image token's 2-D position."""
        return self.context_pos[:, -1]

    @property
    def rows(self) -> int:
        return self.sos.shape[0]


@dataclass
class HARTStepOutput:
    logits: torch.Tensor  # (B, L, V) after the CFG mix; step 0: only the last text position (B, 1, V)
    hidden: torch.Tensor  # (B2, L, C) final hidden states before the head norm
    new_k: list[torch.Tensor]  # per block (L_i, B2, H, hd)
    new_v: list[torch.Tensor]
    caches: list[tuple[torch.Tensor, torch.Tensor]] | None  # per block (attn, mlp) sub-layer outputs
    kept_idx: list[tuple[torch.Tensor, torch.Tensor] | None] | None  # per block (attn, mlp) kept indices


class HART(nn.Module):
    """HART for text-to-image inference; ``state_dict()`` keys equal upstream's (less unused buffers)."""

    def __init__(self, cfg: HARTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.compute_dtype = torch.float32
        c = cfg.width
        if cfg.use_context_norm:
            self.context_norm = RMSNorm(cfg.context_dim, cfg.norm_eps)
        self.context_embed = nn.Linear(cfg.context_dim, c)
        self.word_embed = nn.Linear(cfg.cvae, c)
        if cfg.use_timestep_embed:
            self.lvl_embed = TimestepEmbedder(c)
        else:
            self.lvl_embed = nn.Embedding(cfg.num_scales, c)
        self.blocks = nn.ModuleList(HARTBlock(cfg) for _ in range(cfg.depth))
        self.head_nm = AdaLNBeforeHead(c, c, cfg.norm_eps)
        self.head = nn.Linear(c, cfg.vocab)
        self.decoder_norm = RMSNorm(c, cfg.norm_eps)
        self.diffloss = DiffusionHead(cfg.cvae, c, cfg.diff_width, cfg.diff_depth, cfg.diff_steps)

    # ---- precision ---------------------------------------------------------------------------
    def set_precision(self, precision: str) -> HART:
        """fp32, or bf16: the blocks' weights (and so their matmuls, attention and K/V) in bf16, the rest fp32."""
        self.compute_dtype = cast_blocks(self.blocks, precision)
        return self

    # ---- per image ---------------------------------------------------------------------------
    def condition(self, context: torch.Tensor, context_mask: torch.Tensor, cfg_active: bool = True) -> HARTConditioning:
        """context (B, Lt, D) last Qwen2 hidden states, mask (B, Lt) valid tokens. CFG appends zero text.

        Upstream pads every prompt to ``context_token`` tokens and attends to all of them (the mask only
        sets position ids); the unconditional rows are all-zero text with position ids zero.
        """
        b, lt, d = context.shape
        if d != self.cfg.context_dim:
            raise ValueError(f"text states have {d} channels; this model expects {self.cfg.context_dim}")
        if lt != self.cfg.context_tokens:
            raise ValueError(f"text has {lt} tokens; HART takes exactly {self.cfg.context_tokens} (pad the prompt)")
        if context_mask.shape != (b, lt):
            raise ValueError(f"context_mask {tuple(context_mask.shape)} does not match the text ({b}, {lt})")
        dev = self.context_embed.weight.device
        ctx = context.float().to(dev)
        pos = context_position_ids(context_mask.to(dev))
        if cfg_active:
            ctx = torch.cat((ctx, torch.zeros_like(ctx)), 0)
            pos = torch.cat((pos, torch.zeros_like(pos)), 0)
        if self.cfg.use_context_norm:
            ctx = self.context_norm(ctx)
        sos = self.context_embed(ctx)
        pooled = sos.max(dim=1, keepdim=True).values  # upstream's head AdaLN pools over all tokens, pads too
        scale, shift = self.head_nm.ada_lin(pooled).view(-1, 1, 2, self.cfg.width).unbind(2)
        return HARTConditioning(batch=b, sos=sos, head_scale=scale, head_shift=shift, context_pos=pos)

    # ---- per scale ---------------------------------------------------------------------------
    def level(self, si: int) -> torch.Tensor:
        """(C,) level embedding of step si (a table row, or the timestep MLP of si)."""
        if self.cfg.use_timestep_embed:
            return self.lvl_embed(torch.tensor([si], device=self.word_embed.weight.device))[0]
        return self.lvl_embed.weight[si]

    def embed_input(self, si: int, x_in: torch.Tensor | None, cond: HARTConditioning) -> torch.Tensor:
        """Step si's tokens: the projected text at 0, else word_embed of the area-downsampled f_hat."""
        if si == 0:
            return cond.sos + self.level(0)
        x = self.word_embed(x_in.float().to(self.word_embed.weight.device)) + self.level(si)
        return x.repeat(cond.rows // x.shape[0], 1, 1)

    def rope(self, si: int, cond: HARTConditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B2, L, hd) of step si: 1-D over the text, else the scale's 2-D grid positions."""
        hd, theta = self.cfg.head_dim, self.cfg.rope_theta
        if si == 0:
            return rope_1d(cond.context_pos, hd, theta)
        return scale_rope(self.cfg.patch_nums[si], self.cfg.final_side, cond.last_pos, hd, theta)

    def logits(self, h: torch.Tensor, cond: HARTConditioning) -> torch.Tensor:
        """Head on final hidden states (rows of the conditioning), before CFG."""
        normed = self.head_nm.ln_wo_grad(h)
        rows = h.shape[0]
        return self.head(normed * (cond.head_scale[:rows] + 1) + cond.head_shift[:rows])

    def mix_cfg(self, logits: torch.Tensor, cond: HARTConditioning, weight: float | torch.Tensor) -> torch.Tensor:
        """HART's guidance: (1 + t) * cond - t * uncond (t ramps with the step, see hart_sampling)."""
        b = cond.batch
        if logits.shape[0] == b:
            return logits
        return (1 + weight) * logits[:b] - weight * logits[b:]

    def step(
        self,
        si: int,
        x_in: torch.Tensor | None,
        cond: HARTConditioning,
        past_k: list[torch.Tensor | None],
        past_v: list[torch.Tensor | None],
        cfg_weight: float | torch.Tensor,
        prune: HARTPruneStep | None = None,
        restore_caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        collect_caches: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> HARTStepOutput:
        """One step: x_in (B, L, Cvae) (None at step 0) -> CFG-mixed logits, hidden states, KV entries."""
        if prune is not None and restore_caches is None:
            raise ValueError("a pruned step needs the restore caches collected at the cache step")
        x = self.embed_input(si, x_in, cond)
        cos, sin = self.rope(si, cond) if rope is None else rope
        new_k, new_v, caches, kept = [], [], [], []
        for i, blk in enumerate(self.blocks):
            p = prune if prune is not None and prune.covers(i) else None
            x, k, v, outs, idx = self.block(blk, i, x, cos, sin, past_k[i], past_v[i], p,
                                            restore_caches[i] if p is not None else None)
            new_k.append(k)
            new_v.append(v)
            caches.append(outs)
            kept.append(idx if p is not None else None)
        logits = self.finish(si, x, cond, cfg_weight)
        return HARTStepOutput(logits=logits, hidden=x, new_k=new_k, new_v=new_v,
                              caches=caches if collect_caches else None, kept_idx=kept if prune is not None else None)

    def finish(self, si: int, x: torch.Tensor, cond: HARTConditioning,
               cfg_weight: float | torch.Tensor) -> torch.Tensor:
        """The last block's output -> CFG-mixed logits (step 0: of the last text position only)."""
        h = x[:, -1:] if si == 0 else x
        return self.mix_cfg(self.logits(h, cond), cond, cfg_weight)

    def block(self, blk: HARTBlock, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              past_k: torch.Tensor | None, past_v: torch.Tensor | None, p: HARTPruneStep | None,
              rc: tuple[torch.Tensor, torch.Tensor] | None):
        """x + attn(norm(x)), then x + mlp(norm(x)); with FastVAR each sub-layer sees only its kept tokens.
        Reads only block ``i``'s weights, so a graph can trace it once and stamp it per block."""
        def pick(xx: torch.Tensor, sub: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            if p is None:
                return xx, None
            lo = 0 if p.block_range is None else p.block_range[0]
            idx = p.select(xx, p.kept) if p.given is None else p.given[i - lo][sub]
            return gather_tokens(xx, idx), idx

        def add(res: torch.Tensor, out: torch.Tensor, idx: torch.Tensor | None,
                cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
            """The residual add and the full sub-layer map (None where the fused restore-add never forms it)."""
            if idx is None:
                return res + out, out
            if p.restore_add is not None:
                return p.restore_add(res, out, idx, cache, p.cache_hw, p.hw), None
            full = p.restore(out, idx, cache, p.cache_hw, p.hw)
            return res + full, full

        xs, idx_a = pick(x, 0)
        c, s = cos, sin
        if idx_a is not None:  # kept tokens keep their own RoPE rows (upstream gathers cos/sin too)
            c, s = gather_tokens(cos, idx_a), gather_tokens(sin, idx_a)
        attn, k, v = blk.attn(blk.ln_wo_grad(xs), c, s, past_k, past_v)
        x, attn = add(x, attn, idx_a, rc[0] if rc else None)
        xs, idx_f = pick(x, 1)
        x, mlp = add(x, blk.ffn(blk.ln_wo_grad(xs)), idx_f, rc[1] if rc else None)
        return x, k, v, (attn, mlp), (idx_a, idx_f)

    # ---- the whole sequence at once (the meaning the cached steps must reproduce) ---------------
    def teacher_forced(self, cond: HARTConditioning, x_ins: list[torch.Tensor],
                       cfg_weights: list[float]) -> list[torch.Tensor]:
        """All steps in one pass with upstream's training mask (a token sees its own and earlier steps).

        x_ins[si - 1] (B, pn_si^2, Cvae) for si = 1..n; returns the CFG-mixed logits of steps 0..n as
        ``step`` would. Only for checking the KV-cached path; upstream trains with this mask.
        """
        n = len(x_ins)
        xs = [self.embed_input(0, None, cond)] + [self.embed_input(si, x_ins[si - 1], cond) for si in range(1, n + 1)]
        ropes = [self.rope(si, cond) for si in range(n + 1)]
        lens = [t.shape[1] for t in xs]
        level = torch.cat([torch.full((ln,), si) for si, ln in enumerate(lens)])
        mask = level[:, None] >= level[None, :]
        x = torch.cat(xs, 1)
        cos, sin = torch.cat([r[0] for r in ropes], 1), torch.cat([r[1] for r in ropes], 1)
        for blk in self.blocks:
            x = x + blk.attn(blk.ln_wo_grad(x), cos, sin, None, None, mask)[0]
            x = x + blk.ffn(blk.ln_wo_grad(x))
        out, start = [], 0
        for si, ln in enumerate(lens):
            h = x[:, start:start + ln]
            h = h[:, -1:] if si == 0 else h
            out.append(self.mix_cfg(self.logits(h, cond), cond, cfg_weights[si]))
            start += ln
        return out

    # ---- the last step's continuous residual -------------------------------------------------
    def diffusion_condition(self, hidden: torch.Tensor, discrete: torch.Tensor, cond: HARTConditioning) -> torch.Tensor:
        """decoder_norm(last hidden + word_embed(codebook vectors of the sampled indices)), (B2 * L, C).

        ``discrete`` (B, L, Cvae) is the codebook embedding of the conditional rows' indices; upstream
        gives the same vectors to the unconditional rows."""
        d = self.word_embed(discrete.float())
        d = d.repeat(cond.rows // d.shape[0], 1, 1)
        return self.decoder_norm(hidden + d).reshape(-1, self.cfg.width)
