"""HART's calls after the steps, the same for every graph backend (ONNX Runtime, TensorRT).

The diffusion head reads the last step's hidden states; each step's tokens go into ``f_hat`` through a
next-input graph (Φ and the next scale's input). A backend supplies ``_run`` (a graph whose every input
is given) and ``_graph_inputs``; this mixin says what each call is fed, so the backends cannot drift.
"""

from __future__ import annotations

import torch

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
        feeds = {"hidden": self.hidden, "discrete": discrete.float().contiguous(), "noise": noise.float().contiguous()}
        if "cfg_scale" in self._graph_inputs("diffusion"):
            feeds["cfg_scale"] = torch.tensor(weight, dtype=torch.float32)
        return self._run("diffusion", feeds)["residual"]

    def next_input(self, si: int, f_hat: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step si's tokens into f_hat and the next step's input; the last step's tokens are added as they
        are (no Φ, no next input), which needs no graph."""
        name = f"next_input_{si:02d}"
        if self._graph_inputs(name) is None:
            if si != len(self.plan.steps) - 1:
                raise ArtifactError(f"no {name} graph is loaded: step {si}'s tokens cannot reach the next step")
            side = int(round(tokens.shape[1] ** 0.5))
            f_hat = f_hat + tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
            return f_hat, f_hat.flatten(2).transpose(1, 2)
        out = self._run(name, {"f_hat": f_hat.float().contiguous(), "tokens": tokens.float().contiguous()})
        return out["f_hat_next"], out["x_next"]
