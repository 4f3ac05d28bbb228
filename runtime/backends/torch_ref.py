"""The PyTorch reference backend: runs the model's own ``step`` (the module the export traces)."""

from __future__ import annotations

import torch

from fastvar.export.models.bsq_vae import BSQVAEDecoder
from fastvar.export.models.infinity import Conditioning, Infinity, PruneStep
from fastvar.export.models.rope import rope_freqs_grid, rope_table
from fastvar.export.schedules import PrunePlan, ScaleSchedule, StepPlan
from fastvar.runtime.kv_cache import KVCache


class TorchBackend:
    name = "torch"

    def __init__(self, model: Infinity, vae: BSQVAEDecoder, sched: ScaleSchedule, plan: PrunePlan) -> None:
        self.model, self.vae, self.sched, self.plan = model, vae, sched, plan
        cfg = model.cfg
        self.device = model.pos_start.device
        grid = rope_freqs_grid(cfg.head_dim)
        self.rope = [rope_table(cfg.head_dim, (s.h, s.w), sched.rope_grid, grid).to(self.device)
                     for s in sched.scales]
        self.cond: Conditioning | None = None
        self.kv: KVCache | None = None
        self.restore_caches: list | None = None
        self.kept_sets: dict[int, list] = {}

    def start(self, text: torch.Tensor, lengths: torch.Tensor, cfg_active: bool) -> None:
        """Per-image state: conditioning, a fresh KV cache, no restore caches yet."""
        m = self.model
        self.cond = m.condition(text, lengths, cfg_active)
        rows = self.cond.sos.shape[0]
        self.kv = KVCache(self.plan, m.cfg.depth, rows, m.cfg.heads, m.cfg.head_dim, m.compute_dtype, self.device)
        self.restore_caches = None
        self.kept_sets = {}

    def step(self, st: StepPlan, codes_in: torch.Tensor | None, cfg: float, inv_tau: float,
             write_kv: bool) -> torch.Tensor:
        m, plan = self.model, self.plan
        depth = m.cfg.depth
        past = [self.kv.past(i) for i in range(depth)]
        prune = None
        if st.pruned:
            prune = PruneStep(kept=st.kept, hw=(st.h, st.w), cache_hw=plan.cache_hw, block_range=plan.block_range)
        out = m.step(
            st.index, codes_in, self.cond, self.rope[st.index], [p[0] for p in past], [p[1] for p in past],
            torch.tensor(cfg, dtype=torch.float32, device=self.device),
            torch.tensor(inv_tau, dtype=torch.float32, device=self.device),
            prune=prune, restore_caches=self.restore_caches, collect_caches=st.index == plan.cache_scale,
        )
        if out.caches is not None:
            self.restore_caches = out.caches
        if out.kept_idx is not None:
            self.kept_sets[st.index] = out.kept_idx
        if write_kv:
            for i in range(depth):
                self.kv.write(i, out.new_k[i], out.new_v[i])
        return out.logits

    def decode(self, summed: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(summed)
