"""FastVAR on HART: upstream's kept counts, the cache step, a pruned step against a hand-computed block,
and whole generations with and without pruning."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from support.hart_generate import generate

from fastvar.export.models import hart as hart_mod
from fastvar.export.models.hart_checkpoint import build_random_hart, build_random_tokenizer
from fastvar.export.models.hart_config import PATCH_NUMS_1024, preset
from fastvar.export.models.hart_fastvar import HARTPruneStep, is_cache_step, plan, prune_step
from fastvar.export.models.hart_sampling import cfg_weight, draw_noise


def test_kept_counts_and_cache_step_are_upstreams():
    assert prune_step(48).kept == 1152 and prune_step(64).kept == 1024  # L - int(L * 0.5), L - int(L * 0.75)
    assert prune_step(48).hw == (48, 48) and prune_step(64).cache_hw == (36, 36)
    assert prune_step(36) is None and prune_step(27) is None
    assert is_cache_step(36) and not is_cache_step(48)
    steps = plan(PATCH_NUMS_1024)
    assert sorted(steps) == [12, 13] and steps[13].block_range is None  # all layers
    assert steps[12].covers(0) and steps[12].covers(23)
    with pytest.raises(ValueError, match="restores from the 36x36 step"):
        plan((1, 2, 4, 48, 64))
    with pytest.raises(ValueError, match="HART skips no step"):
        prune_step(48, {48: 1.0})
    assert plan(PATCH_NUMS_1024, {}) == {}


def _state(model, x_ins, ctx, mask, upto):
    """Condition, then run steps 0..upto-1 unpruned, collecting KV and the last step's sub-layer outputs."""
    cond = model.condition(ctx, mask)
    depth, steps = model.cfg.depth, model.cfg.num_scales
    pk, pv, last = [None] * depth, [None] * depth, None
    for si in range(upto):
        last = model.step(si, None if si == 0 else x_ins[si - 1], cond, pk, pv, cfg_weight(3.0, si, steps),
                          collect_caches=True)
        pk = [k if p is None else torch.cat((p, k)) for p, k in zip(pk, last.new_k, strict=True)]
        pv = [v if p is None else torch.cat((p, v)) for p, v in zip(pv, last.new_v, strict=True)]
    return cond, pk, pv, last.caches


@pytest.fixture(scope="module")
def small():
    cfg = dataclasses.replace(preset("hart-tiny"), depth=1, patch_nums=(1, 2, 3, 4))
    model = build_random_hart(cfg, 4)
    g = torch.Generator().manual_seed(9)
    x_ins = [torch.randn(1, p * p, cfg.cvae, generator=g) for p in cfg.patch_nums[1:]]
    ctx = torch.randn(1, 300, 1536, generator=g)
    mask = torch.zeros(1, 300, dtype=torch.bool)
    mask[0, :40] = True
    return model, x_ins, ctx, mask


def test_pruning_that_covers_no_block_is_the_unpruned_step_exactly(small):
    model, x_ins, ctx, mask = small
    with torch.no_grad():
        cond, pk, pv, caches = _state(model, x_ins, ctx, mask, 3)
        plain = model.step(3, x_ins[2], cond, pk, pv, 1.2)
        off = model.step(3, x_ins[2], cond, pk, pv, 1.2, prune=HARTPruneStep(kept=6, hw=(4, 4), cache_hw=(3, 3),
                                                                               block_range=(1, 1)),
                         restore_caches=caches)
        keep_all = model.step(3, x_ins[2], cond, pk, pv, 1.2,
                              prune=HARTPruneStep(kept=16, hw=(4, 4), cache_hw=(3, 3)), restore_caches=caches)
    assert torch.equal(off.logits, plain.logits) and torch.equal(off.new_k[0], plain.new_k[0])
    # keeping every token only reorders keys and values: equal up to summation order
    assert torch.allclose(keep_all.logits, plain.logits, atol=1e-5, rtol=1e-5)


