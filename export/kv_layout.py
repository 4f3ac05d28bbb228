"""The KV-cache layout every backend shares: sequence-major per block, past prefix + new slice.

Block i's cache is (S_i, rows, H, hd). Before step s it holds P_i(s) entries; step s reads them as the
contiguous prefix [0, P_i) and writes its L_i(s) new entries as the contiguous slice [P_i, P_i + L_i).
A pruned block at a pruned step gains only its kept tokens, so P_i and S_i differ between pruned and
unpruned blocks once pruning starts. The last executed step's entries are never read: not written,
not allocated. These lengths are what the static graphs are exported with.
"""

from __future__ import annotations

from fastvar.export.schedules import PrunePlan, StepPlan


def new_length(plan: PrunePlan, st: StepPlan, block: int) -> int:
    """Entries block ``block`` adds at step ``st``: the kept count if FastVAR prunes it there (HART's step 0
    adds its whole text context)."""
    if st.index == 0 and plan.first_step_kv is not None:
        return plan.first_step_kv
    return st.kept if st.pruned and plan.block_pruned(block) else st.tokens


def past_lengths(plan: PrunePlan, depth: int, index: int) -> list[int]:
    """P_i before step ``index``: what every earlier executed step wrote into block i."""
    before = [s for s in plan.executed if s.index < index]
    return [sum(new_length(plan, s, i) for s in before) for i in range(depth)]


def block_cache_lengths(plan: PrunePlan, depth: int) -> list[int]:
    """S_i: tokens each block's cache holds after the last step that writes KV."""
    return past_lengths(plan, depth, plan.executed[-1].index)
