"""An independent, functional restatement of upstream's HART inference loop (written from the facts of
hart_transformer_t2i.py / basic_hart.py: its tensor layouts, its RoPE construction through a matmul and
transposes, its attention in BHLc with the KV cache concatenated on the sequence dim), run on a state dict
and held against ``HART.step``."""

import dataclasses
import math

import torch
import torch.nn.functional as F

from fastvar.export.models.hart_checkpoint import build_random_hart
from fastvar.export.models.hart_config import preset
from fastvar.export.models.hart_sampling import cfg_weight


def _rms(x, w, eps=1e-6):
    x = x.float()
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _grid_ids(pn, largest):
    ys, xs = torch.meshgrid(torch.arange(pn), torch.arange(pn), indexing="ij")
    return (torch.stack((ys, xs), -1) / pn * largest).reshape(-1, 2)


def _rope_2d(pos, hd):
    """Upstream's LlamaRotaryEmbedding: (bs, hd/4) freqs repeated for 2 axes, matmul with positions."""
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 4, dtype=torch.int64).float() / hd))
    bs = pos.shape[0]
    inv_e = inv[None, :, None, None].expand(bs, -1, 1, 1).repeat(1, 1, 1, 2).permute(0, 3, 1, 2)
    pos_e = pos[:, None, :].float().permute(0, 3, 1, 2)
    freqs = (inv_e @ pos_e).transpose(2, 3)
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos().transpose(2, 1), emb.sin().transpose(2, 1)
    return cos.reshape(bs, cos.shape[1], -1), sin.reshape(bs, sin.shape[1], -1)


def _rope_1d(pos, hd):
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = (inv[None, :, None].expand(pos.shape[0], -1, 1) @ pos[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), -1)
    return emb.cos(), emb.sin()


def _rot(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos[:, None] + torch.cat((-x[..., h:], x[..., :h]), -1) * sin[:, None]


def mirror_logits(sd, cfg, context, ctx_pos, x_ins, cfg_scale):
    """Per-step CFG-mixed logits of upstream's loop, teacher-forced on the next-token inputs x_ins."""
    c, hd, nh = cfg.width, cfg.head_dim, cfg.heads
    b = context.shape[0]
    both = torch.cat((context, torch.zeros_like(context)))
    sos = F.linear(both, sd["context_embed.weight"], sd["context_embed.bias"])
    pos_ids = torch.cat((ctx_pos, torch.zeros_like(ctx_pos)))
    cond_bd = sos.max(1, keepdim=True).values
    scale, shift = F.linear(F.silu(cond_bd), sd["head_nm.ada_lin.1.weight"],
                            sd["head_nm.ada_lin.1.bias"]).view(-1, 1, 2, c).unbind(2)
    lvl = sd["lvl_embed.weight"]
    cache_k, cache_v = [None] * cfg.depth, [None] * cfg.depth
    out = []
    for si, pn in enumerate(cfg.patch_nums):
        if si == 0:
            x = sos + lvl[0]
            cos, sin = _rope_1d(pos_ids, hd)
        else:
            x = (F.linear(x_ins[si - 1], sd["word_embed.weight"], sd["word_embed.bias"]) + lvl[si]).repeat(2, 1, 1)
            ids = _grid_ids(pn, cfg.patch_nums[-1])[None].repeat(2 * b, 1, 1) + pos_ids[:, -1][:, None, None]
            cos, sin = _rope_2d(ids, hd)
        for i in range(cfg.depth):
            p = f"blocks.{i}."
            h = _rms(x, sd[p + "ln_wo_grad.weight"])
            bias = torch.cat((sd[p + "attn.q_bias"], sd[p + "attn.zero_k_bias"], sd[p + "attn.v_bias"]))
            qkv = F.linear(h, sd[p + "attn.qkv_proj.weight"], bias).view(2 * b, -1, 3, nh, hd)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            q, k = _rot(q, cos, sin), _rot(k, cos, sin)
            if cache_k[i] is not None:
                k, v = torch.cat((cache_k[i], k), 2), torch.cat((cache_v[i], v), 2)
            cache_k[i], cache_v[i] = k, v
            att = torch.softmax(q @ k.transpose(-1, -2) * (0.25 / math.sqrt(hd)), -1) @ v
            att = att.transpose(1, 2).reshape(2 * b, -1, c)
            x = x + F.linear(att, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
            h = _rms(x, sd[p + "ln_wo_grad.weight"])
            gate = F.silu(F.linear(h, sd[p + "ffn.gate_proj.weight"])) * F.linear(h, sd[p + "ffn.up_proj.weight"])
            x = x + F.linear(gate, sd[p + "ffn.down_proj.weight"])
        h = _rms(x, sd["head_nm.ln_wo_grad.weight"]) * (scale + 1) + shift
        logits = F.linear(h, sd["head.weight"], sd["head.bias"])
        t = cfg_scale * min(si, cfg.num_scales - 2) / (cfg.num_scales - 1)
        logits = (1 + t) * logits[:b] - t * logits[b:]
        out.append(logits[:, [-1]] if si == 0 else logits)
    return out


def test_steps_match_the_upstream_loop_restated():
    cfg = dataclasses.replace(preset("hart-tiny"), patch_nums=(1, 2, 3, 5, 7))
    model = build_random_hart(cfg, 11)
    g = torch.Generator().manual_seed(4)
    ctx = torch.randn(2, 300, 1536, generator=g)
    mask = torch.zeros(2, 300, dtype=torch.bool)
    mask[0, :9] = True
    mask[1, :250] = True
    ctx_pos = torch.cumsum(mask.long(), 1) - 1
    x_ins = [torch.randn(2, p * p, cfg.cvae, generator=g) for p in cfg.patch_nums[1:]]
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = mirror_logits(sd, cfg, ctx, ctx_pos, x_ins, 4.5)
        cond = model.condition(ctx, mask)
        pk, pv = [None] * cfg.depth, [None] * cfg.depth
        for si in range(cfg.num_scales):
            o = model.step(si, None if si == 0 else x_ins[si - 1], cond, pk, pv, cfg_weight(4.5, si, cfg.num_scales))
            pk = [k if p is None else torch.cat((p, k)) for p, k in zip(pk, o.new_k, strict=True)]
            pv = [v if p is None else torch.cat((p, v)) for p, v in zip(pv, o.new_v, strict=True)]
            err = (o.logits - ref[si]).abs().max() / ref[si].abs().max()
            assert err < 1e-5, f"step {si}: {err:.2e}"