def test_pruned_step_equals_a_hand_computed_block(small):
    """Depth 1, 4x4 step restoring from the 3x3 step, 6 of 16 tokens kept per sub-layer, CFG rows."""
    model, x_ins, ctx, mask = small
    kept, w = 6, 1.2
    with torch.no_grad():
        cond, pk, pv, caches = _state(model, x_ins, ctx, mask, 3)
        got = model.step(3, x_ins[2], cond, pk, pv, w, prune=HARTPruneStep(kept=kept, hw=(4, 4), cache_hw=(3, 3)),
                         restore_caches=caches)
        blk, cfg = model.blocks[0], model.cfg
        heads, hd = cfg.heads, cfg.head_dim

        def norm(t, weight):
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

        def keep(t):  # pivotal tokens: farthest from the row mean, score descending
            scores = ((t - t.mean(1, keepdim=True)) ** 2).sum(-1)
            return torch.argsort(scores, dim=1, descending=True, stable=True)[:, :kept]

        def take(t, idx):
            return torch.stack([t[r, idx[r]] for r in range(t.shape[0])])

        def upsample(cache):  # area resize 3x3 -> 4x4 is adaptive average pooling
            grid = cache.reshape(2, 3, 3, -1).permute(0, 3, 1, 2)
            return F.adaptive_avg_pool2d(grid, (4, 4)).permute(0, 2, 3, 1).reshape(2, 16, -1)

        def restore(out, idx, cache):
            full = upsample(cache).clone()
            for r in range(2):
                full[r, idx[r]] = out[r]
            return full

        def rot(t, cos, sin):
            half = hd // 2
            return t * cos + torch.cat((-t[..., half:], t[..., :half]), -1) * sin

        x = (model.word_embed(x_ins[2]) + model.lvl_embed.weight[3]).repeat(2, 1, 1)
        cos, sin = model.rope(3, cond)
        ia = keep(x)
        xa = norm(take(x, ia), blk.ln_wo_grad.weight)
        qkv = xa @ blk.attn.qkv_proj.weight.T + torch.cat((blk.attn.q_bias, torch.zeros(cfg.width), blk.attn.v_bias))
        q, k, v = (t.reshape(2, kept, heads, hd).transpose(1, 2) for t in qkv.split(cfg.width, -1))
        c, s = take(cos, ia)[:, None], take(sin, ia)[:, None]
        q, k = rot(q, c, s), rot(k, c, s)
        k_all = torch.cat((pk[0].permute(1, 2, 0, 3), k), 2)
        v_all = torch.cat((pv[0].permute(1, 2, 0, 3), v), 2)
        att = torch.softmax(q @ k_all.transpose(-1, -2) * (0.25 / hd ** 0.5), -1) @ v_all
        attn = att.transpose(1, 2).reshape(2, kept, cfg.width) @ blk.attn.proj.weight.T + blk.attn.proj.bias
        x = x + restore(attn, ia, caches[0][0])
        im = keep(x)
        xm = norm(take(x, im), blk.ln_wo_grad.weight)
        mlp = (F.silu(xm @ blk.ffn.gate_proj.weight.T) * (xm @ blk.ffn.up_proj.weight.T)) @ blk.ffn.down_proj.weight.T
        x = x + restore(mlp, im, caches[0][1])
        h = norm(x, model.head_nm.ln_wo_grad.weight) * (cond.head_scale + 1) + cond.head_shift
        logits = h @ model.head.weight.T + model.head.bias
        want = (1 + w) * logits[:1] - w * logits[1:]
    assert torch.equal(got.kept_idx[0][0], ia) and torch.equal(got.kept_idx[0][1], im)
    assert got.new_k[0].shape == (kept, 2, heads, hd)  # only kept tokens enter the KV cache, in score order
    assert torch.allclose(got.new_k[0].permute(1, 2, 0, 3), k, atol=1e-5)
    assert torch.allclose(got.hidden, x, atol=1e-5)
    assert torch.allclose(got.logits, want, atol=1e-4, rtol=1e-5)
    assert torch.equal(ia[0], ia[1])  # block 0's attention sees the same image inputs on both CFG rows


@pytest.fixture(scope="module")
def runs():
    """hart-tiny on the 14-step 1024 schedule, teacher-forced to the unpruned run's indices."""
    cfg = preset("hart-tiny")
    model, tok = build_random_hart(cfg, 0), build_random_tokenizer(cfg.tokenizer, 1)
    g = torch.Generator().manual_seed(5)
    ctx = torch.randn(1, 300, 1536, generator=g)
    mask = torch.zeros(1, 300, dtype=torch.bool)
    mask[0, :23] = True
    noise = draw_noise(0, cfg, 1, smooth=False)
    none = generate(model, tok, ctx, mask, noise, more_smooth=False, fastvar=False, decode=False, keep_logits=True)
    fast = generate(model, tok, ctx, mask, noise, more_smooth=False, fastvar=True, decode=False, keep_logits=True,
                    force_indices=none.indices)
    return none, fast


def test_fastvar_equals_none_before_the_first_pruned_step_and_differs_after(runs):
    none, fast = runs
    for si in range(12):
        assert torch.equal(fast.logits[si], none.logits[si]), si
    for si in (12, 13):
        a, b = fast.logits[si].flatten(), none.logits[si].flatten()
        assert not torch.equal(a, b)
        assert torch.corrcoef(torch.stack((a, b)))[0, 1] > 0.9  # pruned, not broken
    assert sorted(fast.kept) == [12, 13] and not none.kept
    for si, k in ((12, 1152), (13, 1024)):
        for attn_idx, mlp_idx in fast.kept[si]:
            assert attn_idx.shape == mlp_idx.shape == (2, k)
            assert all(len(set(row.tolist())) == k for row in attn_idx)
    # each CFG row selects its own tokens once it has attended to its own text
    assert any(not torch.equal(m[0], m[1]) for _, m in fast.kept[13])
    assert none.f_hat.shape == (1, 8, 64, 64) and [i.shape[1] for i in none.indices] == [1, *[
        p * p for p in PATCH_NUMS_1024[1:]]]


def test_schedule_none_never_enters_fastvar_code(monkeypatch):
    cfg = dataclasses.replace(preset("hart-tiny"), patch_nums=(1, 2, 3, 36, 48))
    model, tok = build_random_hart(cfg, 0), build_random_tokenizer(cfg.tokenizer, 1)

    def boom(*a, **k):
        raise AssertionError("FastVAR code ran without a prune step")

    monkeypatch.setattr(hart_mod, "gather_tokens", boom)
    noise = draw_noise(1, cfg, 1, smooth=True)
    ctx, mask = torch.randn(1, 300, 1536), torch.ones(1, 300, dtype=torch.bool)
    res = generate(model, tok, ctx, mask, noise, fastvar=False, decode=False)
    assert res.f_hat.shape == (1, 8, 48, 48) and torch.isfinite(res.f_hat).all()
