"""HART checkpoints in upstream's layout (llm/ with config.json, weights and ema_model.bin; tokenizer/ with
vae.* and disc.* keys), written here from random weights, load strictly; load errors are specific."""

import json

import pytest
import torch

from fastvar.export.models.checkpoint import CheckpointError, save_state_dict
from fastvar.export.models.hart_checkpoint import (
    build_random_hart,
    build_random_tokenizer,
    load_hart,
    load_hart_pair,
    load_hart_tokenizer,
    save_hart_folder,
    save_tokenizer_folder,
)
from fastvar.export.models.hart_config import preset


@pytest.fixture(scope="module")
def tiny_cfg():
    return preset("hart-tiny")


@pytest.fixture(scope="module")
def pair(tiny_cfg):
    return build_random_hart(tiny_cfg, 1), build_random_hart(tiny_cfg, 2)  # weights, EMA weights


@pytest.fixture
def ckpt(tmp_path, tiny_cfg, pair):
    """hart-tiny in upstream's folder layout, with the unused training buffers upstream's files carry."""
    model, ema = pair
    root = tmp_path / "hart-tiny-1024px"
    llm = save_hart_folder(model, root / "llm", ema=None)
    ema_sd = dict(ema.state_dict())
    ema_sd["lvl_1L"] = torch.zeros(1, 10, dtype=torch.int64)
    ema_sd["attn_bias_for_masking"] = torch.zeros(1, 1, 10, 10)
    save_state_dict(ema_sd, llm / "ema_model.bin")
    tok = build_random_tokenizer(tiny_cfg.tokenizer, 3)
    extra = {"vae.encoder.conv_in.weight": torch.zeros(32, 3, 3, 3), "vae.quant_conv.weight": torch.zeros(8, 8, 3, 3),
             "vae.quantize.ema_vocab_hit_SV": torch.zeros(14, 64), "disc.layer.weight": torch.zeros(4)}
    save_tokenizer_folder(tok, root / "tokenizer", extra=extra)
    return llm, tok


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x, y = a.state_dict(), b.state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_upstream_layout_loads_strictly_with_ema_over_the_weights(ckpt, pair, tiny_cfg):
    llm, _ = ckpt
    model, ema = pair
    assert sorted(p.name for p in llm.iterdir()) == ["config.json", "ema_model.bin", "model.safetensors"]
    assert json.loads((llm / "config.json").read_text())["model_type"] == "hart_transformer_t2i"
    loaded = load_hart(llm)  # the codebook size comes from the sibling tokenizer/config.json
    assert loaded.cfg.depth == tiny_cfg.depth and loaded.cfg.vocab == 64 and loaded.cfg.cvae == 8
    assert _same(loaded, ema)
    assert _same(load_hart(llm, use_ema=False), model)


def test_pickled_weights_file_and_tokenizer_folder(tmp_path, pair, ckpt, tiny_cfg):
    model, _ = pair
    folder = save_hart_folder(model, tmp_path / "llm", weights="pytorch_model.bin")
    assert _same(load_hart(folder, use_ema=False, tokenizer=tiny_cfg.tokenizer), model)
    llm, tok = ckpt
    again = load_hart_tokenizer(llm.parent / "tokenizer")  # encoder, quant_conv, hit counts, disc.* ignored
    assert again.cfg == tok.cfg and _same(again, tok)
    both, tok2 = load_hart_pair(llm.parent)
    assert both.cfg.cvae == tok2.cfg.cvae == 8 and _same(tok2, tok)
    with pytest.raises(CheckpointError, match="lacks tokenizer/"):
        load_hart_pair(folder.parent)
    conf = json.loads((llm.parent / "tokenizer" / "config.json").read_text())
    (llm.parent / "tokenizer" / "config.json").write_text(json.dumps({**conf, "quant_conv_ks": 1}))
    with pytest.raises(CheckpointError, match="quant_conv_ks=1: only 3x3"):
        load_hart_tokenizer(llm.parent / "tokenizer")


def test_missing_and_unexpected_keys_are_named(ckpt, tmp_path):
    llm, _ = ckpt
    sd = torch.load(llm / "ema_model.bin", weights_only=True)
    del sd["blocks.1.ffn.up_proj.weight"]
    sd["blocks.0.attn.extra"] = torch.zeros(2)
    save_state_dict(sd, llm / "ema_model.bin")
    with pytest.raises(CheckpointError, match=r"ema_model\.bin does not match the model") as err:
        load_hart(llm)
    assert "missing keys (1): blocks.1.ffn.up_proj.weight" in str(err.value)
    assert "unexpected keys (1): blocks.0.attn.extra" in str(err.value)


def test_wrong_shape_is_named_with_both_shapes(ckpt, tiny_cfg):
    llm, _ = ckpt
    sd = torch.load(llm / "ema_model.bin", weights_only=True)
    sd["blocks.0.attn.proj.weight"] = torch.zeros(64, 32)
    save_state_dict(sd, llm / "ema_model.bin")
    with pytest.raises(CheckpointError, match=r"proj\.weight: checkpoint \(64, 32\) vs model \(64, 64\)"):
        load_hart(llm)
    sd["head.weight"] = torch.zeros(4096, 64)  # a size the config states is compared before building
    save_state_dict(sd, llm / "ema_model.bin")
    with pytest.raises(CheckpointError, match=r"vocab_size is 64, but head\.weight has shape \(4096, 64\)"):
        load_hart(llm)


def test_folder_errors_are_specific(ckpt, tmp_path):
    llm, _ = ckpt
    with pytest.raises(CheckpointError, match="does not exist"):
        load_hart(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_hart(empty)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_hart(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type 'llama'; expected 'hart_transformer_t2i'"):
        load_hart(empty)
    with pytest.raises(CheckpointError, match="model_type 'hart_transformer_t2i'; expected 'hart_autoencoder_with"):
        load_hart_tokenizer(llm)
    conf = json.loads((llm / "config.json").read_text())
    (empty / "config.json").write_text(json.dumps({**conf, "disable_aln": False, "use_cross_attn": True}))
    with pytest.raises(CheckpointError, match="disable_aln=False .*; use_cross_attn=True"):
        load_hart(empty)
    (empty / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match="holds no weights: expected one of model.safetensors.index.json"):
        load_hart(empty)


def test_corrupt_files_and_missing_ema_are_specific(ckpt):
    llm, _ = ckpt
    (llm / "ema_model.bin").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="ema_model.bin is not a PyTorch checkpoint of tensors only"):
        load_hart(llm)
    (llm / "ema_model.bin").unlink()
    with pytest.raises(CheckpointError, match="has no ema_model.bin .* use_ema=False"):
        load_hart(llm)
    (llm / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        load_hart(llm, use_ema=False)


def test_pickles_are_never_unpickled_beyond_tensors(ckpt):
    llm, _ = ckpt

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"head.weight": Payload()}, llm / "ema_model.bin")
    with pytest.raises(CheckpointError, match="GLOBAL print .* refused, not executed") as err:
        load_hart(llm)
    assert "weights_only" not in str(err.value)  # torch's advice to drop the guard is never repeated
