"""Preset geometry against upstream's released sizes, and the 8B's spatial-patchify code path."""

import dataclasses

import pytest
import torch

from fastvar.export.models.bsq_vae import bits_to_codes, next_input
from fastvar.export.models.checkpoint import build_random_infinity, build_random_vae
from fastvar.export.models.infinity import Infinity
from fastvar.export.models.infinity_config import VAEConfig, preset
from fastvar.export.schedules import prune_plan, scale_schedule
from fastvar.runtime.backends.torch_ref import TorchBackend
from fastvar.runtime.chain import Geometry, SamplingSettings, generate


@pytest.mark.parametrize("name,values,keys", [
    ("infinity-2b", 2_204_697_152, 694),  # = the 8.82 GB fp32 infinity_2b_reg.pth
    ("infinity-8b", 8_376_082_128, 862),  # = the 33.5 GB of infinity_8b_weights/
])
def test_preset_sizes_match_released_checkpoints(name, values, keys):
    with torch.device("meta"):
        sd = Infinity(preset(name)).state_dict()
    assert len(sd) == keys
    assert sum(t.numel() for t in sd.values()) == values


def test_8b_preset_is_patchified_56_bits():
    c = preset("infinity-8b")
    assert c.spatial_patchify and c.bits == 56 and c.vocab == 112 and c.vae.stride == 8
    assert c.block_prefix(7) == "block_chunks.1.module.2."
    assert preset("infinity").name == "infinity-2b"
    with pytest.raises(ValueError, match="known Infinity models"):
        preset("infinity-3b")


def test_patchify_codes_roundtrip():
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (2, 3, 5, 56), generator=g, dtype=torch.uint8)
    codes = bits_to_codes(bits, 14, patchify=True)
    assert codes.shape == (2, 14, 1, 6, 10)
    tokens = next_input(codes, (6, 10), patchify=True)  # same grid: interpolation is the identity
    s = 1 / 14 ** 0.5
    assert torch.allclose(tokens, (bits.float() * 2 * s - s).reshape(2, 15, 56), atol=1e-6)


def test_tiny_patchified_model_generates():
    vae = VAEConfig.from_base(4, 32, (1, 1, 2, 2))
    cfg = dataclasses.replace(preset("infinity-tiny"), vae=vae, spatial_patchify=True)
    model, dec = build_random_infinity(cfg, 0), build_random_vae(vae, 1)
    sched = scale_schedule(256)
    plan = prune_plan(sched, "none", cfg.depth)
    out = generate(TorchBackend(model, dec, sched, plan), sched, plan, Geometry(cfg.bits, 4, True),
                   torch.randn(1, 5, 2048), torch.tensor([5]), SamplingSettings.uniform(1, 0, 4.0, 1.0))
    assert out.images.shape == (1, 256, 256, 3)
    assert out.tokens["scale_06"].shape == (1, 16, 16, 16)


@pytest.mark.parametrize("d", [32, 14])
def test_codes_are_l2_normalised_as_upstream_does(d):
    # upstream L2-normalises the ±1/sqrt(d) codes; in float32 that moves them by an ulp, which we keep
    bits = torch.randint(0, 2, (1, 4, 4, d), generator=torch.Generator().manual_seed(d), dtype=torch.uint8)
    raw = bits.float() * (1 / d ** 0.5) * 2 - (1 / d ** 0.5)
    expect = raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    codes = bits_to_codes(bits, d, patchify=False)
    assert torch.equal(codes[:, :, 0].permute(0, 2, 3, 1), expect)
    assert not torch.equal(expect, raw)
