"""HART goldens: the HART torch backend, recording every call under the names of the graph it stands for.

As for Infinity (``goldens.GoldenRecorder``): before each call the state about to be used is named as the
graph's inputs, after it the results as its outputs, so every graph is judged on a real generation's
tensors (real kept indices at pruned steps, the real f_hat at every tokenizer step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastvar import graph_names as gn
from fastvar.export.schedules import StepPlan
from fastvar.manifest import Artifact
from fastvar.runtime.backends import reference_backend
from fastvar.runtime.backends.hart_torch import HARTTorchBackend, pad_text


class HARTGoldenRecorder(HARTTorchBackend):
    def __init__(self, art: Artifact, sink: Callable[[str, dict, dict], None]) -> None:
        ref = reference_backend(art)
        super().__init__(ref.model, ref.tok, ref.plan)
        self.sink = sink
        self.last_exec = self.plan.executed[-1].index
        self.weight_now = 0.0

    def start(self, text: torch.Tensor, lengths: torch.Tensor, cfg_active: bool) -> None:
        padded, lengths = pad_text(text, lengths, self.model.cfg.context_tokens)
        super().start(padded, lengths, cfg_active)
        c = self.cond
        self.sink(gn.CONDITION_GRAPH, {gn.TEXT: padded, gn.TEXT_LENGTHS: lengths},
                  {gn.SOS: c.sos, gn.HEAD_SCALE: c.head_scale, gn.HEAD_SHIFT: c.head_shift,
                   gn.CONTEXT_POS: c.context_pos})

    def step(self, st: StepPlan, x_in: torch.Tensor | None, weight: float, inv_tau: float, write_kv: bool,
             noise: torch.Tensor | None = None):
        depth, c = self.model.cfg.depth, self.cond
        feeds = {gn.HEAD_SCALE: c.head_scale, gn.HEAD_SHIFT: c.head_shift, gn.CONTEXT_POS: c.context_pos,
                 gn.CFG_SCALE: torch.tensor(weight, dtype=torch.float32)}
        feeds.update({gn.SOS: c.sos} if st.index == 0 else {gn.X_IN: x_in.float()})
        for i in range(depth):
            past_k, past_v = self.kv.past(i)
            if past_k.shape[0]:
                feeds[gn.past_k(i)], feeds[gn.past_v(i)] = past_k.clone(), past_v.clone()
            if st.pruned and self.plan.block_pruned(i):
                for sub, t in zip(gn.HART_SUBLAYERS, self.restore_caches[i], strict=True):
                    feeds[gn.cache(sub, i)] = t
        logits, _ = super().step(st, x_in, weight, inv_tau, write_kv, noise)
        out = self.last_output
        outs = {gn.LOGITS: logits}
        if st.index == self.last_exec:
            outs[gn.HIDDEN] = out.hidden
        else:
            for i in range(depth):
                outs[gn.new_k(i)], outs[gn.new_v(i)] = out.new_k[i], out.new_v[i]
        if out.caches is not None:
            for i in range(depth):
                for sub, t in zip(gn.HART_SUBLAYERS, out.caches[i], strict=True):
                    outs[gn.cache(sub, i)] = t
        kept = {k: torch.from_numpy(v) for k, v in self.kept_sets.get(st.index, {}).items()}
        name = gn.step_graph(st.index)
        self.sink(name, feeds, {**outs, **kept})
        if kept:
            self.sink(gn.validate_graph(st.index), {**feeds, **kept}, outs)
        return logits, None

    def diffusion(self, discrete: torch.Tensor, noise: torch.Tensor, weight: float) -> torch.Tensor:
        res = super().diffusion(discrete, noise, weight)
        self.sink(gn.DIFFUSION_GRAPH, {gn.HIDDEN: self.hidden, gn.DISCRETE: discrete.float(), gn.NOISE: noise.float(),
                                       gn.CFG_SCALE: torch.tensor(weight, dtype=torch.float32)}, {gn.RESIDUAL: res})
        return res

    def next_input(self, si: int, f_hat: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f_next, x_next = super().next_input(si, f_hat, tokens)
        self.sink(gn.next_input_graph(si), {gn.F_HAT: f_hat, gn.TOKENS: tokens.float()},
                  {gn.F_HAT_NEXT: f_next, gn.X_NEXT: x_next})
        return f_next, x_next

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        image = super().decode(f_hat)
        self.sink(gn.DECODER_GRAPH, {gn.F_HAT: f_hat.float()}, {gn.IMAGE: image})
        return image
