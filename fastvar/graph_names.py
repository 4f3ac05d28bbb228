"""Every name a graph input or output carries, written once.

The export spells graph interfaces with these, the backends feed and read them, the golden recorders and
validation match them: nothing else formats or parses a tensor name. Per-block names end in ``_{block}``;
restore caches and kept indices also name the sub-layer (Infinity: sa/ca/ffn, HART: attn/mlp). The names
are part of the artifact format: changing one changes every graph file and golden.
"""

from __future__ import annotations

# Infinity restores self-attention, cross-attention and FFN outputs; HART has attention and MLP only.
INFINITY_SUBLAYERS = ("sa", "ca", "ffn")
HART_SUBLAYERS = ("attn", "mlp")

# conditioning graph: inputs, then the per-image outputs every step reads
TEXT = "text"
TEXT_LENGTHS = "text_lengths"
SOS = "sos"
GSS = "gss"
HEAD_SCALE = "head_scale"
HEAD_SHIFT = "head_shift"
TEXT_MASK = "text_mask"
CONTEXT_POS = "context_pos"

# step graphs: per-call inputs and per-step outputs
CODES = "codes"  # Infinity: the upsampled summed codes of the previous scales (also the decoder's input)
X_IN = "x_in"  # HART: the next scale's input vectors
CFG_SCALE = "cfg_scale"  # the guidance weight (Infinity: cfg; HART: the per-step weight)
INV_TAU = "inv_tau"
NOISE = "noise"
LOGITS = "logits"
BITS = "bits"
HIDDEN = "hidden"  # HART: the last step's hidden states, the diffusion head's input

# HART's diffusion, next-input and decoder graphs
DISCRETE = "discrete"
RESIDUAL = "residual"
F_HAT = "f_hat"
TOKENS = "tokens"
F_HAT_NEXT = "f_hat_next"
X_NEXT = "x_next"
IMAGE = "image"

_PAST_K, _PAST_V, _NEW_K, _NEW_V, _CA_K, _CA_V = "past_k_", "past_v_", "new_k_", "new_v_", "ca_k_", "ca_v_"
_CACHE, _KEPT = "cache_", "kept_"


def past_k(block: int) -> str:
    return f"{_PAST_K}{block}"


def past_v(block: int) -> str:
    return f"{_PAST_V}{block}"


def new_k(block: int) -> str:
    return f"{_NEW_K}{block}"


def new_v(block: int) -> str:
    return f"{_NEW_V}{block}"


def ca_k(block: int) -> str:
    return f"{_CA_K}{block}"


def ca_v(block: int) -> str:
    return f"{_CA_V}{block}"


def cache(sub: str, block: int) -> str:
    """A FastVAR restore cache: sub-layer ``sub``'s output of ``block`` at the cache step."""
    return f"{_CACHE}{sub}_{block}"


def kept(sub: str, block: int) -> str:
    """The kept-token indices of ``block``'s sub-layer ``sub`` at a pruned step."""
    return f"{_KEPT}{sub}_{block}"


def _block(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def new_kv_block(name: str) -> int | None:
    """The block whose new K or V an output holds (``new_k_3`` -> 3); None for other names."""
    return _block(name) if name.startswith((_NEW_K, _NEW_V)) else None


def past_k_block(name: str) -> int | None:
    """The block whose past K an input takes (``past_k_3`` -> 3); None for other names."""
    return _block(name) if name.startswith(_PAST_K) else None


def is_new_k(name: str) -> bool:
    return name.startswith(_NEW_K)


def is_past_v(name: str) -> bool:
    return name.startswith(_PAST_V)


def is_cross_kv(name: str) -> bool:
    return name.startswith((_CA_K, _CA_V))


def is_block_state(name: str) -> bool:
    """A per-block K/V (past, new, cross-attention) or restore cache: reports fold these into one line."""
    return name.startswith((_PAST_K, _PAST_V, _NEW_K, _NEW_V, _CA_K, _CA_V, _CACHE))


def is_cache(name: str) -> bool:
    return name.startswith(_CACHE)


def is_kept(name: str) -> bool:
    return name.startswith(_KEPT)


# graphs of an artifact (also their file names under graphs/ and their engines' names)
CONDITION_GRAPH = "condition"
DECODER_GRAPH = "decoder"
DIFFUSION_GRAPH = "diffusion"
_VALIDATE = "_validate"


def step_graph(index: int) -> str:
    return f"step_{index:02d}"


def validate_graph(index: int) -> str:
    """A pruned step's validation variant: its kept indices are inputs, so a comparison judges the rest."""
    return f"{step_graph(index)}{_VALIDATE}"


def is_validate_graph(name: str) -> bool:
    return name.endswith(_VALIDATE)


def next_input_graph(index: int) -> str:
    """HART's tokenizer step after scale ``index``: f_hat update and the next scale's input."""
    return f"next_input_{index:02d}"
