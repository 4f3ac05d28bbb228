"""What one step is called with besides the state the backend holds (conditioning, KV prefix, caches).

The fields carry the step graphs' per-call inputs (``graph_names``: ``codes``/``x_in``, ``cfg_scale``,
``inv_tau``, ``noise``); a family fills only what its graphs take (HART samples in the loop: no τ, no noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepCall:
    state: torch.Tensor | None  # the previous scales' input: Infinity's upsampled codes, HART's x_in (None at step 0)
    cfg_scale: float  # the guidance weight this step mixes with (Infinity: cfg; HART: cfg times the step's ratio)
    write_kv: bool  # whether the step's new K/V are kept (not after the last executed step)
    inv_tau: float | None = None  # Infinity's in-graph sampling temperature, 1/τ
    noise: torch.Tensor | None = None  # Infinity's in-graph sampling uniforms (B, tokens, bits)
