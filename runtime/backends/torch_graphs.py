"""The PyTorch reference seen through the graphs' interface: each session runs the module a graph is traced
from (``export.graphs`` / ``export.hart_graphs``), eagerly, on the inputs the graph would get.

Goldens are recorded on this backend (``validate.goldens``): wrapping each session, one recorder names
every input and output of every graph kind of every family, with no per-family code. The modules call the
reference model's own code with the model's own weights, unchunked attention and the reference restore.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from fastvar.export.graphs import TORCH_DTYPES, Shapes, weight_tensors
from fastvar.family import artifact_schedule, for_artifact
from fastvar.manifest import Artifact
from fastvar.runtime.backends.graph import GraphBackend, GraphSession, check_input


class TorchGraphSession:
    """One graph's traced module, run eagerly: inputs collected, outputs copied into the tensors bound to
    them (a KV slice, or a buffer made here)."""

    def __init__(self, art: Artifact, name: str, module: torch.nn.Module, weights: list[torch.Tensor]) -> None:
        rec = art.graph(name)
        self.name, self.kind, self.module, self.weights = name, rec.kind, module, weights
        self.inputs = {t.name: t for t in rec.inputs}
        self.outputs = {t.name: t for t in rec.outputs}
        self.fed: dict[str, torch.Tensor] = {}
        self.bound: dict[str, torch.Tensor] = {}
        self.run_seconds = 0.0

    def feed(self, name: str, t: torch.Tensor) -> None:
        check_input(self.name, name, t, self.inputs[name])
        self.fed[name] = t

    def output(self, name: str, t: torch.Tensor | None = None) -> torch.Tensor:
        if t is None:
            spec = self.outputs[name]
            t = torch.empty(spec.shape, dtype=TORCH_DTYPES[spec.dtype])
        self.bound[name] = t
        return t

    def run(self) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = self.module(*(self.fed[n] for n in self.inputs), *self.weights)
        self.run_seconds += time.perf_counter() - t0
        res = res if isinstance(res, tuple) else (res,)
        for n, t in zip(self.outputs, res, strict=True):
            self.bound.setdefault(n, torch.empty_like(t, dtype=TORCH_DTYPES[self.outputs[n].dtype])).copy_(t)
        return {n: self.bound[n] for n in self.outputs}

    def seconds(self) -> float:
        return self.run_seconds

    def release(self) -> None:
        self.fed, self.bound = {}, {}


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
