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
# The inputs a graph's activations flow from (the rest are state: weights, caches, conditioning, noise); see
# fastvar.graph_memory.stream_last
STREAM_INPUTS = frozenset({CODES, X_IN, SOS, HIDDEN})

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


# ---- what the runtime feeds and reads, by graph kind -----------------------------------------------------------
# A graph file's interface is judged against these (``fastvar.graph_io``): a name outside them is one no backend
# feeds or reads, so the graph would fail at run time however well it matches its manifest.
_FIXED: dict[tuple[str, bool], frozenset[str]] = {  # (kind, output) -> the names without a block
    ("condition", False): frozenset({TEXT, TEXT_LENGTHS}),
    ("condition", True): frozenset({SOS, GSS, HEAD_SCALE, HEAD_SHIFT, TEXT_MASK, CONTEXT_POS}),
    ("step", False): frozenset({SOS, CODES, X_IN, GSS, HEAD_SCALE, HEAD_SHIFT, TEXT_MASK, CONTEXT_POS, CFG_SCALE,
                                INV_TAU, NOISE}),
    ("step", True): frozenset({LOGITS, BITS, HIDDEN}),
    ("decoder", False): frozenset({CODES, F_HAT}),
    ("decoder", True): frozenset({IMAGE}),
    ("diffusion", False): frozenset({HIDDEN, DISCRETE, NOISE, CFG_SCALE}),
    ("diffusion", True): frozenset({RESIDUAL}),
    ("next_input", False): frozenset({F_HAT, TOKENS}),
    ("next_input", True): frozenset({F_HAT_NEXT, X_NEXT}),
}
_PER_BLOCK: dict[tuple[str, bool], tuple[str, ...]] = {  # (kind, output) -> the prefixes of per-block names
    ("condition", True): (_CA_K, _CA_V),
    ("step", False): (_CA_K, _CA_V, _PAST_K, _PAST_V, _CACHE),
    ("step", True): (_NEW_K, _NEW_V, _CACHE, _KEPT),
}
_REQUIRED: dict[tuple[str, bool], tuple[str, ...]] = {  # names the runtime feeds or reads unconditionally
    ("condition", False): (TEXT, TEXT_LENGTHS),
    ("condition", True): (HEAD_SCALE,),
    ("step", True): (LOGITS,),
    ("decoder", True): (IMAGE,),
    ("diffusion", False): (HIDDEN, DISCRETE, NOISE),
    ("diffusion", True): (RESIDUAL,),
    ("next_input", False): (F_HAT, TOKENS),
    ("next_input", True): (F_HAT_NEXT, X_NEXT),
}
# Infinity's steps are fed by role (``runtime.backends.feeds.role_feeds``): these always, whatever the graph lists
_INFINITY_REQUIRED: dict[tuple[str, bool], tuple[str, ...]] = {
    ("condition", True): (SOS, GSS, HEAD_SCALE, HEAD_SHIFT, TEXT_MASK),
    ("step", False): (GSS, HEAD_SCALE, HEAD_SHIFT, TEXT_MASK, INV_TAU, NOISE),
}
_SUBLAYERS = frozenset(INFINITY_SUBLAYERS + HART_SUBLAYERS)


def _as_step(kind: str, output: bool) -> tuple[str, bool]:
    """A validation variant takes a step's inputs plus the kept indices, and gives a step's outputs."""
    return ("step" if kind == "validate" else kind), output


def _block_name(name: str, prefixes: tuple[str, ...], depth: int) -> bool:
    """``name`` is a per-block name of one of ``prefixes`` for a block below ``depth`` (written as
    ``past_k`` or ``cache`` above write it: no sign, no leading zero, a known sub-layer)."""
    for prefix in prefixes:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        if prefix in (_CACHE, _KEPT):
            sub, _, rest = rest.rpartition("_")
            if sub not in _SUBLAYERS:
                continue
        if rest.isdecimal() and rest.isascii() and str(int(rest)) == rest and int(rest) < depth:
            return True
    return False


def unknown_names(kind: str, names: list[str], output: bool, depth: int) -> list[str]:
    """The inputs (or outputs) of a ``kind`` graph that no backend feeds (or reads), for a model of ``depth``
    blocks."""
    key = _as_step(kind, output)
    fixed = _FIXED.get(key, frozenset())
    prefixes = _PER_BLOCK.get(key, ()) + ((_KEPT,) if kind == "validate" and not output else ())
    return [n for n in names if n not in fixed and not _block_name(n, prefixes, depth)]


def missing_names(kind: str, names: list[str], output: bool, family: str) -> list[str]:
    """The inputs (or outputs) the runtime always feeds (or reads) for a ``kind`` graph of ``family`` that
    ``names`` lacks."""
    key = _as_step(kind, output)
    required = _REQUIRED.get(key, ()) + (_INFINITY_REQUIRED.get(key, ()) if family == "infinity" else ())
    return [n for n in required if n not in names]
