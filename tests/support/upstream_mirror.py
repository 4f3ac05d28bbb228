"""An independent, functional transcription of upstream Infinity's fp32 inference math for tests.

It reads the raw upstream state dict (not our modules) and follows upstream's structure: the RoPE
table built for the whole schedule, padded to 128 and sliced at the scale's start; module-style KV
caching by concatenation in (B, H, L, hd); the level embedding added to the scale's tokens before
the first block; per-prompt cross-attention. No FastVAR: it is the "no FastVAR code path" reference.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _lin(x, sd, name, bias=True):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"] if bias else None)


def _rope_cache(head_dim, hws, final_hw, pad=128):
    half = head_dim // 2
    inv = 1.0 / (10000.0 ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
    t = torch.arange(128, dtype=torch.int64).float()
    f = torch.outer(t, inv)
    grid = torch.cat([f[:, None, :].expand(-1, 128, -1), f[None, :, :].expand(128, -1, -1)], -1)
    grid = torch.stack([grid.cos(), grid.sin()])
    uh, uw = final_hw
    parts = []
    for h, w in hws:
        ij = torch.stack([(torch.arange(h) * (uh / h)).reshape(h, 1).expand(h, w),
                          (torch.arange(w) * (uw / w)).reshape(1, w).expand(h, w)], -1).round().int().reshape(-1, 2)
        parts.append(grid[:, ij[:, 0], ij[:, 1], :])
    cat = torch.cat(parts, 1)
    if cat.shape[1] % pad:
        cat = torch.cat([cat, torch.zeros(2, pad - cat.shape[1] % pad, half)], 1)
    return cat


def _rope(q, k, cache, start):
    qk = torch.stack((q, k))
    c = cache[:, None, None, None, start:start + qk.shape[3]]
    qk = qk.reshape(*qk.shape[:-1], -1, 2)
    qk = torch.stack([c[0] * qk[..., 0] - c[1] * qk[..., 1], c[1] * qk[..., 0] + c[0] * qk[..., 1]], -1)
    return qk.reshape(*qk.shape[:-2], -1).unbind(0)


def mirror_logits(sd, depth, heads, blocks_per_chunk, hws, final_hw, text, forced_bits, cfg, tau, bits):
    """Teacher-forced per-scale CFG-mixed logits of upstream's math (batch 1, CFG on)."""
    C = sd["pos_start"].shape[-1]
    hd = C // heads
    L = text.shape[0]
    kv_text = torch.cat([text, sd["cfg_uncond"][:L]])  # packed: [cond tokens, uncond tokens]
    t = kv_text * torch.rsqrt(kv_text.pow(2).mean(-1, keepdim=True) + 1e-6) * sd["text_norm.weight"]
    # attentive pool, one prompt at a time (varlen)
    mq = sd["text_proj_for_sos.ca.mat_q"]
    hp, hdp = mq.shape[1], mq.shape[2]
    kvb = torch.cat([sd["text_proj_for_sos.ca.zero_k_bias"], sd["text_proj_for_sos.ca.v_bias"]])
    kvp = F.linear(t, sd["text_proj_for_sos.ca.mat_kv.weight"], kvb).view(2 * L, 2, hp, hdp)
    pooled = []
    for r in range(2):
        k = kvp[r * L:(r + 1) * L, 0].transpose(0, 1)
        v = kvp[r * L:(r + 1) * L, 1].transpose(0, 1)
        a = torch.softmax(mq[0].unsqueeze(1) @ k.transpose(1, 2) / math.sqrt(hdp), -1) @ v
        pooled.append(a.reshape(1, -1))
    cond = _lin(torch.cat(pooled), sd, "text_proj_for_sos.ca.proj")
    ca_text = _lin(F.gelu(_lin(t, sd, "text_proj_for_ca.0"), approximate="tanh"), sd, "text_proj_for_ca.2")
    gss = _lin(F.silu(cond), sd, "shared_ada_lin.1").view(2, 1, 6, C)
    hs, hb = _lin(F.silu(cond), sd, "head_nm.ada_lin.1").view(2, 1, 2, C).unbind(2)
    rope = _rope_cache(hd, hws, final_hw)
    x = cond.unsqueeze(1) + sd["pos_start"]
    cached = [None] * depth
    out, start, summed = {}, 0, None
    d = bits
    for si, (h, w) in enumerate(hws):
        x = x + sd["lvl_embed.weight"][si]
        for i in range(depth):
            p = f"block_chunks.{i // blocks_per_chunk}.module.{i % blocks_per_chunk}."
            g1, g2, s1, s2, b1, b2 = (sd[p + "ada_gss"] + gss).unbind(2)
            hn = F.layer_norm(x, (C,), eps=1e-6) * (s1 + 1) + b1
            qb = torch.cat([sd[p + "sa.q_bias"], sd[p + "sa.zero_k_bias"], sd[p + "sa.v_bias"]])
            qkv = F.linear(hn, sd[p + "sa.mat_qkv.weight"], qb).view(2, h * w, 3, heads, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            sm = sd[p + "sa.scale_mul_1H11"].clamp_max(math.log(100)).exp()
            q = F.normalize(q, dim=-1, eps=1e-12) * sm
            k = F.normalize(k, dim=-1, eps=1e-12)
            q, k = _rope(q, k, rope, start)
            if cached[i] is not None:
                k, v = torch.cat([cached[i][0], k], 2), torch.cat([cached[i][1], v], 2)
            cached[i] = (k, v)
            o = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).reshape(2, h * w, C)
            x = x + _lin(o, sd, p + "sa.proj") * g1
            xq = F.layer_norm(x, (C,), sd[p + "ca_norm.weight"], sd[p + "ca_norm.bias"], 1e-6)
            qc = _lin(xq, sd, p + "ca.mat_q").view(2, h * w, heads, hd).transpose(1, 2)
            kb = torch.cat([sd[p + "ca.zero_k_bias"], sd[p + "ca.v_bias"]])
            kvc = F.linear(ca_text, sd[p + "ca.mat_kv.weight"], kb).view(2 * L, 2, heads, hd)
            rows = []
            for r in range(2):
                kc = kvc[r * L:(r + 1) * L, 0].transpose(0, 1)
                vc = kvc[r * L:(r + 1) * L, 1].transpose(0, 1)
                rows.append(F.scaled_dot_product_attention(qc[r:r + 1], kc[None], vc[None]))
            oc = torch.cat(rows).transpose(1, 2).reshape(2, h * w, C)
            x = x + _lin(oc, sd, p + "ca.proj")
            hf = F.layer_norm(x, (C,), eps=1e-6) * (s2 + 1) + b2
            x = x + _lin(F.gelu(_lin(hf, sd, p + "ffn.fc1"), approximate="tanh"), sd, p + "ffn.fc2") * g2
        logits = _lin(F.layer_norm(x, (C,), eps=1e-6) * (hs + 1) + hb, sd, "head") * (1 / tau)
        out[si] = cfg * logits[:1] + (1 - cfg) * logits[1:]
        start += h * w
        b = torch.from_numpy(forced_bits[f"scale_{si:02d}"]).float()  # (1, h, w, d)
        s = 1 / np.sqrt(d)
        codes = F.normalize(b * s * 2 - s, dim=-1).permute(0, 3, 1, 2).unsqueeze(2)
        if si + 1 < len(hws):
            up = F.interpolate(codes, size=(1, *hws[-1]), mode="trilinear")
            summed = up if summed is None else summed + up
            nxt = F.interpolate(summed, size=(1, *hws[si + 1]), mode="trilinear").squeeze(-3)
            nxt = nxt.reshape(1, d, -1).permute(0, 2, 1)
            x = _lin(nxt, sd, "word_embed").repeat(2, 1, 1)
    return out
