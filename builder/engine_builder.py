"""Build TensorRT engines from an artifact's graphs, on the GPU they will run on.

One engine per graph the generation runs (conditioning, every executed step, VAE decoder), fully static
(no optimisation profile), strongly typed (TensorRT 11 has no precision flags: the graphs carry their
types), with the FastVARRestore plugin's AOT implementation embedded. One timing cache is shared by all
builds and saved after each, so later scales reuse the tactics timed for earlier ones and an interrupted
build resumes. Engines are named with the TensorRT version and compute capability (a plan loads only on
both), written atomically, and each gets a compatibility record in the manifest, so a re-run rebuilds only
what is stale: a changed graph, another TensorRT or GPU, a changed plugin kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastvar.atomic import atomic_write_bytes, atomic_write_json
from fastvar.compat import EngineRecord
from fastvar.lock import artifact_lock
from fastvar.manifest import MANIFEST, Artifact, ArtifactError, sha256_file
from fastvar.manifest_schema import EngineFile

ENGINE_DIR = "engines"


class BuildError(RuntimeError):
    """TensorRT refused a graph: the parser's or builder's reasons, with the graph named."""


@dataclass
class BuildOptions:
    optimization_level: int = 3  # TensorRT's builder_optimization_level, 0-5
    workspace_mib: int | None = None  # cap on the builder's scratch memory; None: TensorRT's default (the GPU)
    timing_cache: str | None = None  # default: DIR/engines/timing.trt<ver>.sm<cc>.cache
    force: bool = False
    graphs: tuple[str, ...] = ()  # a subset of the run graphs; empty: all of them
    compute_capability: str | None = None  # default: the CUDA device's (an engine is built where it runs)
    validation: bool = False  # also the pruned steps' validation variants (fastvar-validate --backend tensorrt)
    tf32: bool = False  # TensorRT enables TF32 for fp32 math by default; fp32 here means fp32 unless asked
    wait: bool = False  # wait for another writer's lock on the artifact instead of refusing at once

    def flags(self) -> list[str]:
        return ["PREFER_AOT_PYTHON_PLUGINS"] + (["TF32"] if self.tf32 else ["no TF32"])

    def validate(self) -> None:
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"--optimization-level must be 0..5 (TensorRT's builder levels), got "
                             f"{self.optimization_level}")
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise ValueError(f"--workspace must be a positive number of MiB, got {self.workspace_mib}")


def import_tensorrt():
    """The tensorrt module, or a clear error: TensorRT ships as pip wheels only from NVIDIA's index."""
    try:
        import tensorrt
    except Exception as err:
        raise ArtifactError(
            f"TensorRT does not import here ({type(err).__name__}: {err}). fastvar-build runs on the GPU machine "
            "with TensorRT 10.x/11.x (pip install tensorrt-cu12 or tensorrt-cu13 from pypi.nvidia.com); "
            "to run without it use fastvar-run --backend onnxruntime"
        ) from None
    return tensorrt


def device_compute_capability() -> str:
    import torch

    if not torch.cuda.is_available():
        raise ArtifactError("no CUDA device: TensorRT engines are built on the GPU they will run on")
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def engine_file(graph: str, trt_version: str, compute_capability: str) -> str:
    """``engines/step_07.trt11.1.0.sm90.plan``: a plan runs only on the TensorRT and GPU it was built with."""
    return f"{ENGINE_DIR}/{graph}.trt{trt_version}.sm{compute_capability.replace('.', '')}.plan"


class TrtLogger:
    """A TensorRT logger that keeps the errors, so a failed build, load or launch can say why; warnings and
    errors also go to ``log`` when one is given."""

    def __init__(self, trt, log: Callable[[str], None] | None = None):
        sink = self

        class Forward(trt.ILogger):
            def __init__(inner):
                trt.ILogger.__init__(inner)

            def log(inner, severity, msg):
                if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                    sink.errors.append(str(msg))
                if log is not None and severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR,
                                                    trt.ILogger.WARNING):
                    log(f"  TensorRT: {msg}")

        self.errors: list[str] = []
        self.logger = Forward()


