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
from fastvar.export.schedules import StepPlan
from fastvar.export.weight_store import read_store
from fastvar.family import for_artifact
from fastvar.manifest import Artifact, ArtifactError
from fastvar.runtime.backends.feeds import kv_dtype, padded_text, step_feeds
from fastvar.runtime.backends.hart_calls import HARTGraphCalls
from fastvar.runtime.kv_cache import KVCache

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
        self.name, self.rec, self.device = name, rec, device
        self.torch_device = torch.device("cuda" if device == "cuda" else "cpu")
        self.path = art.graph_path(name)
        so, self.run_options = session_memory(ort.SessionOptions(), device)
        if threads:
            so.intra_op_num_threads = threads
        # ORT's worker threads spin after each run by default, taking the cores from the loop's own work
        # between graph calls (sampling, HART's embedding). Measured on 2 cores, loop medians: hart-tiny
        # 1024 fastvar 1.05 s -> 0.20 s, infinity-tiny depth 4 512 fastvar 0.131 s -> 0.068 s.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if rec["kind"] == "decoder":
            # The VAE keeps its weights as initializers; the CPU provider's NCHWc layout pass would hold a
            # reordered copy beside them (2.7x the weights measured). Extended fusions without it: 1x.
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        source: str | bytes = str(art.graph_path(name))
        if art.has_plugin_nodes and rec["kind"] == "step":
            from fastvar.plugins.restore.ort_op import for_onnxruntime, session_options

            source = for_onnxruntime(onnx.load(source)).SerializeToString()
            so = session_options(so)
        self.session = ort.InferenceSession(source, so, providers=_providers(device))
        self.io = self.session.io_binding()
        for w in rec["weights"]:
            self.io.bind_ortvalue_input(w, weights[w])
        self.inputs = {t["name"]: t for t in rec["inputs"]}
        self.bound: dict[str, torch.Tensor] = {}  # ORT holds raw pointers: keep what they point at alive
        self.seconds = 0.0  # time inside ONNX Runtime (benchmarks: the rest is the runtime's overhead)
        self.outputs = {t["name"]: t for t in rec["outputs"]}

    def bind_input(self, name: str, t: torch.Tensor) -> None:
        spec = self.inputs[name]
        if list(t.shape) != spec["shape"] or t.dtype != TORCH_DTYPES[spec["dtype"]]:
            raise ArtifactError(f"{self.name}: input {name} is {tuple(t.shape)} {t.dtype}, the graph takes "
                                f"{tuple(spec['shape'])} {spec['dtype']}")
        if not t.is_contiguous():
            raise ArtifactError(f"{self.name}: input {name} is not contiguous; it would need a copy")
        self.bound[name] = t
        self.io.bind_input(name, self.device, 0, _NP[t.dtype], list(t.shape), t.data_ptr())

    def bind_output(self, name: str, t: torch.Tensor | None = None) -> None:
        """Bind an output to ``t`` (a KV slice), or to a fresh tensor on the run's device: either way ORT
        writes into memory we own, so results stay where they are (no copy back to the host on CUDA)."""
        if t is None:
            spec = self.outputs[name]
            t = torch.empty(spec["shape"], dtype=TORCH_DTYPES[spec["dtype"]], device=self.torch_device)
        if not t.is_contiguous():
            raise ArtifactError(f"{self.name}: output buffer for {name} is not contiguous")
        self.bound[name] = t
        self.io.bind_output(name, self.device, 0, _NP[t.dtype], list(t.shape), t.data_ptr())

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
        self.seconds += time.perf_counter() - t0
        return {n: self.bound[n] for n in self.outputs}

    def unbind(self) -> None:
        """Let go of every per-run tensor (ORT keeps raw pointers only; the weights stay bound)."""
        self.bound.clear()
        self.io.clear_binding_outputs()


