"""What a step graph is fed, the same for every graph backend (ONNX Runtime, TensorRT).

The conditioning outputs, the KV prefixes, the restore caches and the per-call scalars are matched to a
step graph's inputs by name; a graph takes only what its step needs (step 0 has no past, only pruned
steps take restore caches, a graph without guidance has no ``cfg_scale``).
"""

from __future__ import annotations

import torch

from fastvar import graph_names as gn
from fastvar.export.graphs import TORCH_DTYPES
from fastvar.manifest import Artifact, ArtifactError
from fastvar.runtime.kv_cache import KVCache
from fastvar.runtime.step_call import StepCall

CONDITION_FEEDS = (gn.GSS, gn.HEAD_SCALE, gn.HEAD_SHIFT, gn.TEXT_MASK)


def step_feeds(family, graph: str, inputs: dict, cond: dict[str, torch.Tensor], kv: KVCache,
               caches: dict[str, torch.Tensor], index: int, call: StepCall, device: torch.device,
               host_values: bool = False) -> dict[str, torch.Tensor]:
    """Every input of one step graph (``inputs``: its name -> spec table), weights excepted, as the model
    family feeds it (Infinity by role, ``role_feeds``; HART by name, ``named_feeds``).

    ``host_values``: leave the scalars and the noise on the host (a backend that stages them into device
    buffers asynchronously; creating them on a GPU here would wait for the stream)."""
    values = torch.device("cpu") if host_values else device
    return family.step_feeds(graph, inputs, cond, kv, caches, index, call, device, values)


def role_feeds(inputs: dict, cond: dict[str, torch.Tensor], kv: KVCache, caches: dict[str, torch.Tensor], index: int,
               call: StepCall, device: torch.device, values: torch.device) -> dict[str, torch.Tensor]:
    """Infinity's step inputs: the conditioning, ``sos`` or ``codes``, τ and the noise of the in-graph sampling,
    cross-attention K/V, past K/V and restore caches; scalars and noise on ``values``."""
    feeds = {name: cond[name] for name in CONDITION_FEEDS}
    feeds[gn.INV_TAU] = torch.tensor(call.inv_tau, dtype=torch.float32, device=values)
    feeds[gn.NOISE] = call.noise.to(values, torch.float32).contiguous()
    if gn.CFG_SCALE in inputs:
        feeds[gn.CFG_SCALE] = torch.tensor(call.cfg_scale, dtype=torch.float32, device=values)
    if index == 0:
        feeds[gn.SOS] = cond[gn.SOS]
    else:
        feeds[gn.CODES] = call.state.to(device, torch.float32).contiguous()
    for name in inputs:
        if gn.is_cross_kv(name):
            feeds[name] = cond[name]
        elif (i := gn.past_k_block(name)) is not None:
            feeds[name], feeds[gn.past_v(i)] = kv.past(i)
        elif gn.is_cache(name):
            feeds[name] = caches[name]
    return feeds


def padded_text(text: torch.Tensor, cfg_active: bool, guidance: bool, text_len: int) -> torch.Tensor:
    """The text states padded to the artifact's bucket (on the host), after checking the run fits the
    artifact: guidance rows as exported, no more tokens than the bucket holds."""
    if cfg_active != guidance:
        raise ArtifactError("this artifact was exported " + ("with" if guidance else "without")
                            + " classifier-free guidance; " + ("cfg must be != 1 to use it" if guidance
                                                               else "run it with --cfg 1"))
    b, lt, d = text.shape
    if lt > text_len:
        raise ArtifactError(f"the text has {lt} tokens; this artifact's text bucket holds {text_len} "
                            "(re-export with a larger --text-len)")
    padded = torch.zeros((b, text_len, d), dtype=torch.float32)
    padded[:, :lt] = text
    return padded


def named_feeds(graph: str, inputs: dict, values: dict[str, torch.Tensor], cond: dict[str, torch.Tensor],
                kv: KVCache, caches: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every input of a step graph found by its name alone: a per-call value, a conditioning output, a KV
    prefix or a restore cache (HART's steps; weights excepted). A name found nowhere is an error."""
    feeds: dict[str, torch.Tensor] = {}
    for name in inputs:
        if name in values:
            feeds[name] = values[name]
        elif name in cond:
            feeds[name] = cond[name]
        elif (i := gn.past_k_block(name)) is not None:
            feeds[name], feeds[gn.past_v(i)] = kv.past(i)
        elif gn.is_past_v(name):
            continue
        elif name in caches:
            feeds[name] = caches[name]
        else:
            raise ValueError(f"{graph}: nothing provides its input {name!r}")
    return feeds


def kv_dtype(art: Artifact) -> torch.dtype:
    """The KV cache's dtype: what the step graphs write (fp32 when no step writes any)."""
    for g in art.manifest.graphs.values():
        for t in g.outputs:
            if gn.is_new_k(t.name):
                return TORCH_DTYPES[t.dtype]
    return torch.float32
