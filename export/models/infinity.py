"""The Infinity transformer (text-to-image inference path) with upstream's math and parameter names.

State is explicit: ``condition`` computes what is fixed per image, ``step`` runs one scale and returns
its logits, its new KV entries and (at FastVAR's cache step) the sub-layer outputs later steps restore
from. The module itself caches nothing, so the same step is what the reference runs and what is exported.

Precision is explicit casts, not autocast (which does not export): ``fp32`` everywhere, or ``bf16``:
bf16 block weights and matmuls/attention; fp32 residual stream, norms, RoPE, AdaLN, head and selection.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvar.export.fastvar import gather_tokens, restore, select_pivotal
from fastvar.export.models.infinity_config import InfinityConfig
from fastvar.export.models.precision import cast_blocks
from fastvar.export.models.rope import apply_rope

MAX_SCALE_MUL = math.log(100.0)


def _linear(x: torch.Tensor, layer: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    """A linear layer computed in ``dtype`` (inputs and weights cast explicitly)."""
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return F.linear(x.to(dtype), layer.weight.to(dtype), bias)


def _ada_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, then (1 + scale) and shift: upstream's fused_ada_layer_norm, fp32."""
    x = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return x * (scale + 1) + shift


class FastRMSNorm(nn.Module):
    """RMSNorm with a learned weight, computed in float32 (upstream's python fallback formula)."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return ((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)) * self.weight).to(x.dtype)


class SelfAttention(nn.Module):
    """Cosine self-attention: L2-normalised q/k, clamped per-head scale on q, 2-D RoPE, scale 1."""

    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, c // heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.mat_qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(c))
        self.v_bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, past_k: torch.Tensor | None,
                past_v: torch.Tensor | None, dtype: torch.dtype,
                q_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, C) normed; past (P, B, H, hd) sequence-major or None (the first step, which a static
        graph cannot express as a zero-length input). Returns out, new k, new v (L, B, H, hd).

        ``q_chunk`` splits the queries into static chunks: each query row's softmax is independent, so the
        result is the same, while a decomposed-attention graph holds scores of one chunk at a time."""
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)).to(dtype)
        qkv = F.linear(x.to(dtype), self.mat_qkv.weight.to(dtype), bias).view(b, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scale_mul = self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp().float()
        q = F.normalize(q.float(), dim=-1, eps=1e-12) * scale_mul
        k = F.normalize(k.float(), dim=-1, eps=1e-12)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        k_new = k.to(dtype).permute(2, 0, 1, 3).contiguous()
        v_new = v.to(dtype).permute(2, 0, 1, 3).contiguous()
        k_all = k_new if past_k is None else torch.cat((past_k, k_new), 0)
        v_all = v_new if past_v is None else torch.cat((past_v, v_new), 0)
        k_all, v_all = k_all.permute(1, 2, 0, 3), v_all.permute(1, 2, 0, 3)
        q = q.to(dtype)
        if q_chunk and n > q_chunk:
            out = torch.cat([F.scaled_dot_product_attention(q[:, :, s:s + q_chunk], k_all, v_all, scale=1.0)
                             for s in range(0, n, q_chunk)], dim=2)
        else:
            out = F.scaled_dot_product_attention(q, k_all, v_all, scale=1.0)
        out = out.transpose(1, 2).reshape(b, n, c)
        return _linear(out, self.proj, dtype), k_new, v_new


class CrossAttention(nn.Module):
    """Attention to the projected text. Upstream packs prompts for flash-attn varlen; we pad and mask."""

    def __init__(self, c: int, heads: int, kv_dim: int | None = None, for_attn_pool: bool = False) -> None:
        super().__init__()
        kv_dim = kv_dim or c
        self.heads, self.head_dim = heads, c // heads
        if for_attn_pool:
            self.mat_q = nn.Parameter(torch.zeros(1, heads, self.head_dim))
        else:
            self.mat_q = nn.Linear(c, c)
        self.mat_kv = nn.Linear(kv_dim, 2 * c, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.proj = nn.Linear(c, c)

    def kv(self, text: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lt, kv_dim) -> k, v (B, H, Lt, hd): fixed per image, hoisted out of the scale loop."""
        b, n, _ = text.shape
        bias = torch.cat((self.zero_k_bias, self.v_bias)).to(dtype)
        kv = F.linear(text.to(dtype), self.mat_kv.weight.to(dtype), bias).view(b, n, 2, self.heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
        """q (B, H, Lq, hd); mask (B, Lt) True where the text token is valid."""
        out = F.scaled_dot_product_attention(
            q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=mask[:, None, None, :], scale=1 / math.sqrt(self.head_dim)
        )
        b, _, n, _ = q.shape
        return _linear(out.transpose(1, 2).reshape(b, n, -1), self.proj, dtype)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        b, n, _ = x.shape
        q = _linear(x, self.mat_q, dtype).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        return self.attend(q, k, v, mask, dtype)


class TextAttentivePool(nn.Module):
    """Pools the normed text into the condition vector with one learned query per head."""

    def __init__(self, text_channels: int, d: int, heads: int) -> None:
        super().__init__()
        self.ca = CrossAttention(d, heads, kv_dim=text_channels, for_attn_pool=True)

    def forward(self, text: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        k, v = self.ca.kv(text, dtype)
        q = self.ca.mat_q.unsqueeze(2).expand(text.shape[0], -1, -1, -1)
        return self.ca.attend(q, k, v, mask, dtype).squeeze(1)


class FFN(nn.Module):
    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return _linear(F.gelu(_linear(x, self.fc1, dtype), approximate="tanh"), self.fc2, dtype)


class CrossAttnBlock(nn.Module):
    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        c = cfg.width
        self.eps = cfg.norm_eps
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, c))
        self.sa = SelfAttention(c, cfg.heads)
        self.ca = CrossAttention(c, cfg.heads)
        self.ffn = FFN(c, cfg.mlp_hidden)
        self.ca_norm = nn.LayerNorm(c, eps=cfg.norm_eps)


class _Chunk(nn.Module):
    """Upstream's MultipleLayers: only here so that parameter names read ``block_chunks.{c}.module.{j}``."""

    def __init__(self, blocks: list[CrossAttnBlock]) -> None:
        super().__init__()
        self.module = nn.ModuleList(blocks)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, c: int, d: int) -> None:
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * c))


