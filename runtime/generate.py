"""Run the PyTorch reference end to end: build the model, plan the schedule, generate, write files."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastvar.export.models.factory import ModelOptions, build_pair
from fastvar.family import for_artifact, for_model
from fastvar.runtime.chain import Geometry, HARTGeometry, generate
from fastvar.runtime.io import load_text_embeddings, read_npz, write_images, write_json, write_npz


@dataclass
class RunOptions(ModelOptions):
    text_embeddings: str | None = None
    seed: int = 0
    cfg: float = 4.0
    tau: float = 0.5
    more_smooth: bool = True  # HART: feed back the Gumbel-soft codebook mixture (upstream's sample.py default)


def _finish(res, out: str, save_tokens: str | None, save_logits: str | None, timings: str | None, load_s: float,
            log: Callable[[str], None]) -> dict:
    """Write a direct reference run's images, tokens, logits and timings; returns the timings report."""
    paths = _write_outputs(res, out, save_tokens, save_logits)
    report = {"load_s": load_s, **res.timings, "images": [str(p) for p in paths]}
    if timings:
        write_json(timings, report)
    log(f"loop {res.timings['loop_s']:.2f}s, decode {res.timings['decode_s']:.2f}s; per step: "
        + ", ".join(f"{s['index']}:{s['seconds']:.3f}s" for s in res.timings["steps"]))
    return report


def _write_outputs(res, out: str, save_tokens: str | None, save_logits: str | None) -> list:
    """The image(s), and the token and logit archives when asked: every run writes them the same way."""
    paths = write_images(res.images, out)
    if save_tokens:
        write_npz(save_tokens, res.tokens)
    if save_logits:
        write_npz(save_logits, res.logits)
    return paths


def run_reference(opts: RunOptions, out: str, save_tokens: str | None = None, save_logits: str | None = None,
                  force_tokens: str | None = None, timings: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Generate with the PyTorch reference built from a preset or checkpoint (``fastvar-run --model``)."""
    t0 = time.perf_counter()
    fam = for_model(opts.model)
    fam.check_resolution(opts.res, opts.aspect)
    model, decoder = build_pair(opts.model, opts.ckpt, opts.vae, opts.random_init, opts.depth, opts.weights_seed,
                                opts.precision)
    cfg = model.cfg
    sched = fam.schedule(cfg.to_dict(), opts.res, opts.aspect)
    plan = fam.prune_plan(cfg, sched, opts.schedule)
    text, lengths = load_text_embeddings(opts.text_embeddings, opts.batch, fam.text_width(cfg.to_dict()))
    forced = read_npz(force_tokens) if force_tokens else None
    load_s = time.perf_counter() - t0
    log(fam.describe(cfg, sched, plan))
    backend = fam.reference_backend(model, decoder, sched, plan)
    res = generate(backend, sched, plan, fam.geometry(cfg.to_dict(), opts.more_smooth), text, lengths, opts.seed,
                   opts.cfg, opts.tau, force_tokens=forced, keep_logits=save_logits is not None)
    return _finish(res, out, save_tokens, save_logits, timings, load_s, log)


def artifact_schedule(art):
    """The scale schedule an artifact was exported for."""
    d = art.data
    return for_artifact(art).schedule(d["model"]["config"], d["resolution"], d["aspect"])


def text_channels(art) -> int:
    return for_artifact(art).text_width(art.data["model"]["config"])


def default_cfg(art) -> float:
    """Upstream's inference default for the family (HART 4.5, Infinity 4), or the unguided value."""
    s = for_artifact(art).sampling
    return s.cfg if art.data["guidance"] else s.unguided_cfg


BACKEND_CHOICES = ("auto", "tensorrt", "onnxruntime", "torch")


def open_backend(art, backend: str = "auto", device: str = "cpu"):
    """The backend that runs an artifact; ``auto`` takes TensorRT engines when built and importable,
    else ONNX Runtime. ``torch`` rebuilds the reference model from the source the manifest records."""
    from fastvar.manifest import ArtifactError

    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {backend!r}; accepted: {', '.join(BACKEND_CHOICES)}")
    if backend == "auto":
        engines = art.data.get("engines") and _importable("tensorrt")
        backend = "tensorrt" if engines else "onnxruntime"
    if backend == "tensorrt":
        if not art.data.get("engines"):
            raise ArtifactError(f"{art.root} has no TensorRT engines: run fastvar-build {art.root} on the GPU machine "
                                "(or use --backend onnxruntime or torch)")
        if not torch.cuda.is_available():
            raise ArtifactError("the TensorRT backend runs on a CUDA GPU and this machine has none; use --backend "
                                "onnxruntime or torch here")
        from fastvar.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(art, "cuda")
    if backend == "onnxruntime":
        from fastvar.runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(art, device)
    return reference_backend(art)


def reference_backend(art):
    """The PyTorch reference for an artifact: same source, precision, schedule and shapes."""
    from fastvar.manifest import ArtifactError

    d = art.data
    src = d["model"]["source"]
    parts = {k: v for k, v in src.items() if k != "kind"}
    if src["kind"] == "checkpoint":
        from fastvar.export.artifact import file_identity

        for rec in parts.values():
            if file_identity(rec["path"]) != rec:
                raise ArtifactError(f"{rec['path']} changed since the export (size or modification time); "
                                    "the torch backend would compare different weights. Re-run fastvar-export")
        model, decoder = build_pair(d["model"]["name"], src["ckpt"]["path"], parts.get("vae", {}).get("path"), False,
                                    None, 0, d["precision"])
    else:
        model, decoder = build_pair(src["preset"], None, None, True, src["depth"], src["seed"], d["precision"])
    return for_artifact(art).reference_backend(model, decoder, artifact_schedule(art), art.plan())


def memory_report(backend, manifest: dict) -> dict:
    """The run's peak resident memory with the parts we can name, beside what the plan predicted."""
    import resource

    weights = getattr(backend, "weight_bytes", None)
    if weights is None:
        weights = sum(p.numel() * p.element_size() for p in backend.model.parameters())
        weights += sum(p.numel() * p.element_size() for p in backend.vae.parameters())
    plan = {it["name"]: it for it in manifest["memory_plan"]["items"]}
    peak = plan.get("peak step activations", {"bytes": 0, "note": ""})
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "weights_bytes": weights,
            "kv_cache_bytes": backend.kv_bytes,
            "planned_peak_activations_bytes": peak["bytes"], "planned_peak_note": peak["note"]}


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def artifact_geometry(art, more_smooth: bool = True) -> Geometry | HARTGeometry:
    return for_artifact(art).geometry(art.data["model"]["config"], more_smooth)


