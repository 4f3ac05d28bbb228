"""Goldens: every graph's inputs and outputs, recorded from the PyTorch reference during a real generation.

The reference runs through the graphs' interface (``TorchGraphBackend``: each graph's own traced module,
run eagerly, chained by the one graph backend), and every session is wrapped by a ``RecordingSession``
that names what it was fed and what it returned. One recorder serves every graph kind of every family, and
pruned steps see real token maps and real kept indices, not random tensors; a step's run also records its
validation variant (its kept indices as inputs). Each graph gets ``NAME.inputs.npz`` and ``NAME.outputs.npz``
(weights are not copied: loaders read them from the artifact's store), a Polygraphy ``RunResults`` JSON
of the outputs when small enough, and one data-loader script for ``polygraphy run``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fastvar import graph_names as gn
from fastvar.atomic import atomic_write_bytes, atomic_write_json
from fastvar.family import artifact_geometry, artifact_sampling, artifact_schedule, text_channels
from fastvar.lock import artifact_lock
from fastvar.manifest import Artifact, ArtifactError, inside, sha256_file
from fastvar.runtime.backends import reference_models
from fastvar.runtime.backends.graph import GraphSession
from fastvar.runtime.backends.torch_graphs import TorchGraphBackend
from fastvar.runtime.chain import generate
from fastvar.runtime.io import load_text_embeddings

GOLDENS = "goldens"
INDEX = "index.json"
DATA_LOADER = "data_loader.py"
JSON_LIMIT = 256 * 2**20  # Polygraphy's JSON is base64: beyond this, npz + the data-loader script only
REFERENCE_RUNNER = "fastvar-torch-reference"


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()


class RecordingSession:
    """A session that hands each run's inputs and outputs to ``sink`` under its graph's name, as it runs."""

    def __init__(self, inner: GraphSession, sink: Callable[[str, dict, dict], None]) -> None:
        self.inner, self.sink = inner, sink
        self.fed: dict[str, torch.Tensor] = {}

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)

    def feed(self, name: str, t: torch.Tensor) -> None:
        self.fed[name] = t
        self.inner.feed(name, t)

    def run(self) -> dict[str, torch.Tensor]:
        out = self.inner.run()
        self.sink(self.inner.name, self.fed, out)
        self.fed = {}
        return out


def write_goldens(art: Artifact, seed: int = 0, text_embeddings: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Record every graph's goldens from a real reference generation, holding the artifact's writer lock;
    returns the index."""
    with artifact_lock(art.root):
        return _write_goldens(art, seed, text_embeddings, log)


def _write_goldens(art: Artifact, seed: int, text_embeddings: str | None, log: Callable[[str], None]) -> dict:
    root = inside(art.root, GOLDENS)  # never written through a link pointing out of the artifact
    graphs = art.manifest.graphs
    index: dict = {"seed": seed, "runner": REFERENCE_RUNNER, "graphs": {}}

    def record(name: str, feeds: dict, outs: dict) -> None:
        g = graphs[name]
        ins = {t.name: _np(feeds[t.name]) for t in g.inputs}
        res = {t.name: _np(outs[t.name]) for t in g.outputs}
        files = {"inputs": _write_npz(root / f"{name}.inputs.npz", ins, f"the golden inputs of {name}"),
                 "outputs": _write_npz(root / f"{name}.outputs.npz", res, f"the golden outputs of {name}")}
        if sum(a.nbytes for a in res.values()) <= JSON_LIMIT:
            files["outputs_json"] = _write_run_results(root / f"{name}.outputs.json", res,
                                                       f"the golden outputs of {name}")
        index["graphs"][name] = {"key": g.key, "files": {k: _record(art.root, p) for k, p in files.items()}}

    def sink(name: str, feeds: dict, outs: dict) -> None:
        """A step's run also gives its validation variant's goldens: the kept indices it chose become inputs."""
        record(name, feeds, outs)
        step = graphs[name].step
        variant = gn.validate_graph(step) if step is not None and graphs[name].kind == "step" else None
        if variant in graphs:
            kept = {n: t for n, t in outs.items() if gn.is_kept(n)}
            record(variant, {**feeds, **kept}, {n: t for n, t in outs.items() if n not in kept})

    m = art.manifest
    text, lengths = load_text_embeddings(text_embeddings, m.batch, text_channels(art),
                                          default_len=min(16, m.text_len))
    if text.shape[1] > m.text_len:
        raise ArtifactError(f"the text has {text.shape[1]} tokens; the artifact's bucket holds {m.text_len}")
    recorder = TorchGraphBackend(art, *reference_models(art), wrap=lambda s: RecordingSession(s, sink))
    generate(recorder, artifact_schedule(art), art.plan(), artifact_geometry(art), text, lengths,
             artifact_sampling(art, seed))
    missing = sorted(set(graphs) - set(index["graphs"]))
    if missing:
        raise ArtifactError(f"the reference run produced no goldens for {missing}")
    loader = atomic_write_bytes(root / DATA_LOADER, _loader_script(art).encode(), "the goldens' data loader")
    index["data_loader"] = _record(art.root, loader)  # code a user is told to run: verified like every golden
    atomic_write_json(root / INDEX, index, "the golden index")
    log(f"goldens: {len(index['graphs'])} graphs recorded from the PyTorch reference (seed {seed}) in {root}")
    return index


