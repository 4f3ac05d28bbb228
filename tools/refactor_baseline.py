"""Hashes that a behaviour-preserving refactor must leave unchanged (architecture issue).

Exports a fixed set of small artifacts (both families, both schedules, an Infinity bf16 artifact and one
TensorRT-bound artifact per family), runs each through the torch, ONNX Runtime, fake-TensorRT and bf16
ONNX-reference chains with seeds 0 and 1, and writes the sha256 of every exported graph and of every run's
image, tokens and logits as JSON. Record it before a refactor and again after; ``--compare`` says which
entries differ. The numbers depend on this machine's CPU kernels: compare on one machine.

Graphs are hashed without the exporter's per-node metadata: PyTorch writes each node's Python stack (absolute
source paths, line numbers, module class names) into ``metadata_props``, so the raw file changes with the
checkout's path and with any edit that moves a line, while the graph itself does not.

    python tools/refactor_baseline.py --work /tmp/rb --out before.json
    python tools/refactor_baseline.py --work /tmp/rb2 --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1)
# name -> export options; "backends" lists the chains that run it
ARTIFACTS = {
    "infinity-fastvar": dict(model="infinity-tiny", res="512", schedule="fastvar", text_len=16),
    "infinity-none": dict(model="infinity-tiny", res="512", schedule="none", text_len=16),
    "hart-fastvar": dict(model="hart-tiny", depth=1, res="1024", schedule="fastvar"),
    "hart-none": dict(model="hart-tiny", depth=1, res="1024", schedule="none"),
    "infinity-bf16": dict(model="infinity-tiny", res="256", schedule="12:0.4,16:0.5", text_len=8, precision="bf16",
                          restore_op="custom", backend="onnx"),
    "infinity-trt": dict(model="infinity-tiny", res="512", schedule="fastvar", text_len=16, backend="onnx",
                         restore_op="custom"),
    "hart-trt": dict(model="hart-tiny", depth=1, res="1024", schedule="fastvar", backend="onnx",
                     restore_op="custom-add"),
}
CHAINS = {"infinity-fastvar": ("torch", "onnxruntime"), "infinity-none": ("torch", "onnxruntime"),
          "hart-fastvar": ("torch", "onnxruntime"), "hart-none": ("torch", "onnxruntime"),
          "infinity-bf16": ("onnx-reference",), "infinity-trt": ("fake-tensorrt",), "hart-trt": ("fake-tensorrt",)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _arrays_sha(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _export(work: Path) -> dict[str, Path]:
    from fastvar.export.artifact import ExportOptions, export

    roots = {}
    for name, kw in ARTIFACTS.items():
        root = work / name
        export(ExportOptions(random_init=True, out=str(root), **kw), log=lambda _: None)
        roots[name] = root
    return roots


def _fake_tensorrt():
    sys.path.insert(0, str(REPO / "tests" / "support" / "fake_tensorrt"))
    sys.path.insert(0, str(REPO / "tests"))
    import tensorrt
    from conftest import build_fake_engines, ort_with_restore  # noqa: F401 (the tests' own helpers)

    return tensorrt, build_fake_engines, ort_with_restore


def _backend(chain: str, art):
    from fastvar.runtime.backends import open_backend

    if chain == "onnx-reference":
        from fastvar.runtime.backends.onnx_reference import OnnxReferenceBackend

        return OnnxReferenceBackend(art)
    if chain == "fake-tensorrt":
        from fastvar.manifest import Artifact
        from fastvar.runtime.backends.tensorrt import TensorRTBackend

        trt, build, factory = _fake_tensorrt()
        if not art.manifest.engines:
            build(art.root)
        trt._fake.set_session_factory(factory)
        return TensorRTBackend(Artifact.load(art.root), "cpu")
    return open_backend(art, chain)


def _runs(roots: dict[str, Path]) -> dict[str, dict[str, str]]:
    from fastvar.family import artifact_geometry, artifact_sampling, artifact_schedule, text_channels
    from fastvar.manifest import Artifact
    from fastvar.runtime.chain import generate

    out = {}
    for name, root in roots.items():
        art = Artifact.load(root)
        width = text_channels(art)
        text = torch.randn(1, 7, width, generator=torch.Generator().manual_seed(2))
        for chain in CHAINS[name]:
            be = _backend(chain, art)
            art = Artifact.load(root)
            for seed in SEEDS:
                res = generate(be, artifact_schedule(art), art.plan(), artifact_geometry(art), text,
                               torch.tensor([7]), artifact_sampling(art, seed), keep_logits=True)
                out[f"{name}/{chain}/seed{seed}"] = {"image": _sha(res.images.tobytes()),
                                                     "tokens": _arrays_sha(res.tokens),
                                                     "logits": _arrays_sha(res.logits)}
    return out


def graph_sha(path: Path) -> str:
    """sha256 of a graph with every node's exporter metadata (stack traces, class names) and doc string removed."""
    import onnx

    model = onnx.load(str(path))

    def strip(graph) -> None:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for a in node.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    strip(g)

    strip(model.graph)
    return _sha(model.SerializeToString(deterministic=True))


def _graphs(roots: dict[str, Path]) -> dict[str, str]:
    return {f"{name}/{p.name}": graph_sha(p) for name, root in roots.items()
            for p in sorted((root / "graphs").glob("*.onnx"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="scratch folder for the artifacts")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--compare", help="a JSON written earlier: report every entry that differs")
    a = ap.parse_args()
    torch.set_num_threads(2)
    roots = _export(Path(a.work))
    record = {"graphs": _graphs(roots), "runs": _runs(roots)}
    Path(a.out).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"{len(record['graphs'])} graphs, {len(record['runs'])} runs -> {a.out}")
    if not a.compare:
        return 0
    before = json.loads(Path(a.compare).read_text())
    diff = [f"{part}/{k}" for part in ("graphs", "runs") for k in before[part].keys() | record[part].keys()
            if before[part].get(k) != record[part].get(k)]
    print("identical" if not diff else "differs: " + ", ".join(sorted(diff)))
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
