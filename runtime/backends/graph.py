"""One graph backend: what the chain asks of an artifact's graphs (start, step, decode, HART's diffusion and
next input) written once, over sessions that differ only in how they take inputs, run and hand outputs back.

ONNX Runtime (``onnxruntime.py``), TensorRT (``tensorrt.py``) and ONNX's reference evaluator
(``onnx_reference.py``) each supply a session class and their weights; the KV cache, the restore caches, the
kept sets and the feeds are handled here, the same for all three. A step binds its past as each block's
cache prefix and its new K/V as the slice right after it, so a session that writes in place needs no copy.
"""

from __future__ import annotations

import contextlib
import time
from typing import Protocol

import numpy as np
import torch

from fastvar import graph_names as gn
from fastvar.export.graphs import TORCH_DTYPES
from fastvar.export.schedules import StepPlan
from fastvar.family import for_artifact
from fastvar.manifest import Artifact, ArtifactError
from fastvar.manifest_schema import TensorRecord
from fastvar.runtime.backends.feeds import kv_dtype, padded_text, step_feeds
from fastvar.runtime.backends.hart_calls import HARTGraphCalls
from fastvar.runtime.kv_cache import KVCache
from fastvar.runtime.step_call import StepCall


class GraphSession(Protocol):
    """One graph on one runtime. ``feed`` takes an input (a per-call value may be copied, the rest bound);
    ``output`` binds an output to ``t`` or to a buffer of the session's choosing and returns it; ``run``
    returns every output; ``release`` lets go of per-run tensors."""

    name: str
    kind: str
    inputs: dict[str, TensorRecord]
    outputs: dict[str, TensorRecord]

    def feed(self, name: str, t: torch.Tensor) -> None: ...

    def output(self, name: str, t: torch.Tensor | None = None) -> torch.Tensor: ...

    def run(self) -> dict[str, torch.Tensor]: ...

    def seconds(self) -> float: ...

    def release(self) -> None: ...


def check_input(graph: str, name: str, t: torch.Tensor, spec: TensorRecord) -> None:
    """Refuse an input whose shape or dtype is not the graph's (every session checks the same way)."""
    if tuple(t.shape) != spec.shape or t.dtype != TORCH_DTYPES[spec.dtype]:
        raise ArtifactError(f"{graph}: input {name} is {tuple(t.shape)} {t.dtype}, the graph takes "
                            f"{spec.shape} {spec.dtype}")


