"""Hostile Infinity checkpoints through the CLI (issue 15, classes 4, 9 and 12): absurd sizes are refused
before anything is built, in bounded time and memory; odd entries, broken files and shard indices that
point outside their folder are a clean exit 2 naming the file and the key; a NaN weight is refused at load."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from support.hostile import assert_refused, invoke, measure

from fastvar.cli import export_cmd, run_cmd
from fastvar.export.models.checkpoint import (
    build_random_infinity,
    build_random_vae,
    load_infinity,
    save_state_dict,
)
from fastvar.export.models.infinity_config import preset

CFG = preset("infinity-tiny")
FC1 = "block_chunks.1.module.0.ffn.fc1.weight"
SCALE = "block_chunks.0.module.0.sa.scale_mul_1H11"


@pytest.fixture(scope="module")
def weights():
    return build_random_infinity(CFG, 7).state_dict(), build_random_vae(CFG.vae, 8).state_dict()


@pytest.fixture
def pair(tmp_path, weights):
    sd, vae = weights
    return save_state_dict(sd, tmp_path / "t.pth"), save_state_dict(vae, tmp_path / "v.pth", wrap_key="vae")


def _run(ckpt, vae, tmp_path):
    return invoke(run_cmd, ["--model", "infinity", "--ckpt", ckpt, "--vae", vae, "--res", "256",
                            "--out", tmp_path / "x.png"])


def _with(sd: dict, **changes) -> dict:
    out = dict(sd)
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            del out[k]
        else:
            out[k] = v
    return out


def _flat(sd: dict) -> dict:
    """The same weights with upstream's flat ``blocks.{i}.`` keys (block_chunks = 1)."""
    per = CFG.blocks_per_chunk
    out = {}
    for k, v in sd.items():
        if k.startswith("block_chunks."):
            _, c, _, j, rest = k.split(".", 4)
            k = f"blocks.{int(c) * per + int(j)}.{rest}"
        out[k] = v
    return out


# ---- class 4: sizes read from keys are bounded and checked against the blocks present ----------------

@pytest.mark.parametrize("kind,extra,named", [
    ("transformer", "block_chunks.100000000.module.0.x", "block_chunks.{c} indices must be exactly 0..n-1"),
    ("transformer", "block_chunks.0.module.99999999.x", "block_chunks.{c}.module.{j} indices"),
    ("flat", "blocks.99999999.x", "blocks.{i} indices must be exactly 0..n-1"),
    ("vae", "decoder.up.0.block.99999999.conv1.conv.weight", "decoder.up.0.block.{j} indices"),
    ("vae", "decoder.up.99999999.block.0.conv1.conv.weight", "decoder.up.{level} indices"),
])
def test_an_absurd_block_index_is_refused_fast_and_small(tmp_path, weights, kind, extra, named):
    sd, vae = weights
    base = _flat(sd) if kind == "flat" else sd
    t = save_state_dict(base if kind == "vae" else {**base, extra: torch.zeros(1)}, tmp_path / "t.pth")
    v = save_state_dict({**vae, extra: torch.zeros(1, 1, 1, 1)} if kind == "vae" else vae, tmp_path / "v.pth",
                        wrap_key="vae")
    assert_refused(_run(t, v, tmp_path), named)  # warm: imports are not the file's cost
    r, cost = measure(lambda: _run(t, v, tmp_path))
    assert_refused(r, str(t if kind != "vae" else v), named)
    assert cost.cpu_s < 1.0 and cost.rss_growth_mib < 50, cost


def test_a_huge_tensor_viewed_over_one_stored_element_is_refused(pair, weights, tmp_path):
    """A pickle can give a tensor any shape over a one-element storage (stride 0); its size would then
    size the model, and converting it would allocate all of it."""
    sd, _ = weights
    t, v = pair
    torch.save(_with(sd, pos_start=torch.zeros(1, dtype=torch.bfloat16).expand(1, 1, CFG.width)), t)
    assert_refused(_run(t, v, tmp_path), str(t), "'pos_start'", "claims more elements than its 2 stored bytes")


def test_a_width_beyond_the_bound_is_refused_naming_it(pair, weights, tmp_path):
    sd, _ = weights
    t, v = pair
    save_state_dict(_with(sd, pos_start=torch.zeros(1, 1, 70000)), t)
    assert_refused(_run(t, v, tmp_path), "pos_start of shape (1, 1, 70000) gives width 70000; accepted: an "
                   "integer in 1..65536")


# ---- class 12: odd entries and broken files --------------------------------------------------------

