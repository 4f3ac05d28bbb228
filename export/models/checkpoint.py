"""Loading upstream checkpoints strictly, inferring every dimension from tensor shapes.

Transformer: a plain state dict in one ``.pth`` (2B, 125M), a ``.safetensors`` file, or sharded
safetensors (a folder or its ``*.index.json``; the 8B). VAE: ``{"vae": state_dict}`` (upstream's file,
encoder included) or a bare state dict, with upstream's wrapped (``conv_in.conv.weight``) or plain
(``conv_in.weight``) key forms. Pickles are opened with ``weights_only=True`` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from fastvar.atomic import atomic_path
from fastvar.export.models.bsq_vae import BSQVAEDecoder
from fastvar.export.models.checkpoint_files import read_state_dict
from fastvar.export.models.infinity import Infinity
from fastvar.export.models.infinity_config import InfinityConfig, VAEConfig
from fastvar.export.models.limits import (
    CHANNELS,
    CODE_CHANNELS,
    DEPTH,
    FFN,
    HEADS,
    LEVELS,
    RES_BLOCKS,
    TEXT_CHANNELS,
    TEXT_TOKENS,
    WIDTH,
)
from fastvar.export.models.state_dict_checks import (
    CheckpointError,
    check_finite,
    count_of,
    dim,
    indices,
    tensor_entries,
)

# Buffers that older upstream checkpoints carry and upstream's own loader drops.
_LEGACY_KEYS = ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")
# Parts of upstream's VAE file that decoding does not use.
_VAE_IGNORED_PREFIXES = ("encoder.", "quantizer.", "quantize.")


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
        lines = [f"{what} does not match the model (strict load):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if shapes:
            lines.append(f"  mis-shaped keys ({len(shapes)}): {'; '.join(shapes[:20])}")
        raise CheckpointError("\n".join(lines))


# ---- transformer ---------------------------------------------------------------------------------

# At most 9 digits: a longer number is no block of ours and is reported as an unexpected key.
_CHUNK_RE = re.compile(r"^block_chunks\.(\d{1,9})\.module\.(\d{1,9})\.")
_FLAT_RE = re.compile(r"^blocks\.(\d{1,9})\.")


def _infinity_depth(sd: Mapping[str, torch.Tensor], source: str) -> tuple[int, int, str]:
    """(depth, block_chunks, block 0's prefix) from the block keys: every chunk 0..C-1 holding blocks
    0..P-1, or flat blocks 0..D-1, with C, P and D bounded before anything is built."""
    chunked = {(int(m.group(1)), int(m.group(2))) for k in sd if (m := _CHUNK_RE.match(k))}
    if chunked:
        chunks = count_of({c for c, _ in chunked}, DEPTH, "block_chunks", "block_chunks.{c}", source)
        per = count_of({j for _, j in chunked}, DEPTH, "blocks per chunk", "block_chunks.{c}.module.{j}", source)
        if not DEPTH.holds(chunks * per):
            raise CheckpointError(f"{source}: {chunks} chunks of {per} blocks give depth {chunks * per}; "
                                  f"accepted: {DEPTH.accepted()}")
        absent = sorted({(c, j) for c in range(chunks) for j in range(per)} - chunked)
        if absent:
            raise CheckpointError(f"{source}: every chunk must hold the same blocks; block_chunks.{absent[0][0]}"
                                  f".module.{absent[0][1]}.* is absent ({len(absent)} blocks in all)")
        return chunks * per, chunks, "block_chunks.0.module.0."
    flat = indices(sd, _FLAT_RE)
    if flat:
        return count_of(flat, DEPTH, "depth", "blocks.{i}", source), 1, "blocks.0."
    raise CheckpointError(f"{source}: not an Infinity transformer checkpoint: no block_chunks.{{c}}.module.{{j}}.* "
                          "or blocks.{i}.* keys")


def _require_transformer_keys(sd: Mapping, source: str) -> None:
    need = ("pos_start", "word_embed.weight", "text_norm.weight", "cfg_uncond", "text_proj_for_sos.ca.mat_q")
    absent = [k for k in need if k not in sd]
    if absent:
        raise CheckpointError(
            f"{source}: not an Infinity transformer checkpoint: it lacks {', '.join(absent)} "
            f"(it has {len(sd)} keys, e.g. {', '.join(map(str, list(sd)[:5]))})"
        )


def infer_infinity_config(sd: Mapping[str, torch.Tensor], vae: VAEConfig | None = None,
                          name: str = "infinity-ckpt", source: str = "transformer checkpoint") -> InfinityConfig:
    """Read depth, width, heads, bits, FFN and text sizes off a transformer state dict (each rank-checked
    and bounded before it is used)."""
    _require_transformer_keys(sd, source)
    depth, block_chunks, first = _infinity_depth(sd, source)
    absent = [first + k for k in ("sa.scale_mul_1H11", "ffn.fc1.weight") if first + k not in sd]
    if absent:
        raise CheckpointError(f"{source}: not an Infinity transformer checkpoint: block 0 lacks {', '.join(absent)}")
    width = dim(sd, "pos_start", 3, 2, WIDTH, "width", source)
    heads = dim(sd, first + "sa.scale_mul_1H11", 4, 1, HEADS, "heads", source)
    bits = dim(sd, "word_embed.weight", 2, 1, CODE_CHANNELS, "bits per token", source)
    if vae is None:
        vae = VAEConfig(codebook_dim=bits)
    if bits == vae.codebook_dim:
        patchify = False
    elif bits == 4 * vae.codebook_dim:
        patchify = True
    else:
        raise CheckpointError(
            f"{source}: the transformer predicts {bits} bits per token but the VAE codes {vae.codebook_dim}: they "
            "are not a pair (expected equal, or 4x with spatial patchify as in Infinity-8B)"
        )
    try:
        return InfinityConfig(
            name=name, depth=depth, width=width, heads=heads, vae=vae, spatial_patchify=patchify,
            mlp_hidden=dim(sd, first + "ffn.fc1.weight", 2, 0, FFN, "FFN width", source), block_chunks=block_chunks,
            text_channels=dim(sd, "text_norm.weight", 1, 0, TEXT_CHANNELS, "text channels", source),
            text_maxlen=dim(sd, "cfg_uncond", 2, 0, TEXT_TOKENS, "text length", source),
            pool_heads=dim(sd, "text_proj_for_sos.ca.mat_q", 3, 1, HEADS, "text pool heads", source),
        )
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{source}: {err}") from None


def load_infinity(path: str | os.PathLike, vae: VAEConfig | None = None) -> Infinity:
    """Build an Infinity of the checkpoint's size on the meta device, compare it with every tensor, then
    load it strictly (fp32; each weight checked finite as it is converted)."""
    source = f"transformer checkpoint {path}"
    raw = read_state_dict(path)
    for k in _LEGACY_KEYS:
        raw.pop(k, None)
    _require_transformer_keys(raw, source)
    sd = tensor_entries(raw, source)
    cfg = infer_infinity_config(sd, vae, name=f"infinity-ckpt:{Path(path).name}", source=source)
    with torch.device("meta"):
        model = Infinity(cfg)
    _check_strict(model, sd, source)
    return load_into_meta(model, sd, source).eval()


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

    Building on meta skips a random initialisation the checkpoint would overwrite, and allocates nothing a
    file's numbers ask for before its tensors are compared. Each weight is converted and checked finite one
    at a time (a NaN weight gives a meaningless image, not an error). Anything the state dict does not hold
    must have been made on a real device, or it would stay without data and fail only when generating: that
    is checked here, once, so a loader cannot hand out a half-loaded model."""
    loaded = {}
    for k, v in sd.items():
        t = v.float()
        check_finite(k, t, what)
        loaded[k] = t
    model.load_state_dict(loaded, strict=True, assign=True)
    left = sorted({name for name, t in _module_tensors(model) if t.is_meta})
    if left:
        raise RuntimeError(f"{what}: {len(left)} tensors are not in the checkpoint and were never materialised "
                           f"(first: {', '.join(left[:3])}); the model must create its constants on a real device")
    return model


# ---- VAE -----------------------------------------------------------------------------------------

_UP_RE = re.compile(r"^decoder\.up\.(\d{1,9})\.block\.(\d{1,9})\.conv1\.conv\.weight$")
_UPSAMPLE_RE = re.compile(r"^decoder\.up\.(\d{1,9})\.upsample\.")


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


def _vae_decoder_dict(raw: Mapping, source: str) -> dict[str, torch.Tensor]:
    sd = raw
    if isinstance(sd.get("vae"), Mapping):
        sd = sd["vae"]
    elif isinstance(sd.get("ema"), Mapping):
        sd = sd["ema"]
    kept = {k: v for k, v in sd.items() if not (isinstance(k, str) and k.startswith(_VAE_IGNORED_PREFIXES))}
    out = {_wrapped_key(k): v for k, v in tensor_entries(kept, source).items()}
    if not any(k.startswith("decoder.") for k in out):
        raise CheckpointError(
            f"{source} is not an Infinity BSQ VAE checkpoint: no decoder.* keys "
            f"(accepted: {{'vae': state_dict}} or a bare state dict with decoder.conv_in.conv.weight, ...)"
        )
    return out


def infer_vae_config(sd: Mapping[str, torch.Tensor], source: str = "VAE checkpoint") -> VAEConfig:
    """Code width, per-level channels, blocks per level and upsampling levels, from the decoder keys (levels
    and blocks numbered exactly 0..n-1, every number bounded)."""
    if "decoder.conv_in.conv.weight" not in sd:
        raise CheckpointError(f"{source} lacks decoder.conv_in.conv.weight")
    codebook_dim = dim(sd, "decoder.conv_in.conv.weight", 4, 1, CODE_CHANNELS, "code width", source)
    found = {(int(m.group(1)), int(m.group(2))) for k in sd if (m := _UP_RE.match(k))}
    n_levels = count_of({lv for lv, _ in found}, LEVELS, "levels", "decoder.up.{level}", source)
    blocks = {lv: {b for v, b in found if v == lv} for lv in range(n_levels)}
    counts = {lv: count_of(bs, RES_BLOCKS, "blocks", f"decoder.up.{lv}.block.{{j}}", source)
              for lv, bs in blocks.items()}
    if len(set(counts.values())) != 1:
        raise CheckpointError(f"{source}: the decoder levels have different block counts: {counts}")
    ups = indices(sd, _UPSAMPLE_RE)
    if not ups <= set(range(n_levels)):
        raise CheckpointError(f"{source}: upsampler of level {max(ups)} but only levels 0..{n_levels - 1} exist")
    channels = tuple(dim(sd, f"decoder.up.{lv}.block.0.conv1.conv.weight", 4, 0, CHANNELS, f"level {lv} channels",
                         source) for lv in range(n_levels))
    return VAEConfig(codebook_dim=codebook_dim, level_channels=channels,
                     num_res_blocks=counts[0] - 1, upsample_levels=tuple(sorted(ups)))


def load_vae(path: str | os.PathLike) -> BSQVAEDecoder:
    """Build the decoder of the checkpoint's size on the meta device, compare it with every tensor, and
    load it strictly (encoder and quantizer ignored; each weight checked finite)."""
    source = f"VAE checkpoint {path}"
    sd = _vae_decoder_dict(read_state_dict(path), source)
    cfg = infer_vae_config(sd, source)
    try:
        with torch.device("meta"):
            vae = BSQVAEDecoder(cfg)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    _check_strict(vae, sd, source)
    return load_into_meta(vae, sd, source).eval()


# ---- random weights and saving -------------------------------------------------------------------

_DEFAULT_INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
                  "xavier_normal_", "kaiming_uniform_", "kaiming_normal_")


@contextlib.contextmanager
def no_default_init() -> Iterator[None]:
    """Module constructors fill every parameter with torch's default initialisation, which the random
    initialisers here overwrite in full: skipping it halves the time to build random weights (the 2B holds 2.2
    billion values). Parameters built inside are uninitialised until overwritten; buffers are not touched
    (their constructors set them without ``nn.init``)."""
    saved = {name: getattr(nn.init, name) for name in _DEFAULT_INITS}
    for name in _DEFAULT_INITS:
        setattr(nn.init, name, _leave)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _leave(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


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
    with torch.device(device), no_default_init():
        model = Infinity(cfg)
    random_init(model, seed)
    return model.eval()


def build_random_vae(cfg: VAEConfig, seed: int = 1, device: str | torch.device = "cpu") -> BSQVAEDecoder:
    with torch.device(device), no_default_init():
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