class HostSession:
    """A session that computes on the host: inputs collected, outputs copied into the tensors bound to them (a
    KV slice, or a buffer made here). Subclasses give ``compute``: the outputs in the graph's order."""

    def __init__(self, art: Artifact, name: str) -> None:
        rec = art.graph(name)
        self.name, self.kind = name, rec.kind
        self.inputs = {t.name: t for t in rec.inputs}
        self.outputs = {t.name: t for t in rec.outputs}
        self.fed: dict[str, torch.Tensor] = {}
        self.bound: dict[str, torch.Tensor] = {}
        self.run_seconds = 0.0

    def compute(self, fed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

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
        results = self.compute(self.fed)
        self.run_seconds += time.perf_counter() - t0
        for n, r in zip(self.outputs, results, strict=True):
            (self.bound[n] if n in self.bound else self.output(n)).copy_(r)
        return {n: self.bound[n] for n in self.outputs}

    def seconds(self) -> float:
        return self.run_seconds

    def release(self) -> None:
        self.fed, self.bound = {}, {}


class GraphBackend(HARTGraphCalls):
    """The chain's backend over an artifact's graph sessions; subclasses open the sessions."""

    name: str
    # True: the KV cache and buffers live as long as the backend (TensorRT's fixed addresses; tests that
    # inspect the cache after a run set it too); False: ``end_loop`` frees them before the decoder runs
    keeps_state = False
    host_values = False  # True: scalars and noise stay on the host; the session stages them onto the device

    def _setup(self, art: Artifact, device: torch.device, sessions: dict[str, GraphSession]) -> None:
        self.art, self.device, self.sessions = art, device, sessions
        self.family, self.plan = for_artifact(art), art.plan()
        m = art.manifest
        self.depth, self.heads, self.head_dim = m.model.depth, m.model.heads, m.model.head_dim
        self.text_len, self.guidance, self.batch = m.text_len, m.guidance, m.batch
        self.cond: dict[str, torch.Tensor] = {}
        self.caches: dict[str, torch.Tensor] = {}
        self._kept: dict[int, dict[str, torch.Tensor]] = {}
        self.kv: KVCache | None = None
        self.kv_bytes = 0
        self.hidden: torch.Tensor | None = None  # HART: the last step's hidden states, for the diffusion head

    def on_stream(self):
        """The context every session call runs in (TensorRT: its CUDA stream)."""
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait for queued work before the host reads a result (TensorRT's stream)."""

    def graph_seconds(self, kinds: tuple[str, ...] = ("condition", "step")) -> float:
        """Seconds inside the runtime so far, for graphs of these kinds."""
        return sum(s.seconds() for s in self.sessions.values() if s.kind in kinds)

    @property
    def kept_sets(self) -> dict[int, dict[str, np.ndarray]]:
        """Kept indices of the pruned steps of the last image (parity checks read them after a run)."""
        return {i: {n: t.cpu().numpy() for n, t in sets.items()} for i, sets in self._kept.items()}

    def start(self, text: torch.Tensor, lengths: torch.Tensor, cfg_active: bool) -> None:
        padded = padded_text(text, cfg_active, self.guidance, self.text_len)
        s = self.sessions[gn.CONDITION_GRAPH]
        with self.on_stream():
            s.feed(gn.TEXT, padded)
            s.feed(gn.TEXT_LENGTHS, lengths.to(torch.int64).contiguous())
            for name in s.outputs:
                s.output(name)
            self.cond = s.run()
        if self.kv is None or not self.keeps_state:
            rows = self.cond[gn.HEAD_SCALE].shape[0]
            self.kv = KVCache(self.plan, self.depth, rows, self.heads, self.head_dim, kv_dtype(self.art), self.device)
            self.kv_bytes = self.kv.nbytes
        self.kv.length = [0] * self.depth
        self.caches, self._kept = {}, {}

    def step(self, st: StepPlan, call: StepCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and the bits sampled in the graph from ``call.noise`` (Infinity; HART samples in the loop:
        None). New K/V are written where the graph has them (the last step has none), whatever
        ``call.write_kv`` says."""
        s = self.sessions.get(gn.step_graph(st.index))
        if s is None:
            raise ArtifactError(f"{self.art.root} has no graph for step {st.index}")
        with self.on_stream():
            feeds = step_feeds(self.family, s.name, s.inputs, self.cond, self.kv, self.caches, st.index, call,
                               self.device, host_values=self.host_values)
            for name, t in feeds.items():
                s.feed(name, t)
            written = {}
            for name in s.outputs:
                i = gn.new_kv_block(name)
                if i is None:
                    s.output(name)
                    continue
                n = s.outputs[name].shape[0]
                k, v = self.kv.reserve(i, n)
                s.output(name, k if gn.is_new_k(name) else v)
                written[i] = n
            out = s.run()
        for i, n in written.items():
            self.kv.commit(i, n)
        for name, t in out.items():
            if gn.is_cache(name):
                self.caches[name] = t
        kept = {n: t.clone() for n, t in out.items() if gn.is_kept(n)}  # device copies: no host sync
        if kept:
            self._kept[st.index] = kept
        self.hidden = out.get(gn.HIDDEN)
        return out[gn.LOGITS], out.get(gn.BITS)

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run a graph whose every input is given (HART's next-input and diffusion graphs)."""
        s = self.sessions[name]
        with self.on_stream():
            for n, t in feeds.items():
                s.feed(n, t)
            for n in s.outputs:
                s.output(n)
            return s.run()

    def _graph_inputs(self, name: str) -> dict[str, TensorRecord] | None:
        s = self.sessions.get(name)
        return None if s is None else s.inputs

    def end_loop(self) -> None:
        """Free what the decoder does not need (KV cache, restore caches, conditioning, per-run tensors) unless
        the backend keeps them for its life; kept indices stay (parity checks read them)."""
        if self.keeps_state:
            return
        self.kv, self.caches, self.cond, self.hidden = None, {}, {}, None
        for s in self.sessions.values():
            s.release()

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        """The image from Infinity's summed codes or HART's f_hat (each decoder's one input)."""
        s = self.sessions[gn.DECODER_GRAPH]
        (name,) = s.inputs
        with self.on_stream():
            s.feed(name, state.to(self.device, torch.float32).contiguous())
            image = s.output(gn.IMAGE)
            s.run()
        self.synchronize()
        return image
