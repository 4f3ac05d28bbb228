"""ONNX's own reference evaluator as a backend: slow, but it runs bf16 graphs on any CPU.

ONNX Runtime's CPU provider has no bf16 kernels, and TensorRT cannot run here, so this is how a bf16
artifact's graphs are proven to compute what the bf16 PyTorch reference computes (``onnx.reference``
with ``ml_dtypes`` for the bf16 arithmetic). The custom FastVARRestore node runs through the NumPy
implementation of the ONNX Runtime custom op; everything else is standard ONNX.
"""

from __future__ import annotations

import numpy as np
import torch

from fastvar.export.weight_store import read_store
from fastvar.manifest import Artifact
from fastvar.runtime.backends.graph import GraphBackend, HostSession


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()


def from_numpy(a: np.ndarray) -> torch.Tensor:
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def _restore_op():
    from onnx.reference.op_run import OpRun

    from fastvar.plugins.restore.ort_op import restore_np

    class FastVARRestore(OpRun):
        op_domain = "fastvar"

        def _run(self, kept, kept_idx, cache, cache_h=None, cache_w=None, out_h=None, out_w=None,
                 plugin_namespace=None, plugin_version=None):
            return (restore_np(kept, kept_idx, cache, (cache_h, cache_w), (out_h, out_w)),)

    class FastVARRestoreAdd(OpRun):
        op_domain = "fastvar"

        def _run(self, residual, kept, kept_idx, cache, cache_h=None, cache_w=None, out_h=None, out_w=None,
                 plugin_namespace=None, plugin_version=None):
            restored = restore_np(kept, kept_idx, cache, (cache_h, cache_w), (out_h, out_w))
            return ((residual + restored.astype(residual.dtype)).astype(residual.dtype),)

    return FastVARRestore, FastVARRestoreAdd


def _gather_elements_op():
    """onnx.reference's GatherElements uses ``np.choose`` (at most 64 choices along the axis); a token
    gather picks among hundreds. Same semantics with ``take_along_axis``."""
    from onnx.reference.op_run import OpRun

    class GatherElements(OpRun):
        def _run(self, data, indices, axis=None):
            axis = 0 if axis is None else axis
            idx = np.where(indices < 0, indices + data.shape[axis], indices)
            return (np.take_along_axis(data, idx, axis=axis),)

    return GatherElements


def _fp32_accumulating_ops():
    """numpy's matmul on ``ml_dtypes.bfloat16`` accumulates in bfloat16; GPU GEMMs (and PyTorch on CPU)
    accumulate in float32 and round the result once, and softmax likewise works in float32. These
    overrides give the evaluator that arithmetic, so it checks our graphs, not numpy's bf16 dot product."""
    from onnx.reference.op_run import OpRun

    def widen(*xs):
        return [x.astype(np.float32) if x.dtype.name == "bfloat16" else x for x in xs]

    class MatMul(OpRun):
        def _run(self, a, b):
            return (np.matmul(*widen(a, b)).astype(a.dtype),)

    class Softmax(OpRun):
        def _run(self, x, axis=None):
            axis = -1 if axis is None else axis
            (xf,) = widen(x)
            e = np.exp(xf - xf.max(axis=axis, keepdims=True))
            return ((e / e.sum(axis=axis, keepdims=True)).astype(x.dtype),)

    return [MatMul, Softmax]


class _RefSession(HostSession):
    """One graph under the reference evaluator."""

    def __init__(self, art: Artifact, name: str, weights: dict[str, np.ndarray], ops: list) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        super().__init__(art, name)
        self.weights = {w: weights[w] for w in art.graph(name).weights}
        self.evaluator = ReferenceEvaluator(onnx.load(str(art.graph_path(name))), new_ops=ops)

    def compute(self, fed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feeds = {n: to_numpy(t.cpu()) for n, t in fed.items()}
        results = self.evaluator.run(list(self.outputs), {**feeds, **self.weights})
        return [from_numpy(np.asarray(a)) for a in results]


class OnnxReferenceBackend(GraphBackend):
    name = "onnx-reference"

    def __init__(self, art: Artifact) -> None:
        weights = {k: to_numpy(v) for k, v in read_store(art.weight_path()).items()}
        ops = [_gather_elements_op(), *_fp32_accumulating_ops(), *(_restore_op() if art.has_plugin_nodes else ())]
        sessions = {name: _RefSession(art, name, weights, ops) for name in art.run_graphs()}
        self._setup(art, torch.device("cpu"), sessions)
        codebook = art.manifest.codebook
        self.codebook = torch.from_numpy(weights[codebook]) if codebook else None