@dataclass
class Conditioning:
    """Per-image tensors, computed once: batch rows are [cond..., uncond...] when CFG is on."""

    batch: int  # B: images; rows are 2B when CFG is on
    sos: torch.Tensor | None  # (B2, 1, C); only step 0 reads it
    gss: torch.Tensor  # (B2, 1, 6, C) fp32
    head_scale: torch.Tensor  # (B2, 1, C)
    head_shift: torch.Tensor  # (B2, 1, C)
    text_mask: torch.Tensor  # (B2, Lt) bool
    ca_k: list[torch.Tensor] = field(default_factory=list)  # per block (B2, H, Lt, hd)
    ca_v: list[torch.Tensor] = field(default_factory=list)


@dataclass
class PruneStep:
    """FastVAR at one step: kept count per sub-layer, token grid, cache grid and the block range.

    ``select`` and ``restore`` default to the reference definitions; the export passes their graph
    spellings (TopK; the FastVARRestore node or its standard-op form), which the tests hold equal.
    """

    kept: int
    hw: tuple[int, int]
    cache_hw: tuple[int, int]
    block_range: tuple[int, int]
    select: Callable[[torch.Tensor, int], torch.Tensor] = select_pivotal
    restore: Callable[..., torch.Tensor] = restore
    # residual + restore(...) as one call (the fused FastVARRestoreAdd node); None: the add follows restore
    restore_add: Callable[..., torch.Tensor] | None = None
    # Kept indices supplied instead of selected, per pruned block (sa, ca, ffn) each (B2, K): validation
    # graphs take the reference's selection as inputs, so their compute is compared on identical tokens.
    given: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def covers(self, block: int) -> bool:
        return self.block_range[0] <= block < self.block_range[1]


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, L, V) after tau and the CFG mix
    new_k: list[torch.Tensor]  # per block (L_i, B2, H, hd)
    new_v: list[torch.Tensor]
    caches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None  # per block (sa, ca, ffn) outputs
    kept_idx: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None  # per pruned block (sa, ca, ffn)


