"""The HART transformer reference: presets, upstream's RoPE and position ids, the KV-cached step against
the whole sequence recomputed with upstream's training mask, and determinism."""

import dataclasses

import pytest
import torch

from fastvar.export.models.hart import HART
from fastvar.export.models.hart_checkpoint import build_random_hart
from fastvar.export.models.hart_config import (
    PATCH_NUMS_1024,
    from_hf_config,
    llama_mlp_hidden,
    preset,
    unsupported,
)
from fastvar.export.models.hart_rope import (
    apply_rope,
    context_position_ids,
    image_positions,
    rope_1d,
    rope_2d,
    scale_rope,
)
from fastvar.export.models.hart_sampling import cfg_weight

SHORT = (1, 2, 3, 4, 6)


def _text(cfg, batch=1, valid=(17,), seed=5):
    ctx = torch.randn((batch, cfg.context_tokens, cfg.context_dim), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(batch, cfg.context_tokens, dtype=torch.bool)
    for b, n in enumerate(valid):
        mask[b, :n] = True
    return ctx, mask


@pytest.fixture(scope="module")
def short_model():
    cfg = dataclasses.replace(preset("hart-tiny"), patch_nums=SHORT)
    return build_random_hart(cfg, 0)


def _run_steps(model, cond, x_ins, cfg=4.5):
    depth, steps = model.cfg.depth, model.cfg.num_scales
    pk, pv, outs = [None] * depth, [None] * depth, []
    for si in range(steps):
        o = model.step(si, None if si == 0 else x_ins[si - 1], cond, pk, pv, cfg_weight(cfg, si, steps))
        pk = [k if p is None else torch.cat((p, k)) for p, k in zip(pk, o.new_k, strict=True)]
        pv = [v if p is None else torch.cat((p, v)) for p, v in zip(pv, o.new_v, strict=True)]
        outs.append(o)
    return outs


def test_presets_follow_upstream_sizes():
    big = preset("hart-0.7b")
    assert (big.depth, big.width, big.heads, big.head_dim) == (24, 1536, 24, 64)
    assert big.mlp_hidden == llama_mlp_hidden(1536) == 4096
    assert (big.context_tokens, big.context_dim, big.vocab, big.cvae) == (300, 1536, 4096, 32)
    assert big.patch_nums == PATCH_NUMS_1024 and big.num_scales == 14 and big.image_tokens == 9451
    assert (big.diff_width, big.diff_depth, big.diff_steps) == (1024, 6, 8)
    assert big.tokenizer.stride == 16
    with torch.device("meta"):
        model = HART(big)
    total = sum(p.numel() for p in model.parameters())
    diff = sum(p.numel() for p in model.diffloss.parameters())
    assert 36.0e6 < diff < 37.0e6  # the paper's 37M residual diffusion head
    assert 0.69e9 < total - diff < 0.70e9  # "0.7B" autoregressive transformer
    tiny = preset("hart-tiny")
    assert tiny.context_tokens == 300 and tiny.context_dim == 1536 and tiny.patch_nums == PATCH_NUMS_1024
    with pytest.raises(ValueError, match="known HART models: hart, hart-0.7b, hart-tiny"):
        preset("hart-9b")


def test_state_dict_keys_are_upstreams():
    sd = HART(preset("hart-tiny")).state_dict()
    for key in ("context_embed.weight", "word_embed.bias", "lvl_embed.weight", "blocks.1.attn.qkv_proj.weight",
                "blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "blocks.0.attn.zero_k_bias", "blocks.0.attn.proj.bias",
                "blocks.0.ffn.gate_proj.weight", "blocks.0.ffn.up_proj.weight", "blocks.0.ffn.down_proj.weight",
                "blocks.0.ln_wo_grad.weight", "head_nm.ln_wo_grad.weight", "head_nm.ada_lin.1.weight", "head.bias",
                "decoder_norm.weight", "diffloss.net.time_embed.mlp.0.weight", "diffloss.net.cond_embed.weight",
                "diffloss.net.input_proj.bias", "diffloss.net.res_blocks.1.adaLN_modulation.1.weight",
                "diffloss.net.res_blocks.0.in_ln.bias", "diffloss.net.final_layer.linear.weight",
                "diffloss.net.final_layer.adaLN_modulation.1.bias"):
        assert key in sd, key
    assert not any("bias" in k for k in sd if ".ffn." in k)  # SwiGLU without biases
    assert "blocks.0.attn.k_bias" not in sd and not any(k.startswith("pos_") for k in sd)
    switched = HART(dataclasses.replace(preset("hart-tiny"), use_context_norm=True, use_timestep_embed=True,
                                        attn_l2_norm=True)).state_dict()
    assert {"context_norm.weight", "lvl_embed.mlp.2.bias", "blocks.0.attn.scale_mul_1H11"} <= set(switched)


def test_hf_config_round_trip_and_unsupported_branches():
    cfg = preset("hart-tiny")
    hf = cfg.to_hf_config()
    assert hf["model_type"] == "hart_transformer_t2i" and hf["num_sampling_steps"] == "8"
    back = from_hf_config(hf, cfg.tokenizer, name=cfg.name)
    assert back == cfg
    assert unsupported(hf) == []
    assert unsupported({**hf, "disable_aln": False}) == ["disable_aln=False (built: True)"]
    assert "attn_type='gpt2' (built: 'llama')" in unsupported({k: v for k, v in hf.items() if k != "attn_type"})


def test_position_ids_and_rope_tables_follow_upstream():
    right = torch.tensor([[True, True, True, False, False]])
    left = torch.tensor([[False, False, True, True, True]])
    assert context_position_ids(right).tolist() == [[0, 1, 2, 2, 2]]
    assert context_position_ids(left).tolist() == [[-1, -1, 0, 1, 2]]
    pos = image_positions(3, 64)
    assert torch.allclose(pos[:, 0], torch.tensor([0.0, 0, 0, 64 / 3, 64 / 3, 64 / 3, 128 / 3, 128 / 3, 128 / 3]))
    assert torch.allclose(pos[:3, 1], torch.tensor([0.0, 64 / 3, 128 / 3]))
    hd = 16
    # 2-D layout along hd: [row, row, column, column] quarters with inverse frequencies 10000^(-4i/hd)
    cos, sin = rope_2d(torch.tensor([[[5.0, 7.0]]]), hd)
    inv = 1.0 / 10000 ** (torch.arange(0, hd, 4).float() / hd)
    want = torch.cat((5 * inv, 5 * inv, 7 * inv, 7 * inv))
    assert torch.allclose(cos[0, 0], want.cos()) and torch.allclose(sin[0, 0], want.sin())
    # 1-D: standard Llama halves with 10000^(-2i/hd); rotation pairs channel i with i + hd/2
    c1, s1 = rope_1d(torch.tensor([[3]]), hd)
    x = torch.randn(1, 1, 1, hd)
    y = apply_rope(x, c1, s1)
    inv1 = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    ang = 3 * inv1
    assert torch.allclose(y[..., : hd // 2], a * ang.cos() - b * ang.sin(), atol=1e-6)
    assert torch.allclose(y[..., hd // 2:], b * ang.cos() + a * ang.sin(), atol=1e-6)
    # image positions are offset by each row's last text position id
    c2, _ = scale_rope(3, 64, torch.tensor([10, 0]), hd)
    c_ref, _ = rope_2d((image_positions(3, 64) + 10)[None], hd)
    assert torch.equal(c2[0], c_ref[0])


def test_condition_builds_cfg_rows_like_upstream(short_model):
    cfg = short_model.cfg
    ctx, mask = _text(cfg, batch=2, valid=(17, 300))
    with torch.no_grad():
        cond = short_model.condition(ctx, mask)
    assert cond.batch == 2 and cond.rows == 4
    assert cond.last_pos.tolist() == [16, 299, 0, 0]  # uncond rows: position ids zero
    # uncond rows are the projection of all-zero text: the bias in every position
    assert torch.allclose(cond.sos[2:], short_model.context_embed.bias.expand(2, 300, -1))
    pooled = cond.sos.max(1, keepdim=True).values  # max over all 300 tokens, padding included
    scale, shift = short_model.head_nm.ada_lin(pooled).view(-1, 1, 2, cfg.width).unbind(2)
    assert torch.equal(cond.head_scale, scale) and torch.equal(cond.head_shift, shift)
    with pytest.raises(ValueError, match="exactly 300"):
        short_model.condition(ctx[:, :200], mask[:, :200])
    with pytest.raises(ValueError, match="expects 1536"):
        short_model.condition(ctx[..., :64], mask)


@pytest.mark.parametrize("switches", [{}, {"use_context_norm": True, "use_timestep_embed": True, "attn_l2_norm": True}],
                         ids=["released", "optional-branches"])
def test_kv_cached_steps_equal_the_whole_sequence_with_upstreams_mask(short_model, switches):
    if switches:
        short_model = build_random_hart(dataclasses.replace(short_model.cfg, **switches), 3)
    cfg = short_model.cfg
    ctx, mask = _text(cfg, batch=2, valid=(17, 120))
    g = torch.Generator().manual_seed(1)
    x_ins = [torch.randn(2, p * p, cfg.cvae, generator=g) for p in cfg.patch_nums[1:]]
    with torch.no_grad():
        cond = short_model.condition(ctx, mask)
        outs = _run_steps(short_model, cond, x_ins)
        full = short_model.teacher_forced(cond, x_ins, [cfg_weight(4.5, si, cfg.num_scales)
                                                        for si in range(cfg.num_scales)])
    assert [o.logits.shape for o in outs] == [(2, 1, cfg.vocab)] + [(2, p * p, cfg.vocab) for p in cfg.patch_nums[1:]]
    assert outs[0].hidden.shape == (4, 300, cfg.width) and outs[-1].hidden.shape == (4, 36, cfg.width)
    assert outs[1].new_k[0].shape == (4, 4, cfg.heads, cfg.head_dim)  # sequence-major (L, B2, H, hd)
    for si, (o, ref) in enumerate(zip(outs, full, strict=True)):
        err = (o.logits - ref).abs().max() / ref.abs().max()
        assert err < 1e-5, f"step {si}: {err:.2e}"
    # the text rows differ, so their logits do (the image inputs are shared by cond and uncond rows)
    assert not torch.allclose(outs[-1].logits[0], outs[-1].logits[1])


def test_steps_are_deterministic_and_guidance_ramps(short_model):
    cfg = short_model.cfg
    ctx, mask = _text(cfg)
    x_ins = [torch.randn(1, p * p, cfg.cvae, generator=torch.Generator().manual_seed(p)) for p in cfg.patch_nums[1:]]
    with torch.no_grad():
        cond = short_model.condition(ctx, mask)
        a, b = _run_steps(short_model, cond, x_ins), _run_steps(short_model, cond, x_ins)
        assert all(torch.equal(x.logits, y.logits) for x, y in zip(a, b, strict=True))
        # guidance weight 0 gives the conditional rows' logits (the head on one row vs two: BLAS rounding)
        pk = [torch.cat(ks) for ks in zip(*(o.new_k for o in a[:2]), strict=True)]
        pv = [torch.cat(vs) for vs in zip(*(o.new_v for o in a[:2]), strict=True)]
        zero = short_model.step(2, x_ins[1], cond, pk, pv, 0.0)
        plain = short_model.logits(zero.hidden[:1], cond)
        assert torch.allclose(zero.logits, plain, rtol=1e-6, atol=1e-5)
        w = 1.7
        mixed = short_model.step(2, x_ins[1], cond, pk, pv, w).logits
        both = short_model.logits(zero.hidden, cond)
        assert torch.allclose(mixed, (1 + w) * both[:1] - w * both[1:])
