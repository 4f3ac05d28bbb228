"""The PyTorch reference backend for HART: runs ``HART.step``, the diffusion head and the tokenizer as the
graphs do (the modules the export traces), with the KV cache in the shared sequence-major layout."""

from __future__ import annotations

import time

import numpy as np
import torch

from fastvar import graph_names as gn
from fastvar.export.models.hart import HART, HARTConditioning
from fastvar.export.models.hart_fastvar import HARTPruneStep
from fastvar.export.models.hart_tokenizer import HARTTokenizer
from fastvar.export.schedules import PrunePlan, StepPlan
from fastvar.runtime.kv_cache import KVCache
from fastvar.runtime.step_call import StepCall


def pad_text(text: torch.Tensor, lengths: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) valid states -> (B, tokens, D) zero-padded, as upstream pads every prompt to its context."""
    b, lt, d = text.shape
    if lt > tokens:
        raise ValueError(f"the text has {lt} tokens; HART's context holds {tokens}")
    padded = torch.zeros((b, tokens, d), dtype=torch.float32, device=text.device)
    padded[:, :lt] = text
    return padded, lengths.to(torch.int64)


def context_mask(lengths: torch.Tensor, tokens: int) -> torch.Tensor:
    return torch.arange(tokens, device=lengths.device)[None, :] < lengths[:, None]


class HARTTorchBackend:
    name = "torch"
    keeps_state = False  # True: the KV cache and caches outlive the loop (tests that inspect them)

    def __init__(self, model: HART, tok: HARTTokenizer, plan: PrunePlan) -> None:
        self.model, self.tok, self.plan = model, tok, plan
        self.device = model.word_embed.weight.device
        self.cond: HARTConditioning | None = None
        self.kv: KVCache | None = None
        self.kv_bytes = 0
        self.restore_caches: list | None = None
        self.hidden: torch.Tensor | None = None  # the last step's hidden states (the diffusion head reads them)
        self.kept_sets: dict[int, dict[str, np.ndarray]] = {}
        # time inside the model per graph kind, as the ONNX Runtime backend keeps it (benchmarks)
        self.seconds = {"condition": 0.0, "step": 0.0, "diffusion": 0.0, "next_input": 0.0, "decoder": 0.0}

    @property
    def batch(self) -> int:
        return self.cond.batch

    @property
    def vae(self) -> HARTTokenizer:
        """The decoder side under the name the memory report reads."""
        return self.tok

    @property
    def codebook(self) -> torch.Tensor:
        return self.tok.codebook

    def graph_seconds(self, kinds: tuple[str, ...] = ("condition", "step")) -> float:
        return sum(self.seconds.get(k, 0.0) for k in kinds)

    def start(self, text: torch.Tensor, lengths: torch.Tensor, cfg_active: bool) -> None:
        m = self.model
        padded, lengths = pad_text(text, lengths, m.cfg.context_tokens)
        t0 = time.perf_counter()
        self.cond = m.condition(padded, context_mask(lengths, m.cfg.context_tokens), cfg_active)
        self.seconds["condition"] += time.perf_counter() - t0
        self.kv = KVCache(self.plan, m.cfg.depth, self.cond.rows, m.cfg.heads, m.cfg.head_dim, m.compute_dtype,
                          self.device)
        self.kv_bytes = self.kv.nbytes
        self.restore_caches, self.hidden, self.kept_sets = None, None, {}

    def step(self, st: StepPlan, call: StepCall) -> tuple[torch.Tensor, None]:
        """CFG-mixed logits of one step; sampling is the loop's."""
        m, plan = self.model, self.plan
        depth = m.cfg.depth
        past = [self.kv.past(i) for i in range(depth)]
        prune = None
        if st.pruned:
            prune = HARTPruneStep(kept=st.kept, hw=(st.h, st.w), cache_hw=plan.cache_hw, block_range=plan.block_range)
        t0 = time.perf_counter()
        out = m.step(st.index, call.state, self.cond, [p[0] if p[0].shape[0] else None for p in past],
                     [p[1] if p[1].shape[0] else None for p in past],
                     torch.tensor(call.cfg_scale, dtype=torch.float32, device=self.device), prune=prune,
                     restore_caches=self.restore_caches if prune is not None else None,
                     collect_caches=st.index == plan.cache_scale)
        self.seconds["step"] += time.perf_counter() - t0
        self.hidden = out.hidden
        if out.caches is not None:
            self.restore_caches = out.caches
        if out.kept_idx is not None:
            self.kept_sets[st.index] = {gn.kept(sub, i): t.cpu().numpy() for i, idx in enumerate(out.kept_idx)
                                        if idx is not None for sub, t in zip(gn.HART_SUBLAYERS, idx, strict=True)}
        if call.write_kv:
            for i in range(depth):
                self.kv.write(i, out.new_k[i], out.new_v[i])
        return out.logits, None

    def diffusion(self, discrete: torch.Tensor, noise: torch.Tensor, weight: float) -> torch.Tensor:
        """The diffusion head's residual (B, L, Cvae) for the last step's hidden states."""
        m, b = self.model, self.cond.batch
        t0 = time.perf_counter()
        z = m.diffusion_condition(self.hidden, discrete, self.cond)
        guided = self.cond.rows != b
        weight_t = torch.tensor(weight, dtype=torch.float32, device=self.device) if guided else None
        residual = m.diffloss.sample(z, noise, guidance=weight_t).view(b, -1, m.cfg.cvae)
        self.seconds["diffusion"] += time.perf_counter() - t0
        return residual

    def next_input(self, si: int, f_hat: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pns = self.model.cfg.patch_nums
        t0 = time.perf_counter()
        out = self.tok.next_input(si, f_hat, self.tok.tokens_to_map(tokens, pns[si]), pns)
        self.seconds["next_input"] += time.perf_counter() - t0
        return out

    def end_loop(self) -> None:
        """Free the KV cache, restore caches and the last hidden states before the decoder runs. The
        conditioning stays: ``batch`` reads it."""
        if self.keeps_state:
            return
        self.kv, self.restore_caches, self.hidden = None, None, None

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        image = self.tok.decode(f_hat)
        self.seconds["decoder"] += time.perf_counter() - t0
        return image