class Infinity(nn.Module):
    """Infinity for text-to-image inference; ``state_dict()`` keys equal upstream's."""

    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, ct5 = cfg.width, cfg.text_channels
        self.compute_dtype = torch.float32
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.text_maxlen, ct5))
        self.text_norm = FastRMSNorm(ct5, eps=cfg.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(ct5, c, cfg.pool_heads)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(ct5, c), nn.GELU(approximate="tanh"), nn.Linear(c, c))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, c))
        self.lvl_embed = nn.Embedding(cfg.num_levels, c)
        self.word_embed = nn.Linear(cfg.bits, c)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        blocks = [CrossAttnBlock(cfg) for _ in range(cfg.depth)]
        n = cfg.blocks_per_chunk
        if cfg.block_chunks == 1:
            self.blocks = nn.ModuleList(blocks)
        else:
            self.block_chunks = nn.ModuleList(_Chunk(blocks[i * n:(i + 1) * n]) for i in range(cfg.block_chunks))
        self._flat = blocks
        self.head_nm = AdaLNBeforeHead(c, c)
        self.head = nn.Linear(c, cfg.vocab)

    # ---- precision ---------------------------------------------------------------------------
    def set_precision(self, precision: str) -> Infinity:
        """fp32, or bf16 as upstream runs it: block weights in bf16, everything else fp32."""
        self.compute_dtype = cast_blocks(self._flat, precision)
        return self

    @property
    def block_list(self) -> list[CrossAttnBlock]:
        return self._flat

    # ---- per image ---------------------------------------------------------------------------
    def condition(self, text: torch.Tensor, lengths: torch.Tensor, cfg_active: bool = True) -> Conditioning:
        """text (B, Lt, Ct5) padded T5 states, lengths (B,) valid counts. CFG appends the null text."""
        cond, ca_text = self.condition_text(text, lengths, cfg_active)
        for blk in self._flat:
            k, v = blk.ca.kv(ca_text, self.compute_dtype)
            cond.ca_k.append(k)
            cond.ca_v.append(v)
        return cond

    def condition_text(self, text: torch.Tensor, lengths: torch.Tensor,
                       cfg_active: bool = True) -> tuple[Conditioning, torch.Tensor]:
        """Everything ``condition`` computes before the blocks' text K/V, and the projected text those read
        (each block's K/V is then ``blk.ca.kv`` of it, block by block)."""
        b, lt, ct5 = text.shape
        if ct5 != self.cfg.text_channels:
            raise ValueError(f"text embeddings have {ct5} channels; this model expects {self.cfg.text_channels}")
        if lt > self.cfg.text_maxlen:
            raise ValueError(f"text of {lt} tokens exceeds the model's maximum of {self.cfg.text_maxlen}")
        dt = self.compute_dtype
        text = text.float().to(self.pos_start.device)
        if cfg_active:
            uncond = self.cfg_uncond[:lt].unsqueeze(0).expand(b, -1, -1)
            text = torch.cat((text, uncond), 0)
            lengths = torch.cat((lengths, lengths), 0)
        mask = torch.arange(lt, device=text.device)[None, :] < lengths.to(text.device)[:, None]
        t = self.text_norm(text)
        cond = self.text_proj_for_sos(t, mask, dt).float()
        ca_text = _linear(F.gelu(_linear(t, self.text_proj_for_ca[0], dt), approximate="tanh"),
                          self.text_proj_for_ca[2], dt)
        gss = self.shared_ada_lin(cond).view(-1, 1, 6, self.cfg.width)
        scale, shift = self.head_nm.ada_lin(cond).view(-1, 1, 2, self.cfg.width).unbind(2)
        sos = cond.unsqueeze(1) + self.pos_start
        return Conditioning(batch=b, sos=sos, gss=gss, head_scale=scale, head_shift=shift, text_mask=mask), ca_text

    # ---- per scale ---------------------------------------------------------------------------
    def embed_input(self, si: int, codes_in: torch.Tensor | None, cond: Conditioning) -> torch.Tensor:
        """The scale's input tokens: sos at step 0, else word_embed of the upsampled codes, plus level."""
        if si == 0:
            x = cond.sos
        else:
            x = self.word_embed(codes_in.float())
            reps = cond.gss.shape[0] // x.shape[0]
            x = x.repeat(reps, 1, 1)
        return x + self.lvl_embed.weight[si]

    def step(
        self,
        si: int,
        codes_in: torch.Tensor | None,
        cond: Conditioning,
        rope: torch.Tensor,
        past_k: list[torch.Tensor | None],
        past_v: list[torch.Tensor | None],
        cfg_scale: torch.Tensor,
        inv_tau: torch.Tensor,
        prune: PruneStep | None = None,
        restore_caches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
        collect_caches: bool = False,
        q_chunks: list[int | None] | None = None,
    ) -> StepOutput:
        """One scale: codes_in (B, L, d) (None at step 0) -> CFG-mixed logits and this step's KV entries."""
        x = self.embed_input(si, codes_in, cond)
        new_k, new_v, caches, kept = [], [], [], []
        for i, blk in enumerate(self._flat):
            p = prune if prune is not None and prune.covers(i) else None
            rc = restore_caches[i] if p is not None else None
            qc = q_chunks[i] if q_chunks is not None else None
            x, k, v, outs, idx = self.block(blk, x, cond, i, rope, past_k[i], past_v[i], p, rc, qc)
            new_k.append(k)
            new_v.append(v)
            caches.append(outs)
            if p is not None:
                kept.append(idx)
        logits = self.finish(x, cond, cfg_scale, inv_tau)
        return StepOutput(logits=logits, new_k=new_k, new_v=new_v,
                          caches=caches if collect_caches else None, kept_idx=kept if prune is not None else None)

    def finish(self, x: torch.Tensor, cond: Conditioning, cfg_scale: torch.Tensor,
               inv_tau: torch.Tensor) -> torch.Tensor:
        """The last block's output -> CFG-mixed logits: head AdaLN, head, temperature, guidance."""
        h = _ada_norm(x, cond.head_scale, cond.head_shift, self.cfg.norm_eps)
        logits = self.head(h) * inv_tau
        b = cond.batch
        if x.shape[0] != b:
            logits = cfg_scale * logits[:b] + (1 - cfg_scale) * logits[b:]
        return logits

    def block(self, blk: CrossAttnBlock, x: torch.Tensor, cond: Conditioning, i: int, rope: torch.Tensor,
              past_k: torch.Tensor | None, past_v: torch.Tensor | None, p: PruneStep | None,
              rc: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, q_chunk: int | None = None):
        """Block ``i`` at one scale: x -> x, its new K/V, its sub-layer outputs and kept indices. Reads only
        block ``i``'s weights and conditioning, so a graph can trace it once and stamp it per block."""
        dt, eps = self.compute_dtype, self.cfg.norm_eps
        g1, g2, s1, s2, b1, b2 = (blk.ada_gss.float() + cond.gss).unbind(2)

        def pick(xx: torch.Tensor, sub: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            if p is None:
                return xx, None
            idx = p.select(xx, p.kept) if p.given is None else p.given[i - p.block_range[0]][sub]
            return gather_tokens(xx, idx), idx

        def add(res: torch.Tensor, out: torch.Tensor, idx: torch.Tensor | None,
                cache: torch.Tensor | None) -> torch.Tensor:
            """The residual add of one sub-layer; a pruned one restores its full map first."""
            if idx is None:
                return res + out
            if p.restore_add is not None:
                return p.restore_add(res, out, idx, cache, p.cache_hw, p.hw)
            return res + p.restore(out, idx, cache, p.cache_hw, p.hw)

        # self-attention (RoPE rows follow the kept tokens, so they keep their 2-D positions)
        xs, idx_sa = pick(x, 0)
        table = rope
        if idx_sa is not None:
            table = rope[:, idx_sa].unsqueeze(2)  # (2, B, 1, K, hd/2)
        sa, k_new, v_new = blk.sa(_ada_norm(xs, s1, b1, eps), table, past_k, past_v, dt, q_chunk)
        sa = (sa.float() * g1).to(sa.dtype)  # upstream multiplies in place: the SA output keeps its dtype
        x = add(x, sa, idx_sa, rc[0] if rc else None)
        # cross-attention to the text
        xs, idx_ca = pick(x, 1)
        normed = F.layer_norm(xs.float(), (xs.shape[-1],), blk.ca_norm.weight.float(), blk.ca_norm.bias.float(), eps)
        ca = blk.ca(normed, cond.ca_k[i], cond.ca_v[i], cond.text_mask, dt).float()
        x = add(x, ca, idx_ca, rc[1] if rc else None)
        # feed-forward
        xs, idx_ffn = pick(x, 2)
        ffn = blk.ffn(_ada_norm(xs, s2, b2, eps), dt).float() * g2
        x = add(x, ffn, idx_ffn, rc[2] if rc else None)
        return x, k_new, v_new, (sa, ca, ffn), (idx_sa, idx_ca, idx_ffn)
