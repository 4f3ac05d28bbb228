"""ONNX's own reference evaluator as a backend: slow, but it runs bf16 graphs on any CPU.

ONNX Runtime's CPU provider has no bf16 kernels, and TensorRT cannot run here, so this is how a bf16
artifact's graphs are proven to compute what the bf16 PyTorch reference computes (``onnx.reference``
with ``ml_dtypes`` for the bf16 arithmetic). The custom FastVARRestore node runs through the NumPy
implementation of the ONNX Runtime custom op; everything else is standard ONNX.
"""

from __future__ import annotations

import numpy as np
import torch

from fastvar import graph_names as gn
from fastvar.export.schedules import StepPlan
from fastvar.export.weight_store import read_store
from fastvar.family import for_artifact
from fastvar.manifest import Artifact, ArtifactError
from fastvar.runtime.backends.feeds import step_feeds
from fastvar.runtime.kv_cache import KVCache


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


class OnnxReferenceBackend:
    name = "onnx-reference"

    def __init__(self, art: Artifact) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        self.art, self.plan, self.family = art, art.plan(), for_artifact(art)
        cfg = art.data["model"]["config"]
        self.depth, self.heads, self.head_dim = cfg["depth"], cfg["heads"], cfg["head_dim"]
        self.text_len = art.data["text_len"]
        self.weights = {k: to_numpy(v) for k, v in read_store(art.weight_path()).items()}
        ops = [_gather_elements_op(), *_fp32_accumulating_ops(),
               *(_restore_op() if art.has_plugin_nodes else ())]
        self.graphs = {name: ReferenceEvaluator(onnx.load(str(art.graph_path(name))), new_ops=ops)
                       for name in art.run_graphs()}
        self.cond: dict[str, torch.Tensor] = {}
        self.caches: dict[str, torch.Tensor] = {}
        self.kept_sets: dict[int, dict[str, np.ndarray]] = {}
        self.kv: KVCache | None = None
        self.kv_bytes = 0

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rec = self.art.graph(name)
        inputs = {k: to_numpy(v) for k, v in feeds.items()}
        inputs.update({w: self.weights[w] for w in rec["weights"]})
        names = [o["name"] for o in rec["outputs"]]
        return dict(zip(names, (from_numpy(np.asarray(a)) for a in self.graphs[name].run(names, inputs)),
                        strict=True))

    def start(self, text: torch.Tensor, lengths: torch.Tensor, cfg_active: bool) -> None:
        if cfg_active != self.art.data["guidance"]:
            raise ArtifactError("cfg does not match the artifact's guidance setting")
        b, lt, d = text.shape
        if lt > self.text_len:
            raise ArtifactError(f"the text has {lt} tokens; this artifact's text bucket holds {self.text_len}")
        padded = torch.zeros((b, self.text_len, d), dtype=torch.float32)
        padded[:, :lt] = text
        self.cond = self._run(gn.CONDITION_GRAPH, {gn.TEXT: padded, gn.TEXT_LENGTHS: lengths.to(torch.int64)})
        rows = self.cond[gn.GSS].shape[0]
        dtype = self.cond[gn.ca_k(0)].dtype
        self.kv = KVCache(self.plan, self.depth, rows, self.heads, self.head_dim, dtype)
        self.kv_bytes = self.kv.nbytes
        self.caches, self.kept_sets = {}, {}

    def step(self, st: StepPlan, codes_in: torch.Tensor | None, cfg: float, inv_tau: float,
             write_kv: bool, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the bits sampled in the graph from ``noise``."""
        name = gn.step_graph(st.index)
        inputs = {t["name"]: t for t in self.art.graph(name)["inputs"]}
        feeds = step_feeds(self.family, name, inputs, self.cond, self.kv, self.caches, st.index, codes_in, cfg, inv_tau,
                           noise, torch.device("cpu"))
        out = self._run(name, feeds)
        if write_kv:
            for i in range(self.depth):
                self.kv.write(i, out[gn.new_k(i)], out[gn.new_v(i)])
        self.caches.update({k: v for k, v in out.items() if gn.is_cache(k)})
        kept = {k: v.numpy() for k, v in out.items() if gn.is_kept(k)}
        if kept:
            self.kept_sets[st.index] = kept
        return out[gn.LOGITS], out[gn.BITS]

    def end_loop(self) -> None:
        """Free the KV cache, restore caches and conditioning before the decoder runs (kept sets stay)."""
        self.kv, self.caches, self.cond = None, {}, {}

    def decode(self, summed: torch.Tensor) -> torch.Tensor:
        return self._run(gn.DECODER_GRAPH, {gn.CODES: summed.float()})[gn.IMAGE]
