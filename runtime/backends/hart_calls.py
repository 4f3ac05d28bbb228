"""HART's calls after the steps, the same for every graph backend (ONNX Runtime, TensorRT).

The diffusion head reads the last step's hidden states; each step's tokens go into ``f_hat`` through a
next-input graph (Φ and the next scale's input). A backend supplies ``_run`` (a graph whose every input
is given) and ``_graph_inputs``; this mixin says what each call is fed, so the backends cannot drift.
"""

from __future__ import annotations

import torch

from fastvar import graph_names as gn
from fastvar.export.schedules import PrunePlan
from fastvar.manifest import ArtifactError


class HARTGraphCalls:
    hidden: torch.Tensor | None  # the last step's hidden states, set by the backend's ``step``
    plan: PrunePlan

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _graph_inputs(self, name: str) -> dict | None:
        """The named graph's input table, None when the artifact has no such graph."""
        raise NotImplementedError

    def diffusion(self, discrete: torch.Tensor, noise: torch.Tensor, weight: float) -> torch.Tensor:
        """The diffusion head's residual (B, L, Cvae) from the last step's hidden states."""
        if self.hidden is None:
            raise RuntimeError("the diffusion head runs after the last step, which has not run")
        feeds = {gn.HIDDEN: self.hidden, gn.DISCRETE: discrete.float().contiguous(),
                 gn.NOISE: noise.float().contiguous()}
        if gn.CFG_SCALE in self._graph_inputs(gn.DIFFUSION_GRAPH):
            feeds[gn.CFG_SCALE] = torch.tensor(weight, dtype=torch.float32)
        return self._run(gn.DIFFUSION_GRAPH, feeds)[gn.RESIDUAL]

    def next_input(self, si: int, f_hat: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step si's tokens into f_hat and the next step's input; the last step's tokens are added as they
        are (no Φ, no next input), which needs no graph."""
        name = gn.next_input_graph(si)
        if self._graph_inputs(name) is None:
            if si != len(self.plan.steps) - 1:
                raise ArtifactError(f"no {name} graph is loaded: step {si}'s tokens cannot reach the next step")
            side = int(round(tokens.shape[1] ** 0.5))
            f_hat = f_hat + tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
            return f_hat, f_hat.flatten(2).transpose(1, 2)
        out = self._run(name, {gn.F_HAT: f_hat.float().contiguous(), gn.TOKENS: tokens.float().contiguous()})
        return out[gn.F_HAT_NEXT], out[gn.X_NEXT]