_ODD = {
    "pos_start of rank 1": (dict(pos_start=torch.zeros(3)), "pos_start has shape (3,); a 3-d tensor is expected"),
    "pos_start of rank 2": (dict(pos_start=torch.zeros(1, 64)), "pos_start has shape (1, 64)"),
    "0-d scale_mul_1H11": ({SCALE.replace(".", "__"): torch.tensor(1.0)},
                           f"{SCALE} has shape (); a 4-d tensor is expected"),
    "zero heads": ({SCALE.replace(".", "__"): torch.zeros(1, 0, 1, 1)}, "gives heads 0; accepted: an integer in 1.."),
    "word_embed of rank 1": (dict(word_embed__weight=torch.zeros(64)), "word_embed.weight has shape (64,)"),
    "cfg_uncond of rank 3": (dict(cfg_uncond=torch.zeros(1, 2, 3)), "cfg_uncond has shape (1, 2, 3)"),
    "mat_q of rank 2": (dict(text_proj_for_sos__ca__mat_q=torch.zeros(2, 32)), "mat_q has shape (2, 32)"),
    "fc1 of rank 1": ({"block_chunks__0__module__0__ffn__fc1__weight": torch.zeros(256)},
                      "block_chunks.0.module.0.ffn.fc1.weight has shape (256,)"),
    "a non-tensor value": (dict(pos_start=3), "entry 'pos_start' is of type int, not a tensor"),
    "a sparse tensor": (dict(pos_start=torch.zeros(1, 1, 64).to_sparse()), "'pos_start' is a torch.sparse_coo"),
    "a meta tensor": (dict(pos_start=torch.empty(1, 1, 64, device="meta")), "'pos_start' is a torch.strided "
                      "torch.float32 tensor on meta; accepted: dense tensors of real numbers with their data"),
    "a complex tensor": (dict(pos_start=torch.zeros(1, 1, 64, dtype=torch.complex64)), "torch.complex64 tensor"),
    "a missing pos_start": (dict(pos_start=None), "not an Infinity transformer checkpoint: it lacks pos_start"),
    "width not divisible by heads": (dict(pos_start=torch.zeros(1, 1, 3)), "width 3 is not divisible by heads 2"),
}


@pytest.mark.parametrize("case", sorted(_ODD))
def test_odd_state_dict_entries_are_a_clean_exit_2(case, pair, weights, tmp_path):
    sd, _ = weights
    t, v = pair
    changes, named = _ODD[case]
    torch.save(_with(sd, **changes), t)
    assert_refused(_run(t, v, tmp_path), f"transformer checkpoint {t}", named)


def test_a_key_that_is_not_a_string_and_a_chunk_missing_a_block(pair, weights, tmp_path):
    sd, _ = weights
    t, v = pair
    torch.save({**sd, 5: torch.zeros(1)}, t)
    assert_refused(_run(t, v, tmp_path), "key 5 is of type int, not a string")
    save_state_dict({k: w for k, w in sd.items() if not k.startswith("block_chunks.1.module.1.")}, t)
    assert_refused(_run(t, v, tmp_path), "block_chunks.1.module.1.* is absent")
    save_state_dict({**sd, "block_chunks.0.module." + "9" * 5000 + ".x": torch.zeros(1)}, t)
    assert_refused(_run(t, v, tmp_path), "unexpected keys (1): block_chunks.0.module.999")


def test_an_empty_file_and_files_that_are_not_checkpoints(pair, tmp_path):
    t, v = pair
    t.write_bytes(b"")
    assert_refused(_run(t, v, tmp_path), f"{t} is empty (0 bytes): not a checkpoint")
    t.write_bytes(b"PK\x03\x04 not a zip")
    assert_refused(_run(t, v, tmp_path), f"{t} is not a PyTorch checkpoint of tensors only")
    v.write_bytes(b"")
    assert_refused(_run(pair[0], v, tmp_path), f"{v} is empty")


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("protocol", [None, 2, 4])  # torch.save's own, and plain pickles
def test_an_unsafe_pickle_is_refused_without_torchs_advice_to_drop_the_guard(pair, tmp_path, protocol):
    t, v = pair
    if protocol is None:
        torch.save({"pos_start": _Payload()}, t)
    else:
        with open(t, "wb") as f:
            pickle.dump({"pos_start": _Payload()}, f, protocol=protocol)
    out = assert_refused(_run(t, v, tmp_path), str(t), "refused, not executed")
    assert "GLOBAL print" in out or protocol == 4  # torch stops at protocol 4's framing before the global
    assert "unpickled!" not in out
    for advice in ("weights_only", "safe_globals", "trust"):
        assert advice not in out, out


