"""Backends behind one small interface (``start``, ``step``, ``end_loop``, ``decode``), and the factory that
opens the one an artifact runs on."""

from __future__ import annotations

import importlib.util

import torch

from fastvar.export.models.factory import build_pair
from fastvar.family import artifact_schedule, for_artifact

BACKEND_CHOICES = ("auto", "tensorrt", "onnxruntime", "torch")


def resolve_backend(art, backend: str = "auto") -> str:
    """The backend ``open_backend`` will open: ``auto`` is TensorRT when engines are built and TensorRT imports,
    else ONNX Runtime (the memory plan is checked for it before anything loads)."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {backend!r}; accepted: {', '.join(BACKEND_CHOICES)}")
    if backend == "auto":
        engines = art.manifest.engines and importlib.util.find_spec("tensorrt") is not None
        return "tensorrt" if engines else "onnxruntime"
    return backend


def run_device(backend: str, device: str) -> str:
    """Where a backend computes: TensorRT on the GPU, the torch reference on the CPU, ONNX Runtime where
    ``--device`` says."""
    return {"tensorrt": "cuda", "torch": "cpu"}.get(backend, device)


def open_backend(art, backend: str = "auto", device: str = "cpu"):
    """The backend that runs an artifact; ``auto`` takes TensorRT engines when built and importable,
    else ONNX Runtime. ``torch`` rebuilds the reference model from the source the manifest records."""
    from fastvar.manifest import ArtifactError

    backend = resolve_backend(art, backend)
    if backend == "tensorrt":
        if not art.manifest.engines:
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
    return for_artifact(art).reference_backend(*reference_models(art), artifact_schedule(art), art.plan())


def reference_models(art) -> tuple:
    """(transformer, decoder) the artifact was exported from, rebuilt: the checkpoint files it records (refused
    when they changed since) or the preset's random weights, at the artifact's precision."""
    from fastvar.manifest import ArtifactError

    m = art.manifest
    src = m.model.source
    if src.kind == "checkpoint":
        from fastvar.export.artifact import file_identity

        for rec in src.files.values():
            if file_identity(rec.path) != rec.to_dict():
                raise ArtifactError(f"{rec.path} changed since the export (size or modification time); "
                                    "the torch backend would compare different weights. Re-run fastvar-export")
        vae = src.files.get("vae")
        return build_pair(m.model.name, src.files["ckpt"].path, vae and vae.path, False, None, 0, m.precision)
    return build_pair(src.preset, None, None, True, src.depth, src.seed, m.precision)
