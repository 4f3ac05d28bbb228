"""Loading HART checkpoints in upstream's layout strictly, and writing that layout (tests, demos).

Upstream ships ``hart-0.7b-1024px/llm/`` (a Hugging Face ``PreTrainedModel`` folder: ``config.json`` with
``model_type = "hart_transformer_t2i"`` and the weights, plus ``ema_model.bin``, a plain state dict that
sample.py loads over the model with ``load_state_dict``, strict) and ``hart-0.7b-1024px/tokenizer/``
(``HARTAutoEncoderWithDisc``: ``vae.*`` and ``disc.*`` keys), found as the sibling of ``llm/``. Weights
are read as safetensors (single or sharded) or as pickles with ``weights_only=True`` only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from fastvar.atomic import atomic_path
from fastvar.export.models.checkpoint import _check_strict, load_into_meta, no_default_init, save_state_dict
from fastvar.export.models.checkpoint_files import read_json, read_state_dict
from fastvar.export.models.hart import HART, UNUSED_BUFFERS
from fastvar.export.models.hart_config import (
    HF_MODEL_TYPE,
    HF_TOKENIZER_TYPE,
    HARTConfig,
    HARTTokenizerConfig,
    from_hf_config,
    tokenizer_from_hf_config,
    tokenizer_to_hf_config,
    unsupported,
)
from fastvar.export.models.hart_tokenizer import HARTTokenizer
from fastvar.export.models.state_dict_checks import (
    CheckpointError,
    expect_count,
    expect_dim,
    indices,
    tensor_entries,
)

EMA_FILE = "ema_model.bin"
# Weight files of a Hugging Face folder, in the order from_pretrained prefers them.
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")
# Tokenizer keys (after the ``vae.`` prefix) that decoding never reads.
_TOKENIZER_IGNORED = ("encoder.", "quant_conv.", "quantize.ema_vocab_hit_SV", "decoder2.", "post_quant_conv2.")


# Keys by which a Hugging Face config asks for code shipped with the checkpoint.
_REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")
_BLOCK_RE = re.compile(r"^blocks\.(\d{1,9})\.")
_DIFF_BLOCK_RE = re.compile(r"^diffloss\.net\.res_blocks\.(\d{1,9})\.")
_LEVEL_RE = re.compile(r"^decoder\.up\.(\d{1,9})\.")
_SHARED_RE = re.compile(r"^quantize\.quant_resi\.qresi_ls\.(\d{1,9})\.")


def _remote_code_keys(hf: dict) -> list[str]:
    """Every key, at any depth, that names custom code (walked iteratively: a config may nest deeply)."""
    found, todo = [], [hf]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if k in _REMOTE_CODE_KEYS:
                found.append(k)
            todo.append(v)
    return sorted(set(found))


def read_hf_config(folder: str | os.PathLike, model_type: str) -> dict:
    """``config.json`` of a checkpoint folder, checked to be the expected upstream model type.

    A config naming custom code (``auto_map``, ``trust_remote_code``) is refused: folders are read as JSON
    and tensors only, and nothing in this project passes ``trust_remote_code=True`` to any loader (nor loads a
    folder through ``from_pretrained`` at all), so a file in a checkpoint folder can never run code."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist (expected upstream's HF layout: "
                              "a folder with config.json and the weights)")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; a HART checkpoint folder holds config.json "
                              f"(model_type {model_type!r}) next to its weights")
    hf = read_json(path, "config.json")
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} holds a {type(hf).__name__}, not a JSON object")
    remote = _remote_code_keys(hf)
    if remote:
        raise CheckpointError(f"{path} names custom code ({', '.join(remote)}): checkpoint folders are never loaded "
                              "with remote code; accepted: upstream's config.json, which needs none")
    found = hf.get("model_type")
    if found != model_type:
        raise CheckpointError(f"{path} has model_type {found!r}; expected {model_type!r}")
    return hf


def read_hf_weights(folder: Path, keep: Callable[[str], bool]) -> tuple[dict[str, torch.Tensor], Path]:
    """The weights of a Hugging Face folder that ``keep`` selects, checked to be named tensors, and their file."""
    for name in WEIGHT_FILES:
        path = folder / name
        if path.exists():
            return _read_kept(path, keep), path
    raise CheckpointError(f"{folder} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")


