"""``fastvar-export``: model + schedule -> static graphs, one weight store and a manifest.

Stages are cached like TensorRT's diffusion demo, but by content, not by file existence: every graph
has a key (a hash of its interface, the schedule, precision, restore-op spelling, opset and tool
versions; weights are inputs, so graph keys do not depend on weight values) and every file its sha256.
A re-run rebuilds only graphs whose key changed or whose file no longer matches, rewrites the weight
store only when the weights' source changed, and says when there was nothing to do. The manifest is
rewritten atomically after every file, marked incomplete until the end, so an interrupted export
resumes and is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import fastvar
from fastvar.atomic import TEMP_SUFFIX, atomic_write_bytes, atomic_write_json
from fastvar.export.graph_jobs import default_jobs, groups_sharing, run_groups
from fastvar.export.graphs import GraphDef, Shapes, weight_tensors
from fastvar.export.memory_plan import MemoryPlan
from fastvar.export.models.factory import ModelOptions, build_pair
from fastvar.export.progress import ExportProgress, graph_costs
from fastvar.export.schedules import PrunePlan, ScaleSchedule
from fastvar.export.stamp import Forms, export_stamped
from fastvar.family import for_model
from fastvar.graph_io import interface_problems
from fastvar.lock import LOCK, artifact_lock
from fastvar.manifest import FORMAT_VERSION, MANIFEST, file_record, verify_file
from fastvar.manifest_schema import ManifestError, read_graph

BACKENDS = ("tensorrt", "onnxruntime", "onnx")
RESTORE_OPS = ("auto", "custom", "custom-add", "standard")
TRT_TOPK_MAX = 3840


@dataclass
class ExportOptions(ModelOptions):
    text_len: int = 64
    guidance: bool = True
    backend: str = "onnxruntime"
    restore_op: str = "auto"
    out: str | None = None
    force: bool = False
    gpu_memory: float | None = None
    attention_budget_mib: float | None = None  # None: 512 for onnxruntime, unchunked for TensorRT/onnx
    allow_nonempty: bool = False  # write into a non-empty directory that is not an artifact
    wait: bool = False  # wait for another writer's lock on the artifact instead of refusing at once
    jobs: int | None = None  # processes exporting graphs at once; None: one per core, at most 4

    def resolved_jobs(self) -> int:
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"--jobs {self.jobs}: give a number of processes, 1 or more")
        return self.jobs or default_jobs()

    def resolved_attention_budget(self) -> int | None:
        """Bytes one chunk of decomposed attention may hold; TensorRT fuses attention, so no chunking."""
        mib = self.attention_budget_mib
        if mib is None:
            mib = 512.0 if self.backend == "onnxruntime" else 0.0
        return int(mib * 2**20) or None

    def resolved_restore_op(self) -> str:
        """TensorRT meets the custom node as its plugin; ONNX Runtime runs the standard spelling natively."""
        if self.restore_op != "auto":
            return self.restore_op
        return "standard" if self.backend == "onnxruntime" else "custom"


class ModelSource:
    """Where the weights come from. Random weights are built only when something must be (re)written;
    a checkpoint is opened at once (memory-mapped, so untouched weights are not read)."""

    def __init__(self, opts: ExportOptions) -> None:
        self.opts = opts
        self.family = for_model(opts.model)
        self._pair: tuple | None = None
        if opts.random_init:
            if opts.ckpt or opts.vae:
                raise ValueError("--random-init and --ckpt/--vae exclude each other: pick one")
            cfg = self.family.preset(opts.model)
            self.cfg = cfg.with_depth(opts.depth) if opts.depth is not None else cfg
            self.identity = {"kind": "random-init", "preset": cfg.name, "depth": self.cfg.depth,
                             "seed": opts.weights_seed}
        else:
            files = self.family.checkpoint_files(opts.ckpt, opts.vae)
            self._pair = build_pair(opts.model, opts.ckpt, opts.vae, False, opts.depth, 0, opts.precision)
            self.cfg = self._pair[0].cfg
            self.identity = {"kind": "checkpoint", **{k: file_identity(p) for k, p in files.items()}}

    @property
    def built(self) -> bool:
        """Whether the model is in memory (a checkpoint is opened at once; random weights when first asked)."""
        return self._pair is not None

    def pair(self) -> tuple:
        if self._pair is None:
            o = self.opts
            self._pair = build_pair(o.model, None, None, True, o.depth, o.weights_seed, o.precision)
        return self._pair

    def skeleton(self):
        """The model on the meta device: enough to describe every graph without any weight."""
        if self._pair is not None:
            return self._pair[0]
        return self.family.skeleton(self.cfg, self.opts.precision)

    def skeleton_decoder(self):
        """The decoder side (VAE, or HART's tokenizer) on the meta device, or the real one when loaded."""
        if self._pair is not None:
            return self._pair[1]
        return self.family.skeleton_decoder(self.cfg)


def file_identity(path: str) -> dict:
    p = Path(path).resolve()
    if not p.exists():
        raise ValueError(f"{path} does not exist")
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    return {"path": str(p), "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]}


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tool_versions() -> dict:
    import onnx

    return {"fastvar-trt": fastvar.__version__, "torch": torch.__version__.split("+")[0], "onnx": onnx.__version__}


def schedule_record(sched: ScaleSchedule, plan: PrunePlan) -> list[dict]:
    return [{"index": st.index, "h": st.h, "w": st.w, "tokens": st.tokens, "pruned_fraction": st.pruned_fraction,
             "kept": st.kept, "skipped": st.skipped,
             "graph": None if st.skipped else f"graphs/step_{st.index:02d}.onnx"} for st in plan.steps]


def restore_spelling(restore_op: str) -> dict:
    """StepGraph's restore functions for a ``--restore-op``: the plugin node(s), or standard ops."""
    from fastvar.plugins.restore.torch_op import restore_add_custom, restore_custom, restore_standard

    if restore_op == "standard":
        return {"restore_fn": restore_standard}
    if restore_op == "custom-add":
        return {"restore_fn": restore_custom, "restore_add_fn": restore_add_custom}
    return {"restore_fn": restore_custom}


def check_tensorrt_limits(plan: PrunePlan, backend: str) -> None:
    """Refuse at export what TensorRT cannot build: its TopK takes k <= 3840 (``onnx`` graphs are the
    ones fastvar-build turns into engines, so they are held to it too)."""
    if backend not in ("tensorrt", "onnx"):
        return
    too_big = [st for st in plan.executed if st.pruned and st.kept > TRT_TOPK_MAX]
    if too_big:
        st = too_big[0]
        raise ValueError(
            f"step {st.index} ({st.h}x{st.w}) keeps {st.kept} tokens, but TensorRT's TopK selects at most "
            f"{TRT_TOPK_MAX}; prune at least {st.tokens - TRT_TOPK_MAX} of its {st.tokens} tokens "
            f"(fraction >= {(st.tokens - TRT_TOPK_MAX) / st.tokens:.3f}), or export with --backend onnxruntime"
        )


def resolve(opts: ExportOptions) -> tuple[ModelSource, ScaleSchedule, PrunePlan, Shapes]:
    if opts.backend not in BACKENDS:
        raise ValueError(f"unknown backend {opts.backend!r}; accepted: {', '.join(BACKENDS)}")
    if opts.restore_op not in RESTORE_OPS:
        raise ValueError(f"unknown restore op {opts.restore_op!r}; accepted: {', '.join(RESTORE_OPS)}")
    if opts.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {opts.batch}")
    source = ModelSource(opts)
    r = source.family.resolve_export(source.cfg, opts)
    check_tensorrt_limits(r.plan, opts.backend)
    return source, r.sched, r.plan, Shapes(opts.batch, r.text_len, opts.guidance)


def _memory_plan(source: ModelSource, sched: ScaleSchedule, plan: PrunePlan, shapes: Shapes,
                 precision: str) -> MemoryPlan:
    return source.family.memory_plan(source.cfg, source.skeleton(), source.skeleton_decoder(), sched, plan, shapes,
                                     precision)


def plan_memory(opts: ExportOptions) -> MemoryPlan:
    source, sched, plan, shapes = resolve(opts)
    return _memory_plan(source, sched, plan, shapes, opts.precision)


def default_out(opts: ExportOptions) -> Path:
    schedule = opts.schedule.replace(":", "_").replace(",", "-")
    depth = f"-d{opts.depth}" if opts.depth is not None else ""
    guidance = "" if opts.guidance else "-nocfg"
    name = f"{opts.model}{depth}-{opts.res}-{opts.aspect.replace(':', 'x')}-{schedule}-{opts.precision}"
    return Path("engines") / f"{name}-b{opts.batch}-t{opts.text_len}{guidance}"


def export(opts: ExportOptions, log: Callable[[str], None] = print) -> dict:
    """Write (or bring up to date) the artifact of ``opts``; returns the manifest."""
    if opts.backend == "tensorrt":
        _require_tensorrt()
    source, sched, plan, shapes = resolve(opts)
    mem = _memory_plan(source, sched, plan, shapes, opts.precision)
    if opts.gpu_memory is not None:
        mem.check_fits(opts.gpu_memory)
    root = Path(opts.out) if opts.out else default_out(opts)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--out {root} exists and is not a directory")
    theirs = root.is_dir() and any(p.name != LOCK for p in root.iterdir())
    if theirs and not (root / MANIFEST).is_file() and not opts.allow_nonempty:
        raise ValueError(f"--out {root} is a non-empty directory that is not an artifact (no {MANIFEST}); give an "
                         "empty or new directory, or --allow-nonempty to write the artifact among its files")
    root.mkdir(parents=True, exist_ok=True)
    with artifact_lock(root, opts.wait):
        return _write_artifact(opts, root, source, sched, plan, shapes, mem, log)


def _write_artifact(opts: ExportOptions, root: Path, source, sched: ScaleSchedule, plan: PrunePlan, shapes: Shapes,
                    mem: MemoryPlan, log: Callable[[str], None]) -> dict:
    """The export proper, under the artifact's writer lock: what is stale is rewritten, the rest kept."""
    restore_op = opts.resolved_restore_op()
    from fastvar.plugins.restore.onnx_op import register_schema, translation_table

    register_schema()
    restore_fns = restore_spelling(restore_op)
    table = translation_table() if restore_op != "standard" else None
    tools = tool_versions()
    skeleton = source.skeleton()
    budget = opts.resolved_attention_budget()
    fam = source.family
    defs = fam.graphs(skeleton, source.skeleton_decoder(), sched, plan, shapes, restore_fns, budget)
    common = {"opset": 20, "restore_op": restore_op, "precision": opts.precision, "tools": tools,
              "config": source.cfg.to_dict()}
    old = _previous(root, opts.force)
    manifest = {
        "format_version": FORMAT_VERSION, "complete": False,
        "model": {"name": opts.model, "family": fam.name, "config": source.cfg.to_dict(),
                  "source": source.identity},
        "resolution": opts.res, "aspect": opts.aspect, "template": sched.template, "tier": sched.tier,
        "pixels": list(sched.pixels), "precision": opts.precision, "batch": opts.batch, "text_len": shapes.text_len,
        "guidance": opts.guidance, "backend": opts.backend, "restore_op": restore_op, "opset": 20,
        "schedule": plan.to_dict(), "cache_scale": plan.cache_scale, "rope_grid": list(sched.rope_grid),
        "scales": schedule_record(sched, plan), "graphs": {}, "weights": [], "tools": tools,
        "memory_plan": mem.to_dict(), "engines": {},
    }
    _sweep_temp_files(root)
    marked = []

    def unfinished() -> None:
        """Before the first file is rewritten: from here until the end the directory is an unfinished export,
        whatever happens. A no-op re-export never marks a complete artifact incomplete."""
        if not marked:
            _write_manifest(root, {**old, "complete": False} if old else manifest)
            marked.append(True)

    if not old:
        unfinished()
    rebuilt, t_all = [], time.perf_counter()
    n = len(defs)
    keys_of = {g.definition().name: graph_key(common, g.definition(), sched, plan, source.identity) for g in defs}
    stale = [g for g in defs if not _still_good(root, old.get("graphs", {}).get(g.definition().name), g.definition(),
                                                keys_of[g.definition().name], fam.name, source.cfg.depth)]
    if stale and not source.built:  # before the graphs' clock starts, so the first graph's time is its own
        t0 = time.perf_counter()
        source.pair()
        log(f"model: random weights built in {time.perf_counter() - t0:.1f}s")
    costs = graph_costs(stale, _parts)
    progress = ExportProgress(costs, log)
    index = {g.definition().name: i for i, g in enumerate(defs, 1)}
    for g in defs:
        if g not in stale:
            manifest["graphs"][g.definition().name] = old["graphs"][g.definition().name]
    counts = {"traced": 0, "stamped": 0}
    jobs = 1
    if stale:
        work = _graph_work(root, source, fam, sched, plan, shapes, restore_fns, budget, table, keys_of)
        stale_defs = {g.definition().name: g for g in stale}
        groups = groups_sharing(list(stale_defs), lambda name: {p.key for p in _parts(stale_defs[name]) or ()})
        jobs = min(opts.resolved_jobs(), len(groups))
        if jobs > 1:  # the costliest first, so no worker is left with a long graph at the end
            groups.sort(key=lambda grp: -sum(costs[name] for name in grp))
        unfinished()
        t_graphs = time.perf_counter()

        def started(name: str) -> None:
            g = stale_defs[name]
            progress.start(index[name], n, name, _what(g.definition(), plan, _parts(g)))

        def done(name: str, result: dict) -> None:
            manifest["graphs"][name] = result["record"]
            counts["traced"] += result["traced"]
            counts["stamped"] += result["stamped"]
            rebuilt.append(name)
            progress.finish(index[name], n, name)
            _write_manifest(root, manifest)

        run_groups(groups, work, jobs, started, done)
        manifest["graphs"] = {g.definition().name: manifest["graphs"][g.definition().name] for g in defs}
        log(f"graphs: {len(rebuilt)} exported in {time.perf_counter() - t_graphs:.1f}s"
            + (f" on {jobs} processes" if jobs > 1 else "")
            + (f" ({counts['traced']} forms traced for {counts['stamped']} stamped parts)"
               if counts["stamped"] else ""))
    keys = sorted({w for g in manifest["graphs"].values() for w in g["weights"]})
    if fam.codebook_key:
        manifest["codebook"] = fam.codebook_key
    wkey = _key({"source": source.identity, "precision": opts.precision, "keys": keys})
    store = root / "weights" / "transformer.safetensors"
    prev_w = (old.get("weights") or [None])[0]
    if prev_w and prev_w.get("key") == wkey and verify_file(root, prev_w) is None:
        manifest["weights"] = [prev_w]
    else:
        from fastvar.export.weight_store import write_store

        t0 = time.perf_counter()
        model, vae = source.pair()
        tensors = weight_tensors(model)
        extra = fam.extra_weights(vae)
        keys = [*keys, *extra]
        tensors.update(extra)
        unfinished()
        _, digest = write_store(store, keys, tensors)
        manifest["weights"] = [{**file_record(root, store, digest), "key": wkey, "tensors": len(keys)}]
        rebuilt.append("weights")
        log(f"weights: {len(keys)} tensors, {store.stat().st_size / 2**20:.1f} MiB written in "
            f"{time.perf_counter() - t0:.1f}s")
    manifest["engines"] = {name: rec for name, rec in old.get("engines", {}).items() if name not in rebuilt
                           and manifest["graphs"].get(name, {}).get("key") == rec.get("graph_key")}
    manifest["complete"] = True
    _write_manifest(root, manifest)
    if rebuilt:
        log(f"exported {len(rebuilt)} of {n + 1} files to {root} in {time.perf_counter() - t_all:.1f}s")
    else:
        log(f"{root} is up to date: nothing to export (use --force to rebuild)")
    manifest["_rebuilt"] = rebuilt
    manifest["_root"] = str(root)
    return manifest


def _still_good(root: Path, prev, d: GraphDef, key: str, family: str, depth: int) -> bool:
    """Whether an earlier export's graph is what this one would write: same key, the interface ``d`` describes
    recorded, the file where it belongs and as recorded, and declaring what its record says (a graph edited
    and re-hashed into the manifest is rewritten, not called up to date)."""
    if not isinstance(prev, dict) or prev.get("key") != key:
        return False
    if (prev.get("inputs"), prev.get("outputs")) != ([s.to_dict() for s in d.inputs], [s.to_dict() for s in d.outputs]):
        return False
    try:
        rec = read_graph(d.name, prev)
    except ManifestError:
        return False
    if rec.kind != d.kind or rec.file.path != f"graphs/{d.name}.onnx" or verify_file(root, rec.file) is not None:
        return False
    return not interface_problems(rec, root / rec.file.path, depth, family)


def graph_key(common: dict, d: GraphDef, sched: ScaleSchedule, plan: PrunePlan, source: dict) -> str:
    """Everything a graph file depends on: its interface, what it bakes in, how it was exported, and for
    the VAE graph (which holds its weights) the weights' source. Step graphs do not depend on weights."""
    return _key({**common, "graph": d.signature(), **_baked(d, sched, plan),
                 **({"vae": source} if d.kind in ("decoder", "next_input") else {})})


def _baked(d: GraphDef, sched: ScaleSchedule, plan: PrunePlan) -> dict:
    """What a graph bakes in beyond its interface: a step's grid, RoPE table and FastVAR geometry."""
    if d.kind not in ("step", "validate"):
        return {}
    st = plan.steps[d.step]
    return {"hw": [st.h, st.w], "rope_grid": list(sched.rope_grid), "cache_hw": plan.cache_hw,
            "block_range": list(plan.block_range), "kept": st.kept}


def _graph_work(root: Path, source, fam, sched: ScaleSchedule, plan: PrunePlan, shapes: Shapes, restore_fns,
                budget, table, keys_of: dict[str, str]) -> Callable[[str], dict]:
    """What exports one graph by name and writes its file: run here or in a forked worker, it builds the
    real-weight graphs and its cache of forms on first use (a worker's own, shared by the groups it takes)."""
    state: dict = {}

    def work(name: str) -> dict:
        if not state:
            model, vae = source.pair()
            state["graphs"] = {x.definition().name: x for x in fam.graphs(model, vae, sched, plan, shapes,
                                                                           restore_fns, budget)}
            state["forms"] = Forms(model, weight_tensors(model), table)
        forms: Forms = state["forms"]
        g = state["graphs"][name]
        d = g.definition()
        traced, stamped = forms.traced, forms.stamped
        data, final = _export_one(g, d, forms)
        path = root / "graphs" / f"{name}.onnx"
        atomic_write_bytes(path, data, f"graph {name}")
        return {"record": {**final.signature(), "key": keys_of[name], "file": file_record(root, path)},
                "traced": forms.traced - traced, "stamped": forms.stamped - stamped}

    return work


def _export_one(g, d: GraphDef, forms: Forms) -> tuple[bytes, GraphDef]:
    """Step graphs are stamped from their parts' forms; the others are traced whole."""
    from fastvar.export.onnx_export import export_graph

    if d.kind in ("decoder", "next_input"):
        return export_graph(g.module(), d, {}, None)
    if hasattr(g, "parts"):
        return export_stamped(g.parts(), d, forms)
    return export_graph(g.module(), d, forms.weights, forms.table)


def _parts(g) -> list | None:
    """A graph's parts when it is stamped from them (step graphs), None when it is traced whole."""
    return g.parts() if hasattr(g, "parts") else None


def _what(d: GraphDef, plan: PrunePlan, parts: list | None) -> str:
    what = d.kind
    if d.kind in ("step", "validate"):
        st = plan.steps[d.step]
        what = f"{st.h}x{st.w}, {st.tokens} tokens" + (f", keeps {st.kept}" if st.pruned else "")
        what += " (validation variant: kept indices as inputs)" if d.kind == "validate" else ""
    if not parts:
        return what + ", traced whole"
    return what + f"; {len(parts)} parts of {len({p.key for p in parts})} forms"


def _previous(root: Path, force: bool) -> dict:
    path = root / MANIFEST
    if force or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        return {}
    return data


def _sweep_temp_files(root: Path) -> None:
    """Remove what an interrupted atomic write of ours left behind (``.name.XXXX.fastvar.tmp``, in the artifact
    and its own folders, not below them): never a finished file, nobody else's temp file."""
    for folder in (root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())):
        for p in folder.glob(f".*{TEMP_SUFFIX}"):
            if p.is_file() and not p.is_symlink():
                p.unlink()


def _write_manifest(root: Path, manifest: dict) -> None:
    atomic_write_json(root / MANIFEST, {k: v for k, v in manifest.items() if not k.startswith("_")}, "the manifest")


def _require_tensorrt() -> None:
    try:
        import tensorrt  # noqa: F401
    except Exception as err:
        raise ValueError(
            f"--backend tensorrt needs TensorRT, which does not import here ({type(err).__name__}: {err}). "
            "Use --backend onnxruntime to compile and run without TensorRT, or export the graphs anywhere with "
            "--backend onnx and run fastvar-build DIR on a GPU machine that has TensorRT"
        ) from None


def artifact_dir(manifest: dict) -> os.PathLike:
    return Path(manifest["_root"])