def _record(base: Path, p: Path) -> dict:
    return {"path": p.relative_to(base).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def _write_npz(path: Path, arrays: dict[str, np.ndarray], what: str) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue(), what)


def _write_run_results(path: Path, outputs: dict[str, np.ndarray], what: str) -> Path:
    from polygraphy.comparator import RunResults

    rr = RunResults()
    rr.add([outputs], runner_name=REFERENCE_RUNNER)
    text = rr.to_json() if hasattr(rr, "to_json") else None
    if text is None:
        from polygraphy.json import to_json

        text = to_json(rr)
    return atomic_write_bytes(path, text.encode(), what)


def load_index(art: Artifact) -> dict:
    """The golden index, its shape checked: a graph's record is its export key and file records, and the
    data-loader script has one too (an index without it predates the check: regenerate)."""
    path = art.root / GOLDENS / INDEX
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path}: no readable golden index ({err})") from None
    graphs = index.get("graphs") if isinstance(index, dict) else None
    if not isinstance(graphs, dict) or not all(_is_golden(g) for g in graphs.values()):
        raise ArtifactError(f"{path}: not a golden index (graphs must map names to {{key, files}}); regenerate it "
                            "with fastvar-validate --regenerate-goldens")
    if not _is_file_record(index.get("data_loader")):
        raise ArtifactError(f"{path}: records no hash of {DATA_LOADER}, the script `polygraphy run` is told to "
                            "run; regenerate the goldens with fastvar-validate --regenerate-goldens")
    return index


def _is_file_record(rec) -> bool:
    return (isinstance(rec, dict) and isinstance(rec.get("path"), str) and isinstance(rec.get("sha256"), str)
            and isinstance(rec.get("bytes"), int) and not isinstance(rec.get("bytes"), bool))


def _is_golden(g) -> bool:
    files = g.get("files") if isinstance(g, dict) else None
    return (isinstance(g.get("key") if isinstance(g, dict) else None, str) and isinstance(files, dict)
            and all(_is_file_record(f) for f in files.values()))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _loader_script(art: Artifact) -> str:
    """A Polygraphy data-loader script: one function per graph, feeding its golden inputs and its weights."""
    names = sorted(art.manifest.graphs)
    store = art.manifest.weights[0].path
    funcs = "\n".join(f"{n} = functools.partial(_load, {n!r})" for n in names)
    return f'''"""Polygraphy data loader for this artifact's goldens (written by fastvar-validate).

    polygraphy run ../graphs/step_05.onnx --onnxrt --data-loader-script data_loader.py:step_05 \\\\
        --load-outputs step_05.outputs.json
"""
import functools
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _weights(names):
    from safetensors import safe_open

    with safe_open(os.path.join(ROOT, {store!r}), framework="numpy") as f:
        return {{n: f.get_tensor(n) for n in names}}


def _load(name):
    with open(os.path.join(ROOT, "manifest.json")) as f:
        graph = json.load(f)["graphs"][name]
    with np.load(os.path.join(HERE, name + ".inputs.npz"), allow_pickle=False) as z:
        feeds = {{k: z[k] for k in z.files}}
    feeds.update(_weights(graph["weights"]))
    yield feeds


{funcs}
'''
