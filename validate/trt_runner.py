"""A Polygraphy runner over one engine of the TensorRT backend, so ``fastvar-validate --backend tensorrt``
judges engines with the same comparator, goldens and tolerances as the ONNX graphs.

It drives the backend's own engine binding (weights bound once by address, owned output buffers), so the
check covers the code path generations use. Users checking one engine by hand use Polygraphy's own
``TrtRunner`` (``polygraphy run ENGINE --model-type engine --trt ...``; the README has the line).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from fastvar.export.graphs import TORCH_DTYPES


class EngineRunner(BaseRunner):
    def __init__(self, backend, graph: str) -> None:
        super().__init__(name="tensorrt")
        self.backend, self.graph = backend, graph

    def activate_impl(self) -> None:
        self.engine = self.backend.engines[self.graph]

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for name, spec in self.engine.inputs.items():
            meta.add(name, torch.empty(0, dtype=TORCH_DTYPES[spec.dtype]).numpy().dtype, list(spec.shape))
        return meta

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        e, b = self.engine, self.backend
        for name, arr in feed_dict.items():
            spec = e.inputs.get(name)
            if spec is None:  # weights are bound once, from the store, when the engine is loaded
                continue
            # goldens keep bf16 as fp32 (numpy has no bf16) and Polygraphy may hand a scalar over as (1,)
            t = torch.from_numpy(np.ascontiguousarray(arr)).reshape(spec.shape).to(TORCH_DTYPES[spec.dtype])
            e.feed(name, t.to(b.device))
        outs = {n: e.output(n) for n in e.outputs}
        t0 = time.perf_counter()
        with b.on_stream():
            e.run()
        if b.on_cuda:
            b.stream.synchronize()
        self.inference_time = time.perf_counter() - t0
        return {n: t.cpu().numpy() for n, t in outs.items()}

    def deactivate_impl(self) -> None:
        self.engine = None