def run_artifact(root: str, out: str, backend: str = "auto", text_embeddings: str | None = None, seed: int = 0,
                 cfg: float | None = None, tau: float = 0.5, save_tokens: str | None = None,
                 save_logits: str | None = None, force_tokens: str | None = None, timings: str | None = None,
                 device: str = "cpu", more_smooth: bool = True, log: Callable[[str], None] = print) -> dict:
    """Generate with a compiled artifact (``fastvar-run DIR``); returns the timings report."""
    from fastvar.manifest import Artifact

    t0 = time.perf_counter()
    art = Artifact.load(root)
    art.verify()
    d = art.data
    if cfg is None:
        cfg = default_cfg(art)
    geom = artifact_geometry(art, more_smooth)
    unguided = f"{for_artifact(art).sampling.unguided_cfg:g}"
    if geom.loop(artifact_schedule(art), tau).guided(cfg) != d["guidance"]:
        from fastvar.manifest import ArtifactError

        raise ArtifactError(f"{root} was exported " + (f"with classifier-free guidance: give a --cfg other than "
                                                       f"{unguided}" if d["guidance"] else
                                                       f"without guidance (--no-guidance): it runs with --cfg "
                                                       f"{unguided} only"))
    be = open_backend(art, backend, device)
    sched = artifact_schedule(art)
    text, lengths = load_text_embeddings(text_embeddings, d["batch"], text_channels(art),
                                         default_len=min(16, d["text_len"]))
    forced = read_npz(force_tokens) if force_tokens else None
    load_s = time.perf_counter() - t0
    res = generate(be, sched, art.plan(), geom, text, lengths, seed, cfg, tau,
                   force_tokens=forced, keep_logits=save_logits is not None)
    paths = _write_outputs(res, out, save_tokens, save_logits)
    report = {"backend": be.name, "load_s": load_s, **res.timings, "images": [str(p) for p in paths],
              "memory": memory_report(be, d)}
    if timings:
        write_json(timings, report)
    mem = report["memory"]
    log(f"memory: peak RSS {mem['peak_rss_bytes'] / 2**30:.2f} GiB = weights {mem['weights_bytes'] / 2**30:.2f} + "
        f"KV cache {mem['kv_cache_bytes'] / 2**30:.2f} + activations and runtime; planned peak step activations "
        f"{mem['planned_peak_activations_bytes'] / 2**30:.2f} GiB ({mem['planned_peak_note']})")
    log(f"{be.name}: loop {res.timings['loop_s']:.2f}s, decode {res.timings['decode_s']:.2f}s; per step: "
        + ", ".join(f"{s['index']}:{s['seconds']:.3f}s" for s in res.timings["steps"]))
    return report
