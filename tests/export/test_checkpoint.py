"""Loading: the upstream-written pair, our own saves, sharded safetensors, and specific errors."""

import json
import shutil

import pytest
import torch

from fastvar.export.models.checkpoint import (
    CheckpointError,
    build_random_infinity,
    build_random_vae,
    load_infinity,
    load_vae,
    random_init,
    save_state_dict,
)
from fastvar.export.models.infinity_config import preset


def test_official_pair_loads_strictly_with_every_dimension_inferred(official_pair, official_dir):
    model, vae = official_pair
    conf = json.loads((official_dir / "config.json").read_text())
    c = model.cfg
    assert (c.depth, c.width, c.heads, c.head_dim, c.mlp_hidden) == (
        conf["depth"], conf["width"], conf["heads"], conf["head_dim"], conf["mlp_hidden"])
    assert (c.block_chunks, c.blocks_per_chunk) == (conf["block_chunks"], conf["blocks_per_chunk"])
    assert (c.text_channels, c.text_maxlen, c.bits) == (conf["text_channels"], conf["text_maxlen"], 32)
    assert not c.spatial_patchify
    assert len(model.state_dict()) == conf["n_state_dict_keys"]
    assert sum(t.numel() for t in model.state_dict().values()) == conf["n_params"]  # params + zero_k_bias
    v = vae.cfg
    assert v.codebook_dim == conf["vae_codebook_dim"]
    assert v.level_channels == tuple(conf["vae_base_ch"] * m for m in conf["vae_ch_mult"])
    assert v.stride == conf["vae_patch_size"]
    ref = torch.load(official_dir / "infinity.pth", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in ref)


def test_saved_checkpoints_reload_strictly(tmp_path):
    cfg = preset("infinity-tiny")
    model = build_random_infinity(cfg, 3)
    p = save_state_dict(model, tmp_path / "t.pth")
    again = load_infinity(p, cfg.vae)
    assert again.cfg.depth == cfg.depth and again.cfg.heads == cfg.heads
    mine, theirs = model.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    vae = build_random_vae(cfg.vae, 4)
    vp = save_state_dict(vae, tmp_path / "v.pth", wrap_key="vae")
    assert load_vae(vp).cfg == cfg.vae


def test_sharded_safetensors_like_the_8b(tmp_path):
    cfg = preset("infinity-tiny")
    sd = build_random_infinity(cfg, 5).state_dict()
    keys = list(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    folder = tmp_path / "infinity_weights"
    weight_map = {}
    for name, ks in shards.items():
        save_state_dict({k: sd[k] for k in ks}, folder / name)
        weight_map.update({k: name for k in ks})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for source in (folder, folder / "model.safetensors.index.json"):
        m = load_infinity(source, cfg.vae)
        assert torch.equal(m.state_dict()[keys[-1]], sd[keys[-1]])
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors .* is missing"):
        load_infinity(folder / "model.safetensors.index.json", cfg.vae)


def test_plain_key_vae_form_loads_like_the_wrapped_form(official_dir, tmp_path):
    raw = torch.load(official_dir / "vae.pth", weights_only=True)["vae"]
    plain = {k.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias")
              .replace(".norm.weight", ".weight").replace(".norm.bias", ".bias"): v for k, v in raw.items()}
    assert "decoder.conv_in.weight" in plain and "decoder.up.1.upsample.conv.weight" in plain
    p = save_state_dict(plain, tmp_path / "plain.pth")
    a, b = load_vae(official_dir / "vae.pth"), load_vae(p)
    z = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        assert torch.equal(a.decode(z), b.decode(z))


def test_missing_key_is_named(official_dir, tmp_path):
    sd = torch.load(official_dir / "infinity.pth", weights_only=True)
    del sd["block_chunks.3.module.1.ffn.fc2.bias"]
    p = save_state_dict(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): block_chunks\.3\.module\.1\.ffn\.fc2\.bias"):
        load_infinity(p)


def test_wrong_shape_is_named_with_both_shapes(official_dir, tmp_path):
    sd = torch.load(official_dir / "infinity.pth", weights_only=True)
    sd["block_chunks.0.module.0.ca.proj.weight"] = torch.zeros(64, 32)
    p = save_state_dict(sd, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"ca\.proj\.weight: checkpoint \(64, 32\) vs model \(64, 64\)"):
        load_infinity(p)


def test_unexpected_key_is_named(official_dir, tmp_path):
    sd = torch.load(official_dir / "infinity.pth", weights_only=True)
    sd["block_chunks.0.module.0.sa.extra"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): block_chunks\.0\.module\.0\.sa\.extra"):
        load_infinity(save_state_dict(sd, tmp_path / "extra.pth"))


def test_files_that_are_not_checkpoints(tmp_path, official_dir):
    junk = tmp_path / "notes.pth"
    junk.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_infinity(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_infinity(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="not an Infinity transformer checkpoint"):
        load_infinity(official_dir / "vae.pth")
    with pytest.raises(CheckpointError, match="not an Infinity BSQ VAE checkpoint"):
        load_vae(official_dir / "infinity.pth")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no \\*.safetensors shards"):
        load_infinity(empty)


def test_transformer_and_vae_must_be_a_pair(official_dir, tmp_path):
    shutil.copy(official_dir / "infinity.pth", tmp_path / "t.pth")
    vae8b = preset("infinity-8b").vae
    with pytest.raises(CheckpointError, match="predicts 32 bits per token but the VAE codes 14"):
        load_infinity(tmp_path / "t.pth", vae8b)


@pytest.mark.parametrize("family", ["infinity", "hart"])
def test_random_weights_do_not_depend_on_skipping_torchs_default_init(family):
    """``no_default_init`` skips what the random initialisers overwrite anyway: every parameter and buffer
    equals a build that ran torch's default initialisation first (buffers are set by their constructors)."""
    if family == "infinity":
        from fastvar.export.models.infinity import Infinity as cls

        cfg, build, init = preset("infinity-tiny"), build_random_infinity, random_init
    else:
        from fastvar.export.models.hart import HART as cls
        from fastvar.export.models.hart_checkpoint import build_random_hart as build
        from fastvar.export.models.hart_checkpoint import random_init_hart as init
        from fastvar.export.models.hart_config import preset as hart_preset

        cfg = hart_preset("hart-tiny")
    fast, full = build(cfg, 3).state_dict(), init(cls(cfg), 3).state_dict()
    assert fast.keys() == full.keys() and all(torch.equal(fast[k], full[k]) for k in fast)
    assert torch.nn.init.normal_(torch.zeros(3)).abs().sum() > 0  # the context restored torch's initialisers
