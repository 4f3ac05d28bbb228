"""HART's sampling rules from explicit noise, the residual diffusion head and the tokenizer's decode path."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastvar.export.models.hart_checkpoint import build_random_tokenizer, random_init_hart
from fastvar.export.models.hart_config import HARTTokenizerConfig, preset
from fastvar.export.models.hart_diffusion import DiffusionHead, cosine_schedule, respaced_timesteps
from fastvar.export.models.hart_sampling import (
    cfg_weight,
    draw_noise,
    filter_logits,
    gumbel_soft_embedding,
    gumbel_tau,
    sample_indices,
    top_k_for,
)
from fastvar.export.models.hart_tokenizer import HARTTokenizer


def test_guidance_ramps_and_the_last_step_reuses_the_previous_ratio():
    assert cfg_weight(4.5, 0, 14) == 0.0
    assert cfg_weight(4.5, 7, 14) == pytest.approx(4.5 * 7 / 13)
    assert cfg_weight(4.5, 12, 14) == cfg_weight(4.5, 13, 14) == pytest.approx(4.5 * 12 / 13)
    assert [top_k_for(si) for si in range(14)] == [600] * 7 + [300] * 7
    assert gumbel_tau(0.0) == pytest.approx(0.27) and gumbel_tau(1.0) == pytest.approx(0.27 * 0.05)
    assert gumbel_tau(1.5) == 0.005


def test_top_k_keeps_ties_and_top_p_drops_the_low_tail():
    logits = torch.tensor([[[3.0, 1.0, 2.0, 2.0, 0.0]]])
    kept = filter_logits(logits, top_k=2)
    assert torch.isinf(kept).tolist() == [[[False, True, False, False, True]]]  # the tie at the k-th value stays
    p = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().view(1, 1, 4)
    # drops the smallest tokens while their cumulative probability stays <= 1 - top_p
    assert torch.isinf(filter_logits(p, 0, top_p=0.85)).tolist() == [[[False, False, False, True]]]
    assert torch.isinf(filter_logits(p, 0, top_p=0.75)).tolist() == [[[False, False, True, True]]]
    assert not torch.isinf(filter_logits(p, 0, top_p=0.0)).any()


def test_indices_come_from_the_filtered_distribution_by_inverse_cdf():
    logits = torch.tensor([2.0, -1.0, 0.5, 1.0, -3.0]).view(1, 1, 5).expand(1, 20000, 5)
    filtered = filter_logits(logits, top_k=3)
    u = torch.rand((1, 20000), generator=torch.Generator().manual_seed(0))
    idx = sample_indices(filtered, u)
    assert set(idx.unique().tolist()) <= {0, 2, 3}
    want = filtered[0, 0].softmax(-1)
    freq = torch.bincount(idx.flatten(), minlength=5).float() / idx.numel()
    assert torch.allclose(freq, want, atol=0.01)
    probs = want.cumsum(0)
    edge = torch.tensor([[0.0, probs[0] - 1e-4, probs[0] + 1e-4, 0.999999]])
    assert sample_indices(filtered[:, :4], edge).tolist() == [[0, 0, 2, 3]]  # monotone in u, never a dropped index
    with pytest.raises(ValueError, match="does not match the tokens"):
        sample_indices(filtered, u[:, :3])


def test_gumbel_soft_embedding_is_upstreams_formula():
    g = torch.Generator().manual_seed(3)
    logits = filter_logits(torch.randn(2, 5, 16, generator=g), top_k=6)
    u = torch.rand(2, 5, 16, generator=g)
    book = torch.randn(16, 4, generator=g)
    ratio = 0.4
    got = gumbel_soft_embedding(logits, ratio, u, book)
    gumbel = -torch.log(-torch.log(u))
    want = torch.softmax((logits * (1 + ratio) + gumbel) / max(0.27 * (1 - 0.95 * ratio), 0.005), -1) @ book
    assert torch.allclose(got, want, atol=1e-6)
    weights = torch.softmax((logits * (1 + ratio) + gumbel) / gumbel_tau(ratio), -1)
    assert (weights[torch.isinf(logits)] == 0).all()  # dropped tokens never enter the mixture


def test_noise_is_seeded_and_shaped_per_step():
    cfg = preset("hart-tiny")
    a, b = draw_noise(7, cfg, 2), draw_noise(7, cfg, 2)
    assert [t.shape[1] for t in a.tokens] == [1] + [p * p for p in cfg.patch_nums[1:]]
    assert a.gumbel[5].shape == (2, 49, cfg.vocab) and a.diffusion.shape == (8, 2 * 4096, cfg.cvae)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert draw_noise(7, cfg, 2, smooth=False).gumbel is None


# ---- diffusion head ------------------------------------------------------------------------------

def test_respacing_and_schedule_constants():
    assert respaced_timesteps(1000, 8) == [0, 143, 285, 428, 571, 714, 856, 999]
    s = cosine_schedule(8)
    assert s.timestep_map.tolist() == [0, 143, 285, 428, 571, 714, 856, 999]
    # the least noisy step maps straight to the x0 estimate: coef1 = 1, coef2 = 0
    assert s.coef1[0].item() == pytest.approx(1.0) and s.coef2[0].item() == pytest.approx(0.0, abs=1e-7)
    assert (s.max_log >= s.min_log - 1e-6).all()
    alpha_bar = math.cos((0 + 0.008) / 1.008 * math.pi / 2) ** 2
    beta0 = 1 - math.cos((1 / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / alpha_bar
    assert s.max_log[0].item() == pytest.approx(math.log(beta0), rel=1e-5)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    h = DiffusionHead(cvae=4, z_channels=16, width=32, depth=2, steps=8)
    return random_init_hart(h, 4).eval()


def _hand_sample(head, z, noise, w):
    """Upstream's p_sample_loop with forward_with_cfg, written out with the schedule's constants."""
    s, n = head.schedule, noise.shape[1]
    x = noise[0]
    for j, i in enumerate(range(7, -1, -1)):
        t = torch.full((2 * n,), int(s.timestep_map[i]))
        out = head.net(torch.cat((x, x)), t, z)
        eps = out[:n, :4] * (1 + w) - w * out[n:, :4]
        frac = (out[:n, 4:] + 1) / 2
        logvar = frac * s.max_log[i] + (1 - frac) * s.min_log[i]
        x0 = torch.clamp(s.sqrt_recip_ac[i] * x - s.sqrt_recipm1_ac[i] * eps, -1, 1)
        mean = s.coef1[i] * x0 + s.coef2[i] * x
        x = mean + (float(i != 0)) * torch.exp(0.5 * logvar) * (noise[j + 1] if i else 0)
    return x * 0.6


def test_diffusion_sample_is_the_iddpm_loop_with_shared_guidance(head):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 16, generator=g)
    noise = torch.randn(8, 3, 4, generator=g)
    with torch.no_grad():
        got = head.sample(z, noise, guidance=2.5)
        assert torch.allclose(got, _hand_sample(head, z, noise, 2.5), atol=1e-6)
        assert torch.equal(got, head.sample(z, noise, guidance=2.5))
        # upstream turns guidance off at exactly 1.0: the conditional rows alone
        assert torch.equal(head.sample(z, noise, guidance=1.0), head.sample(z[:3], noise, guidance=None))
    with pytest.raises(ValueError, match="is not \\(steps=8"):
        head.sample(z, noise[:5], guidance=2.5)


# ---- tokenizer decode path -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return build_random_tokenizer(preset("hart-tiny").tokenizer, 1)


def test_phi_choice_follows_upstreams_ticks(tok):
    phis = tok.quantize.quant_resi
    assert np.allclose(phis.ticks, np.linspace(1 / 12, 11 / 12, 4))
    assert [phis.index(si / 13) for si in range(13)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]


def test_next_input_is_bicubic_up_phi_then_area_down(tok):
    pns = (1, 2, 3, 4, 8)
    g = torch.Generator().manual_seed(2)
    f_hat = torch.randn(1, 8, 8, 8, generator=g)
    h = torch.randn(1, 8, 3, 3, generator=g)
    with torch.no_grad():
        new, nxt = tok.next_input(2, f_hat, h, pns)
        up = F.interpolate(h, size=(8, 8), mode="bicubic", align_corners=False)
        conv = tok.quantize.quant_resi.qresi_ls[tok.quantize.quant_resi.index(2 / 4)]
        want = f_hat + 0.5 * up + 0.5 * F.conv2d(up, conv.weight, conv.bias, padding=1)
        assert torch.allclose(new, want, atol=1e-6)
        down = F.adaptive_avg_pool2d(want, (4, 4))  # area resize downwards = adaptive average pooling
        assert torch.allclose(nxt, down.flatten(2).transpose(1, 2), atol=1e-6)
        last = torch.randn(1, 8, 8, 8, generator=g)
        done, _ = tok.next_input(4, new, last, pns)
        assert torch.equal(done, new + last)  # the last step: no resize, no Phi


def test_codes_decode_to_an_image_in_unit_range(tok):
    idx = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(0))
    vecs = tok.embed(idx)
    assert torch.equal(vecs[0, 3], tok.codebook[idx[0, 3]])
    fmap = tok.tokens_to_map(vecs, 4)
    assert torch.equal(fmap[0, :, 0, 3], vecs[0, 3])  # row-major tokens
    with torch.no_grad():
        img = tok.to_image(fmap)
    assert img.shape == (1, 3, 64, 64) and img.min() >= 0 and img.max() <= 1 and img.std() > 0.01


def test_decoder_layout_is_vars_vq_f16():
    with torch.device("meta"):
        full = HARTTokenizer(HARTTokenizerConfig())  # upstream defaults: ch 160, (1, 1, 2, 2, 4), V 4096, Cvae 32
    assert 64.6e6 < sum(p.numel() for p in full.decoder.parameters()) < 64.7e6
    keys = set(HARTTokenizer(preset("hart-tiny").tokenizer).state_dict())
    assert {f"decoder.up.4.attn.{j}.qkv.weight" for j in range(3)} <= keys  # attention only at the coarsest level
    assert not any(k.startswith("decoder.up.3.attn") for k in keys)
    assert {f"decoder.up.{lv}.upsample.conv.weight" for lv in (1, 2, 3, 4)} <= keys
    assert not any(k.startswith("decoder.up.0.upsample") for k in keys)
    shortcuts = {k.split(".nin")[0] for k in keys if ".nin_shortcut." in k}
    assert shortcuts == {"decoder.up.3.block.0", "decoder.up.1.block.0"}  # where the channel count changes
    assert {"post_quant_conv.weight", "quantize.embedding.weight", "quantize.quant_resi.qresi_ls.3.bias"} <= keys
