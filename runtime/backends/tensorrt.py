"""The TensorRT backend: the engines ``fastvar-build`` made, chained on one CUDA stream.

- Weights: the store is loaded once onto the device and every engine's weight inputs point at those
  buffers (``set_tensor_address``); no engine holds a transformer weight of its own.
- KV cache: allocated once for the backend's life; a step's ``past_*`` inputs point at each block's
  prefix and its ``new_*`` outputs at the slice right after it, so the engine writes in place.
- Activations: every context is created ``USER_MANAGED`` and given the same scratch buffer, sized for the
  largest engine (they run one after another on one stream). The decoder shares it too, so the peak is
  weights + KV cache + the largest engine's scratch; unlike the other backends the KV cache is kept
  between images (``end_loop`` frees nothing), since a replayed CUDA graph needs its fixed addresses.
- Fixed addresses: conditioning outputs, restore caches, logits and bits live in buffers owned here and
  per-call inputs (noise, codes, scalars) are copied into owned buffers, so every step's bindings are the
  same on every image and a CUDA graph captured once per step replays (AOT plugin engines only: a JIT
  plugin calls back into Python).
- Infinity samples in the step engines (``bits`` output); HART samples in the loop on the device, then
  runs its next-input, diffusion and decoder engines. The chain keeps tokens on the device, so nothing
  waits for the host between steps. NVTX ranges name each engine; CUDA events time it.

Every engine's compatibility record is checked against this machine before anything is deserialized,
and its I/O against the manifest's graph, with every reason given.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import torch

from fastvar import graph_names as gn
from fastvar.compat import Machine, mismatches
from fastvar.export.graphs import TORCH_DTYPES
from fastvar.export.weight_store import iter_store
from fastvar.manifest import Artifact, ArtifactError, sha256_file
from fastvar.manifest_schema import EngineFile, TensorRecord
from fastvar.runtime.backends.graph import GraphBackend, check_input

# Inputs whose values change per call: copied into owned buffers, so an engine's addresses never change.
PER_CALL = (gn.TEXT, gn.TEXT_LENGTHS, gn.CODES, gn.NOISE, gn.INV_TAU, gn.CFG_SCALE, gn.X_IN, gn.DISCRETE, gn.F_HAT,
            gn.TOKENS)


def _trt_dtypes(trt) -> dict:
    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
            trt.int64: torch.int64, trt.int32: torch.int32, trt.uint8: torch.uint8, trt.bool: torch.bool}


class _Engine:
    """One engine: its context, its owned buffers and the addresses bound to it."""

    def __init__(self, backend: TensorRTBackend, name: str, rec: EngineFile) -> None:
        trt = backend.trt
        self.name, self.rec, self.backend = name, rec, backend
        self.graph_rec = backend.art.graph(name)
        self.kind = self.graph_rec.kind
        path = backend.art.root / rec.path
        if not path.is_file():
            raise ArtifactError(f"{name}: engine {path} is missing; run fastvar-build {backend.art.root}")
        if sha256_file(path) != rec.sha256:
            raise ArtifactError(f"{name}: {path} does not match its recorded sha256; rebuild with fastvar-build")
        backend.sink.errors.clear()
        self.engine = backend.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{name}: TensorRT could not load {path}: " + "; ".join(backend.sink.errors))
        self._check_io(trt)
        self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        self.inputs = {t.name: t for t in self.graph_rec.inputs}
        self.outputs = {t.name: t for t in self.graph_rec.outputs}
        self.bound: dict[str, torch.Tensor] = {}
        self.owned: dict[str, torch.Tensor] = {}
        self.staging: dict[str, tuple] = {}  # name -> (pinned host buffer, CUDA event of its last copy)
        self.cuda_graph = None
        self.graph_ok = backend.cuda_graphs and rec.plugin.get("implementation", "aot") == "aot"
        self.runs = 0
        self.events: list = []
        self.host_seconds = 0.0
        for w in self.graph_rec.weights:
            self.bind(w, backend.weights[w])

    def _check_io(self, trt) -> None:
        want: dict[str, TensorRecord | None] = {t.name: t for t in (*self.graph_rec.inputs, *self.graph_rec.outputs)}
        want.update({w: None for w in self.graph_rec.weights})
        have = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        why = []
        if have != set(want):
            missing, extra = sorted(set(want) - have), sorted(have - set(want))
            why.append(f"engine I/O differs from the graph (missing {missing[:5]}, unexpected {extra[:5]})")
        dtypes = _trt_dtypes(trt)
        for n in sorted(have & set(want)):
            spec = want[n]
            shape = tuple(self.engine.get_tensor_shape(n))
            dtype = dtypes.get(self.engine.get_tensor_dtype(n))
            if spec is None:  # a weight: it must match the store's tensor bound to it
                w = self.backend.weights[n]
                if shape != tuple(w.shape) or dtype != w.dtype:
                    why.append(f"weight {n} is {shape} {dtype} in the engine, {tuple(w.shape)} {w.dtype} in the store")
            elif shape != spec.shape or dtype != TORCH_DTYPES[spec.dtype]:
                why.append(f"{n} is {shape} {dtype} in the engine, {spec.shape} {spec.dtype} in the graph")
        if why:
            raise ArtifactError(f"{self.name}: the engine was not built from this graph: " + "; ".join(why)
                                + f". Rebuild with fastvar-build {self.backend.art.root} --force")

    def bind(self, name: str, t: torch.Tensor) -> None:
        """Point ``name`` at ``t`` (no copy); a changed address drops the captured graph."""
        if not t.is_contiguous():
            raise ArtifactError(f"{self.name}: {name} is not contiguous; binding it would need a copy")
        old = self.bound.get(name)
        if old is not None and old.data_ptr() == t.data_ptr():
            self.bound[name] = t
            return
        if not self.context.set_tensor_address(name, t.data_ptr()):
            raise ArtifactError(f"{self.name}: TensorRT refused the address of {name}")
        self.bound[name] = t
        self.cuda_graph = None

    def feed(self, name: str, t: torch.Tensor) -> None:
        """Per-call inputs are copied into a buffer owned here (a fixed address); the rest are bound."""
        check_input(self.name, name, t, self.inputs[name])
        if name in PER_CALL:
            if name not in self.owned:
                self.owned[name] = torch.empty_like(t, device=self.backend.device)
            self._stage(name, t)
            t = self.owned[name]
        self.bind(name, t)

    def _stage(self, name: str, t: torch.Tensor) -> None:
        """Copy ``t`` into the owned buffer without making the host wait for the stream: a host tensor goes
        through a pinned staging buffer (reused once its previous copy has left it)."""
        dst = self.owned[name]
        if not (self.backend.on_cuda and t.device.type == "cpu"):
            dst.copy_(t, non_blocking=True)
            return
        if name not in self.staging:
            self.staging[name] = (torch.empty_like(t).pin_memory(), torch.cuda.Event())
        buf, copied = self.staging[name]
        copied.synchronize()  # the copy out of this buffer one image ago: long done, in steady state
        buf.copy_(t)
        dst.copy_(buf, non_blocking=True)
        copied.record(self.backend.stream)

    def output(self, name: str, t: torch.Tensor | None = None) -> torch.Tensor:
        if t is None:
            if name not in self.owned:
                spec = self.outputs[name]
                self.owned[name] = torch.empty(spec.shape, dtype=TORCH_DTYPES[spec.dtype],
                                               device=self.backend.device)
            t = self.owned[name]
        self.bind(name, t)
        return t

    def run(self) -> dict[str, torch.Tensor]:
        b = self.backend
        missing = [n for n in (*self.inputs, *self.outputs) if n not in self.bound]
        if missing:
            raise ArtifactError(f"{self.name}: nothing bound to {', '.join(missing)}")
        t0 = time.perf_counter()
        if b.on_cuda:
            torch.cuda.nvtx.range_push(self.name)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(b.stream)
        if self.cuda_graph is not None:
            self.cuda_graph.replay()
        else:
            self._execute()
            if self.graph_ok and b.on_cuda:
                self._capture()
        if b.on_cuda:
            end.record(b.stream)
            self.events.append((start, end))
            torch.cuda.nvtx.range_pop()
        self.host_seconds += time.perf_counter() - t0
        self.runs += 1
        return {n: self.bound[n] for n in self.outputs}

    def _execute(self) -> None:
        b = self.backend
        b.sink.errors.clear()
        if not self.context.execute_async_v3(b.stream_handle):
            raise ArtifactError(f"{self.name}: execute_async_v3 failed: " + "; ".join(b.sink.errors))

    def _capture(self) -> None:
        """Capture this engine's launch once its bindings are final (after one uncaptured run, as TensorRT
        needs); later calls replay it. An engine that cannot be captured keeps running uncaptured."""
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g, stream=self.backend.stream):
                self._execute()
        except RuntimeError as err:
            self.graph_ok = False
            warnings.warn(f"{self.name}: CUDA graph capture failed ({err}); running it without one", stacklevel=2)
            return
        self.cuda_graph = g

    def release(self) -> None:
        """Let go of the tensors bound by address that this engine does not own (KV slices, caches, inputs);
        weights and owned buffers stay. The next run rebinds them, and recaptures its CUDA graph."""
        weights = set(self.graph_rec.weights)
        self.bound = {n: t for n, t in self.bound.items() if n in weights or n in self.owned}
        self.cuda_graph = None

    def seconds(self) -> float:
        """Device time inside this engine (CUDA events) or host time without CUDA."""
        if not self.backend.on_cuda:
            return self.host_seconds
        self.backend.stream.synchronize()
        return sum(s.elapsed_time(e) for s, e in self.events) / 1000.0


class TensorRTBackend(GraphBackend):
    name = "tensorrt"
    keeps_state = True  # the KV cache and every buffer keep their addresses: captured CUDA graphs replay
    host_values = True  # scalars and noise are staged into owned device buffers without waiting for the stream

    def __init__(self, art: Artifact, device: str = "cuda", cuda_graphs: bool = True, trt=None,
                 graphs: list[str] | None = None) -> None:
        from fastvar.builder.engine_builder import TrtLogger, device_compute_capability, import_tensorrt

        self.trt = trt = trt or import_tensorrt()
        self.art = art
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        self.cuda_graphs = cuda_graphs
        engines = art.manifest.engines
        names = graphs or art.run_graphs()
        unbuilt = [n for n in names if n not in engines]
        if unbuilt:
            raise ArtifactError(f"{art.root}: no engine for {', '.join(unbuilt)}; run fastvar-build {art.root}")
        stale = [n for n in names if engines[n].graph_key != art.graph(n).key]
        if stale:
            raise ArtifactError(f"{art.root}: the engines of {', '.join(stale)} were built from older graphs; "
                                f"run fastvar-build {art.root}")
        cc = device_compute_capability() if self.on_cuda else engines[names[0]].compute_capability
        self.check_machine(art, names, trt.__version__, cc)
        if any(engines[n].plugin.get("implementation") == "jit" for n in names):
            from fastvar.plugins.restore.trt_plugin import register

            register(int(cc.replace(".", "")))
        self.sink = TrtLogger(trt)
        self.runtime = trt.Runtime(self.sink.logger)
        if self.on_cuda:
            self.stream = torch.cuda.Stream(self.device)
            self.stream_handle = self.stream.cuda_stream
        else:
            self.stream, self.stream_handle = None, 0
        # one tensor at a time through the host: loading never holds the whole store there
        self.weights = {k: v.to(self.device) for k, v in iter_store(art.weight_path())}
        self.weight_bytes = sum(t.numel() * t.element_size() for t in self.weights.values())
        self.engines = {n: _Engine(self, n, engines[n]) for n in names}
        size = max(e.engine.device_memory_size_v2 for e in self.engines.values())
        self.scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
        for e in self.engines.values():
            e.context.set_device_memory(self.scratch.data_ptr(), size)
        self._setup(art, self.device, self.engines)
        codebook = art.manifest.codebook  # HART embeds sampled indices itself: the store's codebook rows
        self.codebook = self.weights[codebook] if codebook else None

    @staticmethod
    def check_machine(art: Artifact, names: list[str], trt_version: str, cc: str) -> None:
        """Refuse, with every reason per engine, what this TensorRT and GPU cannot load."""
        import onnx

        from fastvar.plugins.restore.trt_plugin import plugin_fingerprint

        why = []
        for n in names:
            rec = art.manifest.engines[n].record()
            current = {}
            if rec.plugin.get("ptx_sha256") and rec.compute_capability == cc and _has_triton():
                model = onnx.load(str(art.graph_path(n)), load_external_data=False)
                current = {cc: plugin_fingerprint(model, int(cc.replace(".", ""))).get("ptx_sha256", "")}
            elif rec.plugin.get("ptx_sha256"):
                current = {rec.compute_capability: rec.plugin["ptx_sha256"]}  # the plan embeds its own PTX
            why += [f"{n}: {w}" for w in mismatches(rec, Machine(trt_version, cc, current))]
        if why:
            raise ArtifactError(f"{art.root}: engines do not match this machine: " + "; ".join(why)
                                + f". Rebuild them here with fastvar-build {art.root}")

    @contextlib.contextmanager
    def on_stream(self):
        """Run on the backend's stream, ordered after the caller's stream (whose work made the inputs) and
        before it (which reads the outputs): device-side waits, no host synchronisation. No-op without CUDA."""
        if not self.on_cuda:
            yield
            return
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            yield
        caller.wait_stream(self.stream)

    def synchronize(self) -> None:
        if self.on_cuda:
            self.stream.synchronize()


def _has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None