class EngineBuilder:
    """Builds one engine per graph with shared settings and one shared timing cache."""

    def __init__(self, trt, compute_capability: str, opts: BuildOptions, cache_path: Path,
                 log: Callable[[str], None] = print) -> None:
        from fastvar.plugins.restore import trt_plugin

        self.trt, self.opts, self.cache_path, self.log = trt, opts, cache_path, log
        self.compute_capability = compute_capability
        self.arch = int(compute_capability.replace(".", ""))
        trt_plugin.register(self.arch)
        self.sink = TrtLogger(trt, log)
        self.builder = trt.Builder(self.sink.logger)
        self.cache = None

    def _network(self):
        trt = self.trt
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
        if trt.__version__.split(".")[0] == "10":
            # TensorRT 10 builds weakly typed unless asked; 11 is always strongly typed (the flag is deprecated).
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return self.builder.create_network(flags)

    def _config(self):
        trt = self.trt
        config = self.builder.create_builder_config()
        config.builder_optimization_level = self.opts.optimization_level
        if not self.opts.tf32:
            config.clear_flag(trt.BuilderFlag.TF32)  # on by default: ~1e-3 relative error in fp32 matmuls
        if self.opts.workspace_mib is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.opts.workspace_mib * 2**20)
        if self.cache is None:
            data = self.cache_path.read_bytes() if self.cache_path.is_file() else b""
            self.cache = config.create_timing_cache(data)
        if not config.set_timing_cache(self.cache, False):
            raise BuildError(f"TensorRT refused the timing cache {self.cache_path} (made by another TensorRT or "
                             "GPU?); delete it or pass --timing-cache with a new path")
        return config

    def build(self, name: str, onnx_path: Path) -> bytes:
        """Parse and build one graph; raises BuildError with every reason TensorRT gave."""
        self.sink.errors.clear()
        network = self._network()
        network.name = name  # engine and profiler names
        parser = self.trt.OnnxParser(network, self.sink.logger)
        if not parser.parse_from_file(str(onnx_path)):
            why = []
            for i in range(parser.num_errors):
                err = parser.get_error(i)
                node = err.node_name() or f"#{err.node()}"
                why.append(f"node {node} ({err.node_operator()}): {err.desc()}")
            raise BuildError(f"{name}: TensorRT's ONNX parser refused {onnx_path}:\n  " + "\n  ".join(why))
        plan = self.builder.build_serialized_network(network, self._config())
        if plan is None:
            raise BuildError(f"{name}: TensorRT could not build an engine from {onnx_path}: "
                             + ("; ".join(self.sink.errors) or "no reason logged (run with --verbose)"))
        self.save_cache()
        return bytes(memoryview(plan))

    def save_cache(self) -> None:
        if self.cache is not None:
            atomic_write_bytes(self.cache_path, bytes(memoryview(self.cache.serialize())), "the timing cache")


def _stale_reason(art: Artifact, name: str, rec: EngineFile | None, trt_version: str, cc: str, fingerprint: dict,
                  triton_version: str | None, opts: BuildOptions) -> str | None:
    """Why ``name``'s engine must be (re)built, or None when the recorded one is current."""
    if rec is None:
        return "no engine yet"
    built = rec.builder
    if built.get("optimization_level") != opts.optimization_level or built.get("flags") != opts.flags():
        return (f"built at optimisation level {built.get('optimization_level')} with {built.get('flags')}, asked for "
                f"{opts.optimization_level} with {opts.flags()}")
    if rec.graph_key != art.graph(name).key:
        return "the graph changed since the build"
    if rec.tensorrt_version != trt_version or rec.compute_capability != cc:
        return f"built for TensorRT {rec.tensorrt_version} on sm {rec.compute_capability}"
    if rec.plugin.get("ptx_sha256") != fingerprint.get("ptx_sha256"):
        return "the plugin kernel changed"
    if fingerprint and rec.triton_version != triton_version:
        return f"its plugin PTX came from Triton {rec.triton_version}, this is {triton_version}"
    path = art.root / rec.path
    if not path.is_file() or path.stat().st_size != rec.bytes:
        return "the plan file is missing or truncated"
    return None


