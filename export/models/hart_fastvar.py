"""FastVAR on HART: which steps prune, how many tokens they keep, and where the restore cache is taken.

Upstream FastVAR's HART copy (HART/hart/modules/networks/fastvar_utils.py ``compute_merge`` and
fastvar_basic.py ``FastVARAdaLNSelfAttn``) prunes in every block, re-scoring before the attention and
again before the MLP; the 48x48 step drops int(2304 * 0.5) = 1152 tokens (keeps 1152) and the 64x64 step
drops int(4096 * 0.75) = 3072 (keeps 1024). Both restore from the attention and MLP outputs that every
block stored at the 36x36 step (area-upsampled, then the computed tokens scattered back). The step test
is the grid side alone, as upstream's; a schedule without a 36x36 step has nothing to restore from and
is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastvar.export.fastvar import restore, select_pivotal
from fastvar.export.schedules import kept_count

CACHE_SIDE = 36
PRUNE_FRACTIONS: dict[int, float] = {48: 0.5, 64: 0.75}


@dataclass
class HARTPruneStep:
    """FastVAR at one HART step: kept count per sub-layer (attention, MLP), the grid and the cache grid.

    ``select``/``restore`` default to the reference definitions; a graph export passes its own spellings
    (and ``restore_add``, the restore fused with the residual add that follows it).
    ``given`` supplies the kept indices per block as (attn, mlp) pairs, each (B2, K), instead of selecting
    (validation graphs compare compute on identical tokens). ``block_range`` is [lo, hi); upstream: all.
    """

    kept: int
    hw: tuple[int, int]
    cache_hw: tuple[int, int] = (CACHE_SIDE, CACHE_SIDE)
    block_range: tuple[int, int] | None = None
    select: Callable[[torch.Tensor, int], torch.Tensor] = select_pivotal
    restore: Callable[..., torch.Tensor] = restore
    # residual + restore(...) as one call (the fused FastVARRestoreAdd node); None: the add follows restore
    restore_add: Callable[..., torch.Tensor] | None = None
    given: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def covers(self, block: int) -> bool:
        return self.block_range is None or self.block_range[0] <= block < self.block_range[1]


def is_cache_step(side: int) -> bool:
    """Every block stores its attention and MLP outputs at the 36x36 step."""
    return side == CACHE_SIDE


def prune_step(side: int, fractions: dict[int, float] | None = None) -> HARTPruneStep | None:
    """The FastVAR step for a grid side, or None where upstream runs the step in full."""
    fractions = PRUNE_FRACTIONS if fractions is None else fractions
    frac = fractions.get(side, 0.0)
    if frac <= 0.0:
        return None
    if not 0.0 < frac < 1.0:
        raise ValueError(f"HART FastVAR prunes a fraction in (0, 1); got {frac} at {side}x{side} (HART skips no step)")
    tokens = side * side
    return HARTPruneStep(kept=kept_count(tokens, frac), hw=(side, side))


def plan(patch_nums: tuple[int, ...], fractions: dict[int, float] | None = None) -> dict[int, HARTPruneStep]:
    """Step index -> prune step for a schedule; refuses pruning without an earlier 36x36 cache step."""
    steps = {si: p for si, pn in enumerate(patch_nums) if si > 0 and (p := prune_step(pn, fractions)) is not None}
    if steps:
        first = min(steps)
        if CACHE_SIDE not in patch_nums[1:first]:
            raise ValueError(f"FastVAR on HART restores from the {CACHE_SIDE}x{CACHE_SIDE} step, which must come "
                             f"before the first pruned step; schedule {patch_nums} has none")
    return steps
