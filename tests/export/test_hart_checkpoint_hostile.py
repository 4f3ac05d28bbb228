"""Hostile HART release folders through the CLI (issue 15, classes 4, 9, 12 and 13): config.json values of
the wrong type, sign or size are refused naming the key before anything is built; the config's sizes are
compared with the weights first; a config naming custom code is refused; a NaN weight is refused at load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from support.hostile import assert_refused, invoke, measure

from fastvar.cli import run_cmd
from fastvar.export.models.checkpoint import save_state_dict
from fastvar.export.models.factory import build_pair
from fastvar.export.models.hart_checkpoint import save_hart_folder, save_tokenizer_folder


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    model, tok = build_pair("hart-tiny", random_init=True, seed=5)
    root = tmp_path_factory.mktemp("hart") / "rel"
    save_hart_folder(model, root / "llm", ema=model)
    save_tokenizer_folder(tok, root / "tokenizer", extra={"disc.layer.weight": torch.zeros(4)})
    return root


@pytest.fixture
def rel(release, tmp_path):
    return shutil.copytree(release, tmp_path / "rel")


def _run(root, tmp_path):
    return invoke(run_cmd, ["--model", "hart", "--ckpt", root, "--out", tmp_path / "x.png"])


def _edit(path, **changes) -> None:
    conf = json.loads(path.read_text())
    for k, v in changes.items():
        if v is KeyError:
            del conf[k]
        else:
            conf[k] = v
    path.write_text(json.dumps(conf))


# ---- class 4: absurd sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("folder,key,value,named", [
    ("llm", "depth", 1e9, "depth=1000000000.0: accepted: an integer in 1..512"),
    ("llm", "depth", 10**9, "depth=1000000000: accepted: an integer in 1..512"),
    ("llm", "embed_dim", 10**7, "embed_dim=10000000: accepted: an integer in 1..65536"),
    ("llm", "patch_nums", list(range(1, 10_000)), "patch_nums=[1, 2, 3"),
    ("llm", "diff_depth", 10**30, "diff_depth=1000000000000000000000000000000: accepted"),
    ("llm", "num_sampling_steps", "9" * 40, "num_sampling_steps='99999"),
    ("tokenizer", "ch", 128000, "ch=128000: accepted: an integer in 1..16384"),
    ("tokenizer", "ch", 8192, "ch=8192 with ch_mult=[1, 1, 2, 2, 4] gives 32768 channels"),
    ("tokenizer", "vocab_size", 1e10, "vocab_size=10000000000.0: accepted: an integer in 1..1048576"),
    ("tokenizer", "vocab_size", 10**10, "vocab_size=10000000000: accepted"),
    ("tokenizer", "ch_mult", [1] * 10_000, "ch_mult=[1, 1, 1"),
])
def test_absurd_config_sizes_are_refused_fast_and_small(rel, tmp_path, folder, key, value, named):
    _edit(rel / folder / "config.json", **{key: value})
    assert_refused(_run(rel, tmp_path), named)  # warm: imports are not the file's cost
    r, cost = measure(lambda: _run(rel, tmp_path))
    assert_refused(r, str(rel / folder / "config.json"), named)
    assert cost.cpu_s < 1.0 and cost.rss_growth_mib < 50, cost


@pytest.mark.parametrize("folder,key,value,named", [
    ("llm", "depth", 500, "depth is 500, but the weights hold blocks 0..1 (expected 0..499)"),
    ("llm", "diff_depth", 100, "diff_depth is 100, but the weights hold diffusion-head blocks 0..1"),
    ("llm", "embed_dim", 4096, "embed_dim is 4096, but word_embed.weight has shape (64, 8)"),
    ("llm", "context_dim", 8192, "context_dim is 8192, but context_embed.weight has shape (64, 1536)"),
    ("llm", "diff_width", 8192, "diff_width is 8192, but diffloss.net.input_proj.weight"),
    ("llm", "mlp_ratio", 64, "the FFN width from mlp_ratio is 2816, but blocks.0.ffn.gate_proj.weight"),
    ("llm", "patch_nums", [1, 2, 4], "the number of patch_nums is 3, but lvl_embed.weight has shape (14, 64)"),
    ("tokenizer", "vocab_size", 1 << 20, "vocab_size is 1048576, but quantize.embedding.weight has shape (64, 8)"),
    ("tokenizer", "ch", 8192 // 4, "ch x ch_mult[0] is 2048, but decoder.conv_out.weight has shape (3, 32, 3, 3)"),
    ("tokenizer", "ch_mult", [1] * 16, "len(ch_mult) is 16, but the weights hold decoder levels 0..4"),
    ("tokenizer", "share_quant_resi", 64, "share_quant_resi is 64, but the weights hold shared convolutions 0..3"),
])
def test_config_sizes_within_bounds_are_compared_with_the_weights_before_building(rel, tmp_path, folder, key,
                                                                                  value, named):
    _edit(rel / folder / "config.json", **{key: value})
    assert_refused(_run(rel, tmp_path), str(rel / folder / "config.json"), named)
    r, cost = measure(lambda: _run(rel, tmp_path))
    assert_refused(r, named)
    assert cost.cpu_s < 1.0 and cost.rss_growth_mib < 50, cost


def test_absurd_block_index_in_the_weights_is_refused(rel, tmp_path):
    ema = rel / "llm" / "ema_model.bin"
    sd = torch.load(ema, weights_only=True)
    save_state_dict({**sd, "blocks.99999999.attn.x": torch.zeros(1)}, ema)
    assert_refused(_run(rel, tmp_path), "depth is 2, but the weights hold blocks 0, 1, 99999999")


# ---- class 12: values of the wrong type or sign -----------------------------------------------------

_WRONG = [
    ("llm", "num_heads", 0, "num_heads=0: accepted: an integer in 1..1024"),
    ("llm", "embed_dim", -64, "embed_dim=-64: accepted: an integer in 1..65536"),
    ("llm", "depth", None, "depth=None: accepted: an integer"),
    ("llm", "depth", "2", "depth='2': accepted: an integer"),
    ("llm", "depth", True, "depth=True: accepted: an integer"),
    ("llm", "depth", 2.0, "depth=2.0: accepted: an integer"),
    ("llm", "depth", {"n": 2}, "depth={'n': 2}: accepted: an integer"),
    ("llm", "patch_nums", 5, "patch_nums=5: accepted: a list of 3..64 integers"),
    ("llm", "patch_nums", [1, 2, "3"], "patch_nums=[1, 2, '3']"),
    ("llm", "patch_nums", [[1], [2], [3]], "patch_nums=[[1], [2], [3]]"),
    ("llm", "patch_nums", [1, 3, 2, 4], "strictly increasing"),
    ("llm", "patch_nums", [2, 3, 4], "patch_nums must start at 1"),
    ("llm", "mlp_ratio", "4", "mlp_ratio='4': accepted: a finite number in (0, 64]"),
    ("llm", "mlp_ratio", -1, "mlp_ratio=-1: accepted: a finite number"),
    ("llm", "norm_eps", float("nan"), "norm_eps=nan: accepted: a finite number in (0, 1]"),
    ("llm", "use_context_norm", "false", "use_context_norm='false': accepted: true or false"),
    ("llm", "attn_l2_norm", 0, "attn_l2_norm=0: accepted: true or false"),
    ("llm", "disable_aln", 1, "disable_aln=1 (built: True)"),
    ("llm", "context_token", [300], "context_token=[300]: accepted: an integer"),
    ("llm", "context_token", 0, "context_token <= 0 (class-conditional HART"),
    ("llm", "diffusion_head_repeats", None, "diffusion_head_repeats=None (built: 1)"),
    ("llm", "num_sampling_steps", 8.5, "num_sampling_steps='8.5': accepted: a single step count"),
    ("llm", "num_sampling_steps", "\u00b2", "num_sampling_steps="),
    ("llm", "num_heads", 3, "width 64 is not divisible by heads 3"),
    ("tokenizer", "z_channels", -1, "z_channels=-1: accepted: an integer in 1..1024"),
    ("tokenizer", "ch_mult", "11224", "ch_mult='11224': accepted: a list of 1..16 integers"),
    ("tokenizer", "ch_mult", [], "ch_mult=[]: accepted"),
    ("tokenizer", "share_quant_resi", 0, "share_quant_resi=0: accepted: an integer in 2..64"),
    ("tokenizer", "quant_resi", "0.5", "quant_resi='0.5': accepted: a finite number in [-1, 1]"),
    ("tokenizer", "quant_conv_ks", None, "quant_conv_ks=None: only 3x3"),
    ("tokenizer", "ch", 33, "GroupNorm(32) needs every level's channels"),
    ("tokenizer", "quantizer_type", "var_hybridx", "quantizer_type='var_hybridx': accepted: 'var' or 'var_hybrid'"),
    ("tokenizer", "quantizer_type", 1, "quantizer_type='1': accepted"),
]


@pytest.mark.parametrize("folder,key,value,named", _WRONG, ids=[f"{f}-{k}-{v!r}" for f, k, v, _ in _WRONG])
def test_config_values_of_the_wrong_type_or_sign_are_a_clean_exit_2(rel, tmp_path, folder, key, value, named):
    _edit(rel / folder / "config.json", **{key: value})
    assert_refused(_run(rel, tmp_path), str(rel / folder / "config.json"), named)


@pytest.mark.parametrize("text,named", [
    ("[]", "holds a list, not a JSON object"),
    ("[" * 100_000, "is not valid JSON"),
    ('{"depth": ' + "9" * 5000 + "}", "is not valid JSON"),
    ("\xff\xfe", "is not valid JSON"),
])
def test_a_config_that_is_not_a_json_object(rel, tmp_path, text, named):
    (rel / "llm" / "config.json").write_bytes(text.encode("latin-1"))
    assert_refused(_run(rel, tmp_path), str(rel / "llm" / "config.json"), named)


def test_an_oversized_config_is_refused_unread(rel, tmp_path):
    conf = rel / "tokenizer" / "config.json"
    _edit(conf, padding="x" * (2 << 20))
    assert_refused(_run(rel, tmp_path), f"{conf} is ", "a config.json is at most 1048576 bytes")


def test_odd_weight_entries(rel, tmp_path):
    ema = rel / "llm" / "ema_model.bin"
    sd = torch.load(ema, weights_only=True)
    torch.save({**sd, "head.weight": 3}, ema)
    assert_refused(_run(rel, tmp_path), str(ema), "entry 'head.weight' is of type int, not a tensor")
    torch.save({**sd, "head.weight": torch.zeros(64)}, ema)
    assert_refused(_run(rel, tmp_path), "head.weight: checkpoint (64,) vs model (64, 64)")
    torch.save({**sd, ("head", 1): torch.zeros(1)}, ema)
    assert_refused(_run(rel, tmp_path), "key ('head', 1) is of type tuple, not a string")
    ema.write_bytes(b"")
    assert_refused(_run(rel, tmp_path), f"{ema} is empty (0 bytes)")


# ---- class 13: no remote code ------------------------------------------------------------------------

@pytest.mark.parametrize("folder,changes,named", [
    ("llm", {"auto_map": {"AutoModel": "modeling_hart.HARTForT2I"}}, "names custom code (auto_map)"),
    ("llm", {"trust_remote_code": True}, "names custom code (trust_remote_code)"),
    ("tokenizer", {"auto_map": {"AutoConfig": "x.Y"}}, "names custom code (auto_map)"),
    ("tokenizer", {"text_config": [{"auto_map": "x.Y"}]}, "names custom code (auto_map)"),
])
def test_a_config_naming_custom_code_is_refused(rel, tmp_path, folder, changes, named):
    _edit(rel / folder / "config.json", **changes)
    (rel / folder / "modeling_hart.py").write_text("raise SystemExit('remote code ran')\n")
    out = assert_refused(_run(rel, tmp_path), str(rel / folder / "config.json"), named,
                         "never loaded with remote code")
    assert "remote code ran" not in out


# ---- class 9: non-finite weights ---------------------------------------------------------------------

@pytest.mark.parametrize("where,key,value", [
    ("llm/ema_model.bin", "blocks.1.ffn.up_proj.weight", float("nan")),
    ("llm/ema_model.bin", "diffloss.net.final_layer.linear.bias", float("inf")),
    ("tokenizer/model.safetensors", "vae.decoder.conv_out.weight", float("-inf")),
    ("tokenizer/model.safetensors", "vae.quantize.embedding.weight", float("nan")),
])
def test_a_non_finite_weight_is_refused_at_load_naming_it(rel, tmp_path, where, key, value):
    path = rel / where
    sd = torch.load(path, weights_only=True) if path.suffix == ".bin" else load_file(path)
    bad = sd[key].clone()
    bad.view(-1)[0] = value
    save_state_dict({**sd, key: bad}, path)
    name = key.removeprefix("vae.")
    assert_refused(_run(rel, tmp_path), str(path), f"tensor '{name}' holds non-finite values")
