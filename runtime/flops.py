"""Multiply-adds of one generation, counted from the schedule: the compute ceiling of a pruning schedule.

Counted per executed step and block, for every row (CFG doubles them): self-attention projections and
the attention itself over the past plus the new tokens, cross-attention to the text, the FFN, and the
head. A pruned sub-layer runs on its K kept tokens; a pruned block's past holds only kept tokens. The
selection, gathers, restorations and norms are left out (memory-bound, a few % of the total), which is
why this is a ceiling for the speedup and not a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastvar.export.kv_layout import past_lengths
from fastvar.export.models.infinity_config import InfinityConfig
from fastvar.export.schedules import PrunePlan


@dataclass
class StepMacs:
    index: int
    macs: int


def step_macs(cfg: InfinityConfig, plan: PrunePlan, rows: int, batch: int, text_len: int) -> list[StepMacs]:
    c, hidden, depth = cfg.width, cfg.mlp_hidden, cfg.depth
    out = []
    for st in plan.executed:
        past = past_lengths(plan, depth, st.index)
        total = 0
        for i in range(depth):
            q = st.kept if st.pruned and plan.block_pruned(i) else st.tokens
            sa = q * c * 3 * c + q * (past[i] + q) * c * 2 + q * c * c
            ca = q * c * c * 2 + q * text_len * c * 2
            ffn = q * c * hidden * 2
            total += rows * (sa + ca + ffn)
        total += st.tokens * cfg.bits * c * rows  # word embedding of the scale's input
        total += rows * st.tokens * c * cfg.vocab  # head (both CFG halves, then mixed)
        out.append(StepMacs(st.index, total))
    return out


def total_macs(cfg: InfinityConfig, plan: PrunePlan, rows: int, batch: int, text_len: int) -> int:
    return sum(s.macs for s in step_macs(cfg, plan, rows, batch, text_len))
