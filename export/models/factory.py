"""Build a (transformer, VAE) pair from a preset with random weights, or from upstream checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

from fastvar.export.models.bsq_vae import BSQVAEDecoder
from fastvar.export.models.checkpoint import build_random_infinity, build_random_vae, load_infinity, load_vae
from fastvar.export.models.infinity import Infinity
from fastvar.export.models.infinity_config import preset


@dataclass
class ModelOptions:
    """What every stage needs to know to build a model and its schedule (export and direct runs)."""

    model: str = "infinity-tiny"
    ckpt: str | None = None
    vae: str | None = None
    random_init: bool = False
    depth: int | None = None
    weights_seed: int = 0
    res: str = "1024"
    aspect: str = "1:1"
    schedule: str = "fastvar"
    precision: str = "fp32"
    batch: int = 1


def is_hart(model: str) -> bool:
    """Model names starting with ``hart`` are the HART family; every other name is Infinity."""
    return model.startswith("hart")


def build_pair(model: str, ckpt: str | None = None, vae: str | None = None, random_init: bool = False,
               depth: int | None = None, seed: int = 0,
               precision: str = "fp32") -> tuple[Infinity, BSQVAEDecoder]:
    """``--random-init`` takes the preset's geometry (``depth`` may override it); a checkpoint brings its own.

    HART names return (HART, HARTTokenizer); ``ckpt`` is then the release folder (``llm/`` + ``tokenizer/``)."""
    if is_hart(model):
        return build_hart_pair(model, ckpt, vae, random_init, depth, seed, precision)
    cfg = preset(model)
    if random_init:
        if ckpt or vae:
            raise ValueError("--random-init and --ckpt/--vae exclude each other: pick one")
        if depth is not None:
            cfg = cfg.with_depth(depth)
        transformer = build_random_infinity(cfg, seed)
        decoder = build_random_vae(cfg.vae, seed + 1)
    else:
        if not (ckpt and vae):
            raise ValueError("give both --ckpt (transformer) and --vae (VAE) checkpoints, or --random-init")
        if depth is not None:
            raise ValueError("--depth only applies with --random-init; a checkpoint's depth is read from it")
        decoder = load_vae(vae)
        transformer = load_infinity(ckpt, decoder.cfg)
    return transformer.set_precision(precision), decoder


def build_hart_pair(model: str, ckpt: str | None = None, vae: str | None = None, random_init: bool = False,
                    depth: int | None = None, seed: int = 0, precision: str = "fp32"):
    """HART from its preset (random weights) or from upstream's release folder given as ``--ckpt DIR``."""
    from fastvar.export.models import hart_checkpoint
    from fastvar.export.models.hart_config import preset as hart_preset

    if precision != "fp32":
        raise ValueError(f"HART runs in fp32 only so far (got --precision {precision}); see docs/design/hart.md")
    if vae:
        raise ValueError("HART reads its tokenizer from the release folder's tokenizer/: give --ckpt DIR, not --vae")
    cfg = hart_preset(model)
    if random_init:
        if ckpt:
            raise ValueError("--random-init and --ckpt exclude each other: pick one")
        if depth is not None:
            cfg = cfg.with_depth(depth)
        return (hart_checkpoint.build_random_hart(cfg, seed),
                hart_checkpoint.build_random_tokenizer(cfg.tokenizer, seed + 1))
    if not ckpt:
        raise ValueError("give --ckpt DIR (upstream's hart-0.7b-1024px folder with llm/ and tokenizer/), "
                         "or --random-init")
    if depth is not None:
        raise ValueError("--depth only applies with --random-init; a checkpoint's depth is read from it")
    return hart_checkpoint.load_hart_pair(ckpt)