class OnnxRuntimeBackend(HARTGraphCalls):
    name = "onnxruntime"

    def __init__(self, art: Artifact, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        if art.data["precision"] != "fp32":
            raise ArtifactError(f"{art.root} is a {art.data['precision']} artifact; the ONNX Runtime backend runs fp32 "
                                "artifacts (its CPU provider has no bf16 kernels). Export with --precision fp32, "
                                "or build TensorRT engines from it (fastvar-build)")
        self.art, self.device = art, device
        self.family = for_artifact(art)
        self.torch_device = torch.device("cuda" if device == "cuda" else "cpu")
        self.plan = art.plan()
        cfg = art.data["model"]["config"]
        self.depth, self.heads, self.head_dim = cfg["depth"], cfg["heads"], cfg["head_dim"]
        self.text_len, self.guidance = art.data["text_len"], art.data["guidance"]
        self.host_weights = read_store(art.weight_path())
        self.weights = {k: ort.OrtValue.ortvalue_from_numpy(v.numpy(), device, 0)
                        for k, v in self.host_weights.items()}
        self.sessions = {name: _Session(art, name, self.weights, device, threads) for name in art.run_graphs()}
        self.weight_bytes = sum(t.numel() * t.element_size() for t in self.host_weights.values()) + sum(
            int(np.prod(shape)) * 4 for shape in self.sessions[gn.DECODER_GRAPH].initializer_shapes())
        self.cond: dict[str, torch.Tensor] = {}
        self.caches: dict[str, torch.Tensor] = {}
        self.kept_sets: dict[int, dict[str, np.ndarray]] = {}
        self.kv: KVCache | None = None
        self.kv_bytes = 0
        self.hidden: torch.Tensor | None = None  # HART: the last step's hidden states, for the diffusion head
        self.batch = art.data["batch"]
        codebook = art.data.get("codebook")
        self.codebook = self.host_weights[codebook].to(self.torch_device) if codebook else None

    def graph_seconds(self, kinds: tuple[str, ...] = ("condition", "step")) -> float:
        """Seconds spent inside ONNX Runtime so far, for graphs of these kinds."""
        return sum(s.seconds for s in self.sessions.values() if s.rec["kind"] in kinds)

    def start(self, text: torch.Tensor, lengths: torch.Tensor, cfg_active: bool) -> None:
        padded = padded_text(text, cfg_active, self.guidance, self.text_len).to(self.torch_device)
        s = self.sessions[gn.CONDITION_GRAPH]
        s.bind_input(gn.TEXT, padded)
        s.bind_input(gn.TEXT_LENGTHS, lengths.to(self.torch_device, torch.int64).contiguous())
        for name in s.outputs:
            s.bind_output(name)
        self.cond = s.run()
        rows = self.cond[gn.HEAD_SCALE].shape[0]
        self.kv = KVCache(self.plan, self.depth, rows, self.heads, self.head_dim, kv_dtype(self.art), self.torch_device)
        self.kv_bytes = self.kv.nbytes
        self.caches, self.kept_sets = {}, {}

    def step(self, st: StepPlan, codes_in: torch.Tensor | None, cfg: float, inv_tau: float,
             write_kv: bool, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits, and the bits sampled in the graph from ``noise`` (Infinity; HART samples in the loop: None)."""
        s = self.sessions.get(gn.step_graph(st.index))
        if s is None:
            raise ArtifactError(f"{self.art.root} has no graph for step {st.index}")
        feeds = step_feeds(self.family, s.name, s.inputs, self.cond, self.kv, self.caches, st.index, codes_in, cfg,
                           inv_tau, noise, self.torch_device)
        for name, t in feeds.items():
            s.bind_input(name, t)
        slices = {}
        for name in s.outputs:
            i = gn.new_kv_block(name)
            if i is not None:
                n = s.outputs[name]["shape"][0]
                slices[i] = self.kv.reserve(i, n)
                s.bind_output(name, slices[i][0] if gn.is_new_k(name) else slices[i][1])
            else:
                s.bind_output(name)
        out = s.run()
        for i in slices:
            self.kv.commit(i, s.outputs[gn.new_k(i)]["shape"][0])
        for name, t in out.items():
            if gn.is_cache(name):
                self.caches[name] = t
        kept = {n: t.cpu().numpy() for n, t in out.items() if gn.is_kept(n)}
        if kept:
            self.kept_sets[st.index] = kept
        self.hidden = out.get(gn.HIDDEN)
        return out[gn.LOGITS], out.get(gn.BITS)

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run a graph whose every input is given (tensors moved to the run's device as float32 or as typed)."""
        s = self.sessions[name]
        for n, t in feeds.items():
            s.bind_input(n, t.to(self.torch_device).contiguous())
        for n in s.outputs:
            s.bind_output(n)
        return s.run()

    def _graph_inputs(self, name: str) -> dict | None:
        s = self.sessions.get(name)
        return None if s is None else s.inputs

    def end_loop(self) -> None:
        """Free what the decoder does not need: the KV cache, restore caches, conditioning and the tensors
        bound to the step sessions (kept indices stay: parity checks read them)."""
        self.kv, self.caches, self.cond, self.hidden = None, {}, {}, None
        for s in self.sessions.values():
            s.unbind()

    def decode(self, summed: torch.Tensor) -> torch.Tensor:
        s = self.sessions[gn.DECODER_GRAPH]
        (name,) = s.inputs
        s.bind_input(name, summed.to(self.torch_device, torch.float32).contiguous())
        s.bind_output(gn.IMAGE)
        return s.run()[gn.IMAGE]
