"""Build a (transformer, decoder) pair from a preset with random weights, or from upstream checkpoints."""

from __future__ import annotations

from dataclasses import dataclass


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


def build_pair(model: str, ckpt: str | None = None, vae: str | None = None, random_init: bool = False,
               depth: int | None = None, seed: int = 0, precision: str = "fp32") -> tuple:
    """``--random-init`` takes the preset's geometry (``depth`` may override it); a checkpoint brings its own.

    The model name's family builds it: Infinity returns (Infinity, BSQVAEDecoder) from ``--ckpt`` and
    ``--vae``; HART returns (HART, HARTTokenizer) from its release folder (``llm/`` + ``tokenizer/``)."""
    from fastvar.family import for_model

    return for_model(model).build_pair(model, ckpt, vae, random_init, depth, seed, precision)