def build_engines(root: str | Path, opts: BuildOptions | None = None, log: Callable[[str], None] = print) -> dict:
    """Check, then build what is stale, holding the artifact's writer lock; returns the ``engines`` table."""
    opts = opts or BuildOptions()
    Artifact.load(root)  # not an artifact: its own message, before any lock file is made
    with artifact_lock(root, opts.wait):
        return _build_engines(root, opts, log)


def _build_engines(root: str | Path, opts: BuildOptions, log: Callable[[str], None]) -> dict:
    import onnx

    from fastvar.builder.onnx_check import require_compatible
    from fastvar.plugins.restore.trt_plugin import plugin_fingerprint

    opts.validate()
    art = Artifact.load(root)
    art.verify()
    known = list(art.manifest.graphs) if opts.validation else art.run_graphs()
    names = list(opts.graphs) or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ArtifactError(f"{art.root} has no graph {', '.join(unknown)} to build; graphs: {', '.join(known)}")
    require_compatible(art)
    trt = import_tensorrt()
    if art.has_plugin_nodes:
        from fastvar.plugins.restore.trt_plugin import require_triton

        try:
            require_triton()
        except ImportError as err:
            raise ArtifactError(str(err)) from None
    cc = opts.compute_capability or device_compute_capability()
    trt_version = trt.__version__
    cache_path = Path(opts.timing_cache) if opts.timing_cache else (
        art.root / ENGINE_DIR / f"timing.trt{trt_version}.sm{cc.replace('.', '')}.cache")
    builder = EngineBuilder(trt, cc, opts, cache_path, log)
    triton_version = _triton_version()
    engines = dict(art.data.get("engines") or {})  # the manifest's table as written, updated as engines are built
    built: list[str] = []
    for name in names:
        model = onnx.load(str(art.graph_path(name)), load_external_data=False)
        fingerprint = plugin_fingerprint(model, builder.arch)
        why = "--force" if opts.force else None if name in built else _stale_reason(
            art, name, art.manifest.engines.get(name), trt_version, cc, fingerprint, triton_version, opts)
        if why is None:
            log(f"{name}: engine up to date ({engines[name]['path']})")
            continue
        log(f"{name}: building ({why})")
        t0 = time.perf_counter()
        plan = builder.build(name, art.graph_path(name))
        rel = engine_file(name, trt_version, cc)
        atomic_write_bytes(art.root / rel, plan, f"engine {name}")
        rec = EngineRecord(path=rel, sha256=sha256_file(art.root / rel), tensorrt_version=trt_version,
                           compute_capability=cc, precision=art.manifest.precision, plugin=fingerprint,
                           triton_version=triton_version if fingerprint else None,
                           builder={"optimization_level": opts.optimization_level,
                                    "workspace_mib": opts.workspace_mib, "flags": opts.flags(),
                                    "timing_cache": cache_path.name})
        engines[name] = {**rec.to_dict(), "graph": name, "graph_key": art.graph(name).key, "bytes": len(plan),
                         "build_s": round(time.perf_counter() - t0, 3)}
        _save_engines(art, engines)
        built.append(name)
        log(f"{name}: {rel} ({len(plan) / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s)")
    _save_engines(art, engines)
    log(f"{len(built)} engine(s) built, {len(names) - len(built)} up to date; timing cache {cache_path}")
    return engines


def _save_engines(art: Artifact, engines: dict) -> None:
    art.data["engines"] = engines
    atomic_write_json(art.root / MANIFEST, art.data, "the manifest")


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__