@pytest.mark.parametrize("case,vae,named", [
    ("conv_in of rank 2", {"decoder.conv_in.conv.weight": torch.zeros(128, 32)},
     "decoder.conv_in.conv.weight has shape (128, 32); a 4-d tensor is expected"),
    ("a level's first conv of rank 1", {"decoder.up.1.block.0.conv1.conv.weight": torch.zeros(32)},
     "decoder.up.1.block.0.conv1.conv.weight has shape (32,)"),
    ("a level gap", {"decoder.up.7.block.0.conv1.conv.weight": torch.zeros(32, 32, 3, 3)},
     "decoder.up.{level} indices must be exactly 0..n-1; found 0, 1, 2, 3, 4, 7"),
    ("an upsampler of no level", {"decoder.up.9.upsample.conv.conv.weight": torch.zeros(1)},
     "upsampler of level 9"),
    ("channels GroupNorm cannot split", {"decoder.up.0.block.0.conv1.conv.weight": torch.zeros(33, 32, 3, 3)},
     "GroupNorm needs channels divisible by 32"),
    ("a non-tensor", {"decoder.conv_out.conv.bias": [1, 2, 3]}, "entry 'decoder.conv_out.conv.bias' is of type list"),
])
def test_odd_vae_entries_are_a_clean_exit_2(pair, weights, tmp_path, case, vae, named):
    t, v = pair
    torch.save({"vae": {**weights[1], **vae}}, v)
    assert_refused(_run(t, v, tmp_path), f"VAE checkpoint {v}", named)


# ---- shard indices: names that stay inside the folder ----------------------------------------------

def _sharded(folder, sd: dict):
    keys = sorted(sd)
    half = len(keys) // 2
    weight_map = {}
    for name, ks in (("a.safetensors", keys[:half]), ("b.safetensors", keys[half:])):
        save_state_dict({k: sd[k] for k in ks}, folder / name)
        weight_map.update({k: name for k in ks})
    return weight_map


@pytest.mark.parametrize("case,edit,named", [
    ("a non-string shard", lambda wm, k: {**wm, k: 5}, "is 5; accepted: a shard file name"),
    ("a null shard", lambda wm, k: {**wm, k: None}, "is None; accepted: a shard file name"),
    ("a parent path", lambda wm, k: {**wm, k: "../outside.safetensors"}, "relative path inside the index's folder"),
    ("an absolute path", lambda wm, k: {**wm, k: "/etc/passwd"}, "relative path inside the index's folder"),
    ("a nested parent path", lambda wm, k: {**wm, k: "sub/../../x.safetensors"}, "without '..'"),
    ("a list", lambda wm, k: list(wm), 'needs a "weight_map" object'),
])
def test_a_shard_index_must_name_files_inside_its_folder(tmp_path, pair, weights, case, edit, named):
    _, v = pair
    folder = tmp_path / "shards"
    folder.mkdir()
    weight_map = _sharded(folder, weights[0])
    (tmp_path / "outside.safetensors").write_bytes((folder / "a.safetensors").read_bytes())
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": edit(weight_map, "pos_start")}))
    assert_refused(_run(folder, v, tmp_path), str(index), named)


def test_a_shard_index_nested_without_end_is_refused(tmp_path, pair):
    _, v = pair
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text("[" * 100_000)
    assert_refused(_run(folder, v, tmp_path), "is not valid JSON")


def test_shards_linked_into_a_blob_store_load_like_a_hugging_face_snapshot(tmp_path, weights):
    """Symbolic links in a user's checkpoint folder are followed (a snapshot links into ../../blobs)."""
    sd = weights[0]
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    weight_map = _sharded(blobs, sd)
    for name in ("a.safetensors", "b.safetensors"):
        (snap / name).symlink_to(f"../../blobs/{name}")
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = load_infinity(snap, CFG.vae)
    assert torch.equal(model.state_dict()[FC1], sd[FC1])


# ---- class 9: non-finite weights are refused at load, naming the tensor --------------------------

def _poisoned(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[t.numel() // 2] = value
    return t


def test_export_from_a_checkpoint_with_a_nan_weight_is_refused_naming_it(pair, weights, tmp_path):
    sd, _ = weights
    t, v = pair
    save_state_dict({**sd, FC1: _poisoned(sd[FC1], float("nan"))}, t)
    r = invoke(export_cmd, ["--model", "infinity", "--ckpt", t, "--vae", v, "--res", "256",
                            "--out", tmp_path / "art"])
    assert_refused(r, f"transformer checkpoint {t}", f"tensor '{FC1}' holds non-finite values (1 NaN")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_infinite_weight_in_the_transformer_or_the_vae_is_refused(pair, weights, tmp_path, dtype):
    sd, vae = weights
    t, v = pair
    save_state_dict({k: w.to(dtype) for k, w in {**sd, SCALE: _poisoned(sd[SCALE], float("inf"))}.items()}, t)
    assert_refused(_run(t, v, tmp_path), f"tensor '{SCALE}' holds non-finite values (0 NaN, 1 infinite")
    key = "decoder.conv_out.conv.weight"
    save_state_dict(sd, t)
    save_state_dict({**vae, key: _poisoned(vae[key], float("-inf"))}, v, wrap_key="vae")
    assert_refused(_run(t, v, tmp_path), f"VAE checkpoint {v}", f"tensor '{key}' holds non-finite values")
