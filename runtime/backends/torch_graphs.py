"""The PyTorch reference seen through the graphs' interface: each session runs the module a graph is traced
from (``export.graphs`` / ``export.hart_graphs``), eagerly, on the inputs the graph would get.

Goldens are recorded on this backend (``validate.goldens``): wrapping each session, one recorder names
every input and output of every graph kind of every family, with no per-family code. The modules call the
reference model's own code with the model's own weights, unchunked attention and the reference restore.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastvar.export.graphs import Shapes, weight_tensors
from fastvar.family import artifact_schedule, for_artifact
from fastvar.manifest import Artifact
from fastvar.runtime.backends.graph import GraphBackend, GraphSession, HostSession


class TorchGraphSession(HostSession):
    """One graph's traced module, run eagerly on the model's own weights."""

    def __init__(self, art: Artifact, name: str, module: torch.nn.Module, weights: list[torch.Tensor]) -> None:
        super().__init__(art, name)
        self.module, self.weights = module, weights

    def compute(self, fed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.inference_mode():
            res = self.module(*(fed[n] for n in self.inputs), *self.weights)
        return list(res) if isinstance(res, tuple) else [res]


class TorchGraphBackend(GraphBackend):
    """The chain over ``TorchGraphSession``s of a built model; ``wrap`` may wrap each session (a recorder)."""

    name = "torch-graphs"

    def __init__(self, art: Artifact, model, decoder,
                 wrap: Callable[[GraphSession], GraphSession] | None = None) -> None:
        m, fam = art.manifest, for_artifact(art)
        shapes = Shapes(batch=m.batch, text_len=m.text_len, guidance=m.guidance)
        graphs = fam.graphs(model, decoder, artifact_schedule(art), art.plan(), shapes, {}, None)
        weights = weight_tensors(model)
        sessions = {}
        for g in graphs:
            gd = g.definition()  # the module takes the model's own weights (the store may hold derived ones)
            if gd.name in m.graphs:
                s = TorchGraphSession(art, gd.name, g.module().eval(), [weights[w] for w in gd.weights])
                sessions[gd.name] = wrap(s) if wrap is not None else s
        self._setup(art, torch.device("cpu"), sessions)
        self.codebook = fam.extra_weights(decoder).get(m.codebook)
