"""Loading upstream checkpoints strictly, inferring every dimension from tensor shapes.

Transformer: a plain state dict in one ``.pth`` (2B, 125M), a ``.safetensors`` file, or sharded
safetensors (a folder or its ``*.index.json``; the 8B). VAE: ``{"vae": state_dict}`` (upstream's file,
encoder included) or a bare state dict, with upstream's wrapped (``conv_in.conv.weight``) or plain
(``conv_in.weight``) key forms. Pickles are opened with ``weights_only=True`` only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from fastvar.atomic import atomic_path
from fastvar.export.models.bsq_vae import BSQVAEDecoder
from fastvar.export.models.infinity import Infinity
from fastvar.export.models.infinity_config import InfinityConfig, VAEConfig

# Buffers that older upstream checkpoints carry and upstream's own loader drops.
_LEGACY_KEYS = ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")
# Parts of upstream's VAE file that decoding does not use.
_VAE_IGNORED_PREFIXES = ("encoder.", "quantizer.", "quantize.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the reason and what is accepted."""


def _load_pickle(path: Path) -> dict:
    try:
        try:  # memory-map zip-format files: an 8.8 GB checkpoint is not read into RAM twice
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for non-checkpoints and unsafe pickles
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint that loads with weights_only=True "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "accepted: a .pth state dict, a .safetensors file, or a folder of sharded safetensors"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint in any supported layout into one flat state dict."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        if index:
            return read_state_dict(index[0])
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise CheckpointError(f"folder {path} holds no *.safetensors shards and no *.safetensors.index.json")
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(_load_safetensors(shard))
        return sd
    if path.name.endswith(".index.json"):
        return _read_index(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return _load_pickle(path)


def _read_index(index: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face shard index (safetensors or pickle shards): every shard it names, checked complete."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not a shard index (no weight_map: {err})") from None
    sd: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.exists():
            raise CheckpointError(f"shard {path} named by {index.name} is missing")
        sd.update(_load_safetensors(path) if path.suffix == ".safetensors" else _load_pickle(path))
    missing = sorted(set(weight_map) - set(sd))
    if missing:
        raise CheckpointError(f"the shards lack {len(missing)} keys their index names, e.g. {missing[:3]}")
    return sd


def _check_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(sd)
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        lines = [f"{what} checkpoint does not match the model (strict load):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if shapes:
            lines.append(f"  mis-shaped keys ({len(shapes)}): {'; '.join(shapes[:20])}")
        raise CheckpointError("\n".join(lines))


# ---- transformer ---------------------------------------------------------------------------------

_BLOCK_RE = re.compile(r"^(?:block_chunks\.(\d+)\.module\.(\d+)|blocks\.(\d+))\.")


def infer_infinity_config(sd: Mapping[str, torch.Tensor], vae: VAEConfig | None = None,
                          name: str = "infinity-ckpt") -> InfinityConfig:
    """Read depth, width, heads, bits, FFN and text sizes off a transformer state dict."""
    need = ("pos_start", "word_embed.weight", "text_norm.weight", "cfg_uncond", "text_proj_for_sos.ca.mat_q")
    absent = [k for k in need if k not in sd]
    if absent:
        raise CheckpointError(
            f"not an Infinity transformer checkpoint: it lacks {', '.join(absent)} "
            f"(it has {len(sd)} keys, e.g. {', '.join(list(sd)[:5])})"
        )
    chunks, per_chunk, flat = set(), set(), set()
    for k in sd:
        m = _BLOCK_RE.match(k)
        if m and m.group(1) is not None:
            chunks.add(int(m.group(1)))
            per_chunk.add(int(m.group(2)))
        elif m:
            flat.add(int(m.group(3)))
    if chunks:
        block_chunks, depth = max(chunks) + 1, (max(chunks) + 1) * (max(per_chunk) + 1)
    elif flat:
        block_chunks, depth = 1, max(flat) + 1
    else:
        raise CheckpointError("not an Infinity transformer checkpoint: no block_chunks.{c}.module.{j}.* keys")
    first = "block_chunks.0.module.0." if chunks else "blocks.0."
    absent = [first + k for k in ("sa.scale_mul_1H11", "ffn.fc1.weight") if first + k not in sd]
    if absent:
        raise CheckpointError(f"not an Infinity transformer checkpoint: block 0 lacks {', '.join(absent)}")
    width = sd["pos_start"].shape[-1]
    scale_mul = sd[first + "sa.scale_mul_1H11"]
    heads = max(scale_mul.shape)
    bits = sd["word_embed.weight"].shape[1]
    if vae is None:
        vae = VAEConfig(codebook_dim=bits)
    if bits == vae.codebook_dim:
        patchify = False
    elif bits == 4 * vae.codebook_dim:
        patchify = True
    else:
        raise CheckpointError(
            f"the transformer predicts {bits} bits per token but the VAE codes {vae.codebook_dim}: they are not "
            "a pair (expected equal, or 4x with spatial patchify as in Infinity-8B)"
        )
    return InfinityConfig(
        name=name, depth=depth, width=width, heads=heads, mlp_hidden=sd[first + "ffn.fc1.weight"].shape[0],
        vae=vae, spatial_patchify=patchify, block_chunks=block_chunks,
        text_channels=sd["text_norm.weight"].shape[0], text_maxlen=sd["cfg_uncond"].shape[0],
        pool_heads=sd["text_proj_for_sos.ca.mat_q"].shape[1],
    )


def load_infinity(path: str | os.PathLike, vae: VAEConfig | None = None) -> Infinity:
    """Build an Infinity of the checkpoint's size and load it strictly (fp32)."""
    sd = read_state_dict(path)
    for k in _LEGACY_KEYS:
        sd.pop(k, None)
    cfg = infer_infinity_config(sd, vae, name=f"infinity-ckpt:{Path(path).name}")
    with torch.device("meta"):
        model = Infinity(cfg)
    _check_strict(model, sd, "transformer")
    return load_into_meta(model, sd, "transformer").eval()


def _module_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor a module holds: parameters, buffers, and tensors kept as plain attributes or as fields of
    a dataclass attribute (constants such as a diffusion schedule, which ``load_state_dict`` never fills)."""
    yield from model.named_parameters()
    yield from model.named_buffers()
    for prefix, mod in model.named_modules():
        for attr, val in vars(mod).items():
            where = f"{prefix}.{attr}" if prefix else attr
            if isinstance(val, torch.Tensor):
                yield where, val
            elif dataclasses.is_dataclass(val) and not isinstance(val, type):
                for f in dataclasses.fields(val):
                    if isinstance(t := getattr(val, f.name), torch.Tensor):
                        yield f"{where}.{f.name}", t


def load_into_meta(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """Assign a strictly checked state dict (as fp32) to a model built on the meta device.

    Building on meta skips a random initialisation the checkpoint would overwrite; anything the state dict
    does not hold must have been made on a real device, or it would stay without data and fail only when
    generating. That is checked here, once, so a loader cannot hand out a half-loaded model."""
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    left = sorted({name for name, t in _module_tensors(model) if t.is_meta})
    if left:
        raise RuntimeError(f"{what}: {len(left)} tensors are not in the checkpoint and were never materialised "
                           f"(first: {', '.join(left[:3])}); the model must create its constants on a real device")
    return model


# ---- VAE -----------------------------------------------------------------------------------------

_UP_RE = re.compile(r"^decoder\.up\.(\d+)\.block\.(\d+)\.conv1\.(?:conv\.)?weight$")


_CONV_MODULES = {"conv_in", "conv_out", "conv1", "conv2", "nin_shortcut", "conv"}
_NORM_MODULES = {"norm1", "norm2", "norm_out"}


def _wrapped_key(key: str) -> str:
    """Plain key form -> upstream's wrapped module form (conv_in.weight -> conv_in.conv.weight).

    Upstream wraps each conv in ``Conv`` (``.conv``) and each GroupNorm in ``Normalize`` (``.norm``); the
    upsampler's conv is itself a ``Conv``, so its wrapped key is ``upsample.conv.conv.weight``.
    """
    parts = key.split(".")
    if len(parts) < 3:
        return key
    owner, parent = parts[-2], parts[-3]
    if (owner == "conv" and parent in _CONV_MODULES) or (owner == "norm" and parent in _NORM_MODULES):
        return key
    if owner in _CONV_MODULES:
        return ".".join([*parts[:-1], "conv", parts[-1]])
    if owner in _NORM_MODULES:
        return ".".join([*parts[:-1], "norm", parts[-1]])
    return key


def _vae_decoder_dict(raw: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    sd = raw
    if "vae" in sd and isinstance(sd["vae"], Mapping):
        sd = sd["vae"]
    elif "ema" in sd and isinstance(sd["ema"], Mapping):
        sd = sd["ema"]
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"VAE checkpoint {path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        if k.startswith(_VAE_IGNORED_PREFIXES):
            continue
        out[_wrapped_key(k)] = v
    if not any(k.startswith("decoder.") for k in out):
        raise CheckpointError(
            f"{path} is not an Infinity BSQ VAE checkpoint: no decoder.* keys "
            f"(accepted: {{'vae': state_dict}} or a bare state dict with decoder.conv_in.conv.weight, ...)"
        )
    return out


def infer_vae_config(sd: Mapping[str, torch.Tensor]) -> VAEConfig:
    """Code width, per-level channels, blocks per level and upsampling levels, from the decoder keys."""
    try:
        codebook_dim = sd["decoder.conv_in.conv.weight"].shape[1]
    except KeyError:
        raise CheckpointError("VAE checkpoint lacks decoder.conv_in.conv.weight") from None
    levels: dict[int, int] = {}
    blocks: dict[int, int] = {}
    for k, v in sd.items():
        m = _UP_RE.match(k)
        if m:
            lv, bl = int(m.group(1)), int(m.group(2))
            blocks[lv] = max(blocks.get(lv, 0), bl + 1)
            if bl == 0:
                levels[lv] = v.shape[0]
    if not levels or sorted(levels) != list(range(len(levels))):
        raise CheckpointError(f"VAE decoder levels are incomplete: found up.{sorted(levels)}")
    counts = set(blocks.values())
    if len(counts) != 1:
        raise CheckpointError(f"VAE decoder levels have different block counts: {blocks}")
    ups = tuple(sorted({int(k.split(".")[2]) for k in sd if ".upsample." in k}))
    return VAEConfig(codebook_dim=codebook_dim, level_channels=tuple(levels[i] for i in range(len(levels))),
                     num_res_blocks=counts.pop() - 1, upsample_levels=ups)


def load_vae(path: str | os.PathLike) -> BSQVAEDecoder:
    """Build the decoder of the checkpoint's size and load it strictly (encoder and quantizer ignored)."""
    path = Path(path)
    sd = _vae_decoder_dict(read_state_dict(path), path)
    cfg = infer_vae_config(sd)
    vae = BSQVAEDecoder(cfg)
    _check_strict(vae, sd, "VAE")
    vae.load_state_dict(sd, strict=True)
    return vae.eval()


# ---- random weights and saving -------------------------------------------------------------------

@torch.no_grad()
def random_init(module: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random weights with no trivially-zero branch (tests, benchmarks, demos)."""
    first = next(module.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g, device=device)

    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "scale_mul_1H11":
            p.copy_(torch.log(torch.full_like(p, 4.0)) + 0.1 * randn(p.shape))
        elif leaf == "ada_gss":
            p.copy_(randn(p.shape) / p.shape[-1] ** 0.5)
        elif leaf == "cfg_uncond":
            p.copy_(randn(p.shape).clamp_(-2, 2) * 1.2 / p.shape[-1] ** 0.5)
        elif p.ndim == 1 and ("norm" in name):
            p.copy_((1.0 if leaf == "weight" else 0.0) + 0.05 * randn(p.shape))
        elif p.ndim == 1:
            p.copy_(0.02 * randn(p.shape))
        else:
            fan_in = p[0].numel() if p.ndim > 1 else p.numel()
            p.copy_(randn(p.shape) * (1.0 / fan_in) ** 0.5)
    return module


def build_random_infinity(cfg: InfinityConfig, seed: int = 0, device: str | torch.device = "cpu") -> Infinity:
    with torch.device(device):
        model = Infinity(cfg)
    random_init(model, seed)
    return model.eval()


def build_random_vae(cfg: VAEConfig, seed: int = 1, device: str | torch.device = "cpu") -> BSQVAEDecoder:
    with torch.device(device):
        vae = BSQVAEDecoder(cfg)
    return random_init(vae, seed).eval()


def save_state_dict(module_or_sd: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                    wrap_key: str | None = None) -> Path:
    """Atomically write a state dict (``.pth``, optionally wrapped as upstream's VAE file, or ``.safetensors``)."""
    path = Path(path)
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, nn.Module) else dict(module_or_sd)
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, tmp)
        else:
            torch.save({wrap_key: sd} if wrap_key else sd, tmp)
    return path
