"""The ONNX Runtime backend: the artifact's graphs chained with IOBinding.

Weights: the store is read once; each weight becomes one OrtValue that every session binds by address
(graphs take weights as inputs), so the process holds one copy however many graphs there are.
KV cache: one sequence-major buffer per block and per k/v for the whole image (``KVCache``); each
step binds its past as the prefix view and its ``new_k_i``/``new_v_i`` outputs as the slice right
after it, so ONNX Runtime writes the new entries in place: no per-step copy of the cache.
CPU here; the CUDA provider when onnxruntime-gpu is installed (tensors then live on the GPU).
Working memory: no session keeps an arena at its own peak (see ``session_memory``), so a run holds the
weights, the KV cache and one graph's working memory at a time, never the sum over graphs; ``end_loop``
drops the KV cache and the loop's buffers before the decoder runs.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from fastvar import graph_names as gn
from fastvar.export.graphs import TORCH_DTYPES
from fastvar.export.weight_store import iter_store
from fastvar.graph_memory import stream_last
from fastvar.manifest import Artifact, ArtifactError
from fastvar.runtime.backends.graph import GraphBackend, check_input

_NP = {torch.float32: np.float32, torch.int64: np.int64, torch.bool: np.bool_, torch.float16: np.float16,
       torch.uint8: np.uint8}


def _providers(device: str) -> list:
    import onnxruntime as ort

    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ArtifactError("the CUDA provider is not available: install onnxruntime-gpu (not beside onnxruntime)")
        # Grow the device arena by exactly what is asked, so the shrinkage after each run (run_options) can
        # hand every chunk back. Unverified on a GPU so far.
        return [("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})]
    return ["CPUExecutionProvider"]


def session_memory(so, device: str):
    """Session and run options under which a session returns its working memory after each run.

    Each ONNX Runtime session otherwise keeps its own arena at its own peak, so a chain of N graphs holds
    the sum of N peaks (the full infinity-2b was OOM-killed at 24 GiB this way). CPU: no arena, which was
    both the smallest and the fastest choice measured (infinity-2b depth 2 at 1024, 2 cores: peak RSS
    5.9 GiB and loop 9.5 s without the arena; 16.1 GiB and 13.7 s with per-session arenas; 12.3 GiB and
    8.4-10.1 s with one shared environment arena, which stays at the decoder's peak; 6.8 GiB and 9.5-10.0 s
    with arena shrinkage after each run). CUDA: the device arena is shrunk after every run."""
    import onnxruntime as ort

    so.enable_cpu_mem_arena = False
    ro = ort.RunOptions()
    if device == "cuda":
        ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "gpu:0")
    return so, ro


class _Session:
    """One graph: a session, its IOBinding with the weights bound once, and its interface."""

    def __init__(self, art: Artifact, name: str, weights: dict[str, object], device: str, threads: int | None) -> None:
        import onnx
        import onnxruntime as ort

        rec = art.graph(name)
        self.name, self.rec, self.kind, self.device = name, rec, rec.kind, device
        self.torch_device = torch.device("cuda" if device == "cuda" else "cpu")
        self.path = art.graph_path(name)
        so, self.run_options = session_memory(ort.SessionOptions(), device)
        if threads:
            so.intra_op_num_threads = threads
        # ORT's worker threads spin after each run by default, taking the cores from the loop's own work
        # between graph calls (sampling, HART's embedding). Measured on 2 cores, loop medians: hart-tiny
        # 1024 fastvar 1.05 s -> 0.20 s, infinity-tiny depth 4 512 fastvar 0.131 s -> 0.068 s.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if rec.kind == "decoder":
            # The VAE keeps its weights as initializers; the CPU provider's NCHWc layout pass would hold a
            # reordered copy beside them (2.7x the weights measured). Extended fusions without it: 1x.
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        source: str | bytes = str(art.graph_path(name))
        if rec.kind == "step":
            model = onnx.load(source)
            if art.has_plugin_nodes:
                from fastvar.plugins.restore.ort_op import for_onnxruntime, session_options

                model = for_onnxruntime(model)
                so = session_options(so)
            # nodes off the activations' path first: ONNX Runtime then runs each block's work on its state
            # (restore caches, weights) right before the block, not all of it up front (graph_memory.stream_last)
            source = stream_last(model, gn.STREAM_INPUTS).SerializeToString()
        self.session = ort.InferenceSession(source, so, providers=_providers(device))
        self.io = self.session.io_binding()
        for w in rec.weights:
            self.io.bind_ortvalue_input(w, weights[w])
        self.inputs = {t.name: t for t in rec.inputs}
        self.bound: dict[str, torch.Tensor] = {}  # ORT holds raw pointers: keep what they point at alive
        self.ort_seconds = 0.0  # time inside ONNX Runtime (benchmarks: the rest is the runtime's overhead)
        self.outputs = {t.name: t for t in rec.outputs}

    def feed(self, name: str, t: torch.Tensor) -> None:
        """Bind an input by address (moved to the run's device first when it is elsewhere)."""
        check_input(self.name, name, t, self.inputs[name])
        t = t.to(self.torch_device)
        if not t.is_contiguous():
            raise ArtifactError(f"{self.name}: input {name} is not contiguous; it would need a copy")
        self.bound[name] = t
        self.io.bind_input(name, self.device, 0, _NP[t.dtype], list(t.shape), t.data_ptr())

    def output(self, name: str, t: torch.Tensor | None = None) -> torch.Tensor:
        """Bind an output to ``t`` (a KV slice), or to a fresh tensor on the run's device: either way ORT
        writes into memory we own, so results stay where they are (no copy back to the host on CUDA)."""
        if t is None:
            spec = self.outputs[name]
            t = torch.empty(spec.shape, dtype=TORCH_DTYPES[spec.dtype], device=self.torch_device)
        if not t.is_contiguous():
            raise ArtifactError(f"{self.name}: output buffer for {name} is not contiguous")
        self.bound[name] = t
        self.io.bind_output(name, self.device, 0, _NP[t.dtype], list(t.shape), t.data_ptr())
        return t

    def seconds(self) -> float:
        return self.ort_seconds

    def initializer_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the weights this graph keeps inside (the VAE's), read from the session's own model."""
        import onnx

        model = onnx.load(str(self.path), load_external_data=False)
        return [tuple(t.dims) for t in model.graph.initializer]

    def run(self) -> dict[str, torch.Tensor]:
        """Run; every output is already in the tensor bound to it."""
        if self.torch_device.type == "cuda":
            # torch filled the inputs on its stream; ONNX Runtime's CUDA provider runs on its own
            torch.cuda.current_stream().synchronize()
        t0 = time.perf_counter()
        self.session.run_with_iobinding(self.io, self.run_options)
        self.ort_seconds += time.perf_counter() - t0
        return {n: self.bound[n] for n in self.outputs}

    def release(self) -> None:
        """Let go of every per-run tensor (ORT keeps raw pointers only; the weights stay bound)."""
        self.bound.clear()
        self.io.clear_binding_outputs()


class OnnxRuntimeBackend(GraphBackend):
    name = "onnxruntime"

    def __init__(self, art: Artifact, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        if (precision := art.manifest.precision) != "fp32":
            raise ArtifactError(f"{art.root} is a {precision} artifact; the ONNX Runtime backend runs fp32 "
                                "artifacts (its CPU provider has no bf16 kernels). Export with --precision fp32, "
                                "or build TensorRT engines from it (fastvar-build)")
        torch_device = torch.device("cuda" if device == "cuda" else "cpu")
        codebook = art.manifest.codebook
        self.weights, self.codebook, store_bytes = {}, None, 0
        # On the CPU an OrtValue wraps the tensor's memory (one copy); on the GPU each tensor is copied over as
        # it is read, so the host stages one tensor at a time, never the whole store
        for k, v in iter_store(art.weight_path()):
            self.weights[k] = ort.OrtValue.ortvalue_from_numpy(v.numpy(), device, 0)
            store_bytes += v.numel() * v.element_size()
            if k == codebook:
                self.codebook = v.to(torch_device)
        sessions = {name: _Session(art, name, self.weights, device, threads) for name in art.run_graphs()}
        self._setup(art, torch_device, sessions)
        self.weight_bytes = store_bytes + sum(
            int(np.prod(shape)) * 4 for shape in self.sessions[gn.DECODER_GRAPH].initializer_shapes())
