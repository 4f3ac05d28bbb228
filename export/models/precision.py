"""The precisions the reference models compute in, and the one way they switch: both families keep their
blocks' weights (and so the blocks' matmuls, attention and K/V) in the compute dtype, the rest in fp32."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cast_blocks(blocks: Iterable[nn.Module], precision: str) -> torch.dtype:
    """Round the blocks' parameters and buffers to ``precision`` in place; returns its dtype."""
    if precision not in PRECISIONS:
        raise ValueError(f"unsupported precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    for blk in blocks:
        blk.to(dtype)
    return dtype
