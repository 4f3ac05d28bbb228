"""The PyTorch reference backend: runs the model's own ``step`` (the module the export traces)."""

from __future__ import annotations

import time

import numpy as np
import torch

from fastvar import graph_names as gn
from fastvar.export.models.bsq_vae import BSQVAEDecoder
from fastvar.export.models.infinity import Conditioning, Infinity, PruneStep
from fastvar.export.models.rope import rope_freqs_grid, rope_table
from fastvar.export.schedules import PrunePlan, ScaleSchedule, StepPlan
from fastvar.runtime.kv_cache import KVCache
from fastvar.runtime.step_call import StepCall


class TorchBackend:
    name = "torch"
    keeps_state = False  # True: the KV cache and caches outlive the loop (tests that inspect them)

    def __init__(self, model: Infinity, vae: BSQVAEDecoder, sched: ScaleSchedule, plan: PrunePlan) -> None:
        self.model, self.vae, self.sched, self.plan = model, vae, sched, plan
        cfg = model.cfg
        self.device = model.pos_start.device
        grid = rope_freqs_grid(cfg.head_dim)
        self.rope = [rope_table(cfg.head_dim, (s.h, s.w), sched.rope_grid, grid).to(self.device)
                     for s in sched.scales]
        self.cond: Conditioning | None = None
        self.kv: KVCache | None = None
        self.kv_bytes = 0
        self.restore_caches: list | None = None
        self.kept_sets: dict[int, dict[str, np.ndarray]] = {}  # step -> kept_{sub}_{block}, as graphs name them
        self.seconds = {"condition": 0.0, "step": 0.0, "decoder": 0.0}  # time inside the model (benchmarks)

    def graph_seconds(self, kinds: tuple[str, ...] = ("condition", "step")) -> float:
        return sum(self.seconds[k] for k in kinds)

    def start(self, text: torch.Tensor, lengths: torch.Tensor, cfg_active: bool) -> None:
        """Per-image state: conditioning, a fresh KV cache, no restore caches yet."""
        m = self.model
        t0 = time.perf_counter()
        self.cond = m.condition(text, lengths, cfg_active)
        self.seconds["condition"] += time.perf_counter() - t0
        rows = self.cond.sos.shape[0]
        self.kv = KVCache(self.plan, m.cfg.depth, rows, m.cfg.heads, m.cfg.head_dim, m.compute_dtype, self.device)
        self.kv_bytes = self.kv.nbytes
        self.restore_caches = None
        self.kept_sets = {}

    def step(self, st: StepPlan, call: StepCall) -> tuple[torch.Tensor, None]:
        """Logits of one step; sampling is left to the chain (``None`` bits)."""
        m, plan = self.model, self.plan
        depth = m.cfg.depth
        past = [self.kv.past(i) for i in range(depth)]
        prune = None
        if st.pruned:
            prune = PruneStep(kept=st.kept, hw=(st.h, st.w), cache_hw=plan.cache_hw, block_range=plan.block_range)
        t0 = time.perf_counter()
        out = m.step(
            st.index, call.state, self.cond, self.rope[st.index], [p[0] for p in past], [p[1] for p in past],
            torch.tensor(call.cfg_scale, dtype=torch.float32, device=self.device),
            torch.tensor(call.inv_tau, dtype=torch.float32, device=self.device),
            prune=prune, restore_caches=self.restore_caches, collect_caches=st.index == plan.cache_scale,
        )
        self.seconds["step"] += time.perf_counter() - t0
        if out.caches is not None:
            self.restore_caches = out.caches
        if out.kept_idx is not None:
            lo = plan.block_range[0]
            self.kept_sets[st.index] = {gn.kept(sub, lo + j): t.cpu().numpy() for j, idx in enumerate(out.kept_idx)
                                        for sub, t in zip(gn.INFINITY_SUBLAYERS, idx, strict=True)}
        if call.write_kv:
            for i in range(depth):
                self.kv.write(i, out.new_k[i], out.new_v[i])
        return out.logits, None

    def end_loop(self) -> None:
        """Free the KV cache, restore caches and conditioning before the decoder runs (kept sets stay)."""
        if self.keeps_state:
            return
        self.kv, self.restore_caches, self.cond = None, None, None

    def decode(self, summed: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        image = self.vae.decode(summed)
        self.seconds["decoder"] += time.perf_counter() - t0
        return image