def _read_kept(path: Path, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    raw = read_state_dict(path)
    return tensor_entries({k: v for k, v in raw.items() if not isinstance(k, str) or keep(k)}, str(path))


def _transformer_key(key: str) -> bool:
    return key not in UNUSED_BUFFERS


def hart_config_from_folder(folder: str | os.PathLike, tokenizer: HARTTokenizerConfig | None = None) -> HARTConfig:
    """The transformer's config; the codebook size comes from ``tokenizer`` or the sibling ``tokenizer/``."""
    folder = Path(folder)
    hf = read_hf_config(folder, HF_MODEL_TYPE)
    bad = unsupported(hf)
    if bad:
        raise CheckpointError(f"{folder / 'config.json'} selects HART branches this reference does not build: "
                              + "; ".join(bad))
    if tokenizer is None:
        sibling = folder.parent / "tokenizer"
        if (sibling / "config.json").exists():
            tokenizer = _tokenizer_config(sibling)
    try:
        return from_hf_config(hf, tokenizer, name=f"hart-ckpt:{folder.name}")
    except ValueError as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from None


def _tokenizer_config(folder: Path) -> HARTTokenizerConfig:
    hf = read_hf_config(folder, HF_TOKENIZER_TYPE)
    try:
        return tokenizer_from_hf_config(hf)
    except ValueError as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from None


def _check_transformer_shapes(cfg: HARTConfig, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """config.json's numbers against the tensors that carry them, before anything is built from them."""
    expect_count(indices(sd, _BLOCK_RE), cfg.depth, "depth", "blocks", source)
    expect_count(indices(sd, _DIFF_BLOCK_RE), cfg.diff_depth, "diff_depth", "diffusion-head blocks", source)
    for field, want, key, axis in (
        ("embed_dim", cfg.width, "word_embed.weight", 0),
        ("the tokenizer's z_channels", cfg.cvae, "word_embed.weight", 1),
        ("context_dim", cfg.context_dim, "context_embed.weight", 1),
        ("the tokenizer's vocab_size", cfg.vocab, "head.weight", 0),
        ("diff_width", cfg.diff_width, "diffloss.net.input_proj.weight", 0),
        ("the FFN width from mlp_ratio", cfg.mlp_hidden, "blocks.0.ffn.gate_proj.weight", 0),
        ("the number of patch_nums", None if cfg.use_timestep_embed else cfg.num_scales, "lvl_embed.weight", 0),
    ):
        if want is not None:
            expect_dim(sd, key, axis, want, field, source)


def load_hart(folder: str | os.PathLike, use_ema: bool = True,
              tokenizer: HARTTokenizerConfig | None = None) -> HART:
    """Build the HART the folder's config.json describes and load its weights strictly (fp32).

    As upstream's sample.py: the folder's weights, then, with ``use_ema``, ``ema_model.bin`` over them
    (both must match the model exactly; unused training buffers are dropped). The config's numbers are
    bounded and compared with the tensors before the model is built (on the meta device); the weights that
    are loaded are checked finite one tensor at a time."""
    folder = Path(folder)
    cfg = hart_config_from_folder(folder, tokenizer)
    sd, path = read_hf_weights(folder, _transformer_key)
    _check_transformer_shapes(cfg, sd, f"{folder / 'config.json'} and {path}")
    with torch.device("meta"):
        model = HART(cfg)
    _check_strict(model, sd, f"HART transformer checkpoint {path}")
    if use_ema:
        path = folder / EMA_FILE
        if not path.exists():
            raise CheckpointError(f"{folder} has no {EMA_FILE} (use_ema=True loads it over the weights, as "
                                  "upstream's sample.py does); pass use_ema=False to use the plain weights")
        sd = _read_kept(path, _transformer_key)
        _check_transformer_shapes(cfg, sd, f"{folder / 'config.json'} and {path}")
        _check_strict(model, sd, f"HART transformer checkpoint {path}")
    return load_into_meta(model, sd, f"HART transformer checkpoint {path}").eval()


def _tokenizer_key(key: str) -> bool:
    """Whether decoding reads this key of the tokenizer (``vae.`` prefix removed): not the encoder's."""
    return not key.startswith(_TOKENIZER_IGNORED)


def _tokenizer_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefixed = any(k.startswith("vae.") for k in sd)
    out = {}
    for k, v in sd.items():
        if prefixed:
            if not k.startswith("vae."):
                continue  # the discriminator (disc.*)
            k = k[len("vae."):]
        if _tokenizer_key(k):
            out[k] = v
    return out


def _check_tokenizer_shapes(cfg: HARTTokenizerConfig, sd: Mapping[str, torch.Tensor], source: str) -> None:
    expect_count(indices(sd, _LEVEL_RE), len(cfg.ch_mult), "len(ch_mult)", "decoder levels", source)
    expect_count(indices(sd, _SHARED_RE), cfg.share_quant_resi, "share_quant_resi", "shared convolutions", source)
    expect_dim(sd, "quantize.embedding.weight", 0, cfg.vocab, "vocab_size", source)
    expect_dim(sd, "quantize.embedding.weight", 1, cfg.cvae, "z_channels", source)
    expect_dim(sd, "decoder.conv_out.weight", 1, cfg.ch * cfg.ch_mult[0], "ch x ch_mult[0]", source)


def load_hart_tokenizer(folder: str | os.PathLike) -> HARTTokenizer:
    """The decode side of upstream's tokenizer folder, loaded strictly (encoder and discriminator ignored),
    built on the meta device only after its config is compared with the tensors; weights checked finite."""
    folder = Path(folder)
    cfg = _tokenizer_config(folder)
    raw, path = read_hf_weights(folder, lambda k: True)
    sd = _tokenizer_dict(raw)
    source = f"HART tokenizer checkpoint {path}"
    _check_tokenizer_shapes(cfg, sd, f"{folder / 'config.json'} and {path}")
    with torch.device("meta"):
        tok = HARTTokenizer(cfg)
    _check_strict(tok, sd, source)
    return load_into_meta(tok, sd, source).eval()


def load_hart_pair(root: str | os.PathLike, use_ema: bool = True) -> tuple[HART, HARTTokenizer]:
    """Upstream's release folder (``hart-0.7b-1024px``): ``tokenizer/`` first, then ``llm/`` sized by it."""
    root = Path(root)
    missing = [name for name in ("llm", "tokenizer") if not (root / name).is_dir()]
    if missing:
        raise CheckpointError(f"{root} lacks {' and '.join(f'{m}/' for m in missing)}; upstream's release folder "
                              "holds llm/ (the transformer) and tokenizer/ (the VQ tokenizer)")
    tok = load_hart_tokenizer(root / "tokenizer")
    return load_hart(root / "llm", use_ema=use_ema, tokenizer=tok.cfg), tok


# ---- random weights and saving -------------------------------------------------------------------

_NORM_WEIGHTS = ("ln_wo_grad.weight", "decoder_norm.weight", "context_norm.weight", "in_ln.weight")


@torch.no_grad()
def random_init_hart(module: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random weights with unit-scale norms and no zero branch (tests, benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        shape = p.shape
        r = torch.randn(shape, generator=g)
        if name.endswith("scale_mul_1H11"):
            val = torch.log(torch.full(shape, 4.0)) + 0.1 * r
        elif name.endswith(_NORM_WEIGHTS) or (p.ndim == 1 and ".norm" in name and name.endswith("weight")):
            val = 1.0 + 0.05 * r
        elif p.ndim == 1:
            val = 0.02 * r
        else:
            val = r * (1.0 / p[0].numel()) ** 0.5
        p.copy_(val.to(p.device, p.dtype))
    return module


def build_random_hart(cfg: HARTConfig, seed: int = 0) -> HART:
    with no_default_init():
        model = HART(cfg)
    return random_init_hart(model, seed).eval()


def build_random_tokenizer(cfg: HARTTokenizerConfig, seed: int = 1) -> HARTTokenizer:
    with no_default_init():
        tok = HARTTokenizer(cfg)
    return random_init_hart(tok, seed).eval()


def _write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2) + "\n")


def save_hart_folder(model: HART, folder: str | os.PathLike, ema: HART | Mapping[str, torch.Tensor] | None = None,
                     weights: str = "model.safetensors") -> Path:
    """Write upstream's ``llm/`` layout: config.json, the weights file and ``ema_model.bin`` (when given)."""
    if weights not in ("model.safetensors", "pytorch_model.bin"):
        raise ValueError(f"weights file {weights!r}: write model.safetensors or pytorch_model.bin")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", model.cfg.to_hf_config())
    save_state_dict(model, folder / weights)
    if ema is not None:
        save_state_dict(ema.state_dict() if isinstance(ema, nn.Module) else ema, folder / EMA_FILE)
    return folder


def save_tokenizer_folder(tok: HARTTokenizer, folder: str | os.PathLike,
                          extra: Mapping[str, torch.Tensor] | None = None,
                          patch_nums: tuple[int, ...] | None = None) -> Path:
    """Write upstream's ``tokenizer/`` layout (``vae.``-prefixed keys; ``extra`` adds e.g. disc.* keys)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = tokenizer_to_hf_config(tok.cfg) if patch_nums is None else tokenizer_to_hf_config(tok.cfg, patch_nums)
    _write_json(folder / "config.json", hf)
    sd = {f"vae.{k}": v for k, v in tok.state_dict().items()}
    sd.update(extra or {})
    save_state_dict(sd, folder / "model.safetensors")
    return folder
