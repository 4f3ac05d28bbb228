"""Goldens: every graph's inputs and outputs, recorded from the PyTorch reference during a real generation.

The recorder is the torch backend itself, seen through the graphs' interface: before each call it names
the state it is about to use as the graph's inputs (padded text, conditioning, the KV prefix, restore
caches, noise), after it the results as the graph's outputs. So pruned steps see real token maps and
real kept indices, not random tensors. Each graph gets ``NAME.inputs.npz`` and ``NAME.outputs.npz``
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
from fastvar.export.schedules import StepPlan
from fastvar.family import artifact_geometry, artifact_schedule, default_cfg, default_tau, for_artifact, text_channels
from fastvar.manifest import Artifact, ArtifactError, sha256_file
from fastvar.runtime.backends import reference_backend
from fastvar.runtime.backends.torch_ref import TorchBackend
from fastvar.runtime.chain import generate
from fastvar.runtime.io import load_text_embeddings
from fastvar.runtime.sampling import sample_bits

GOLDENS = "goldens"
INDEX = "index.json"
JSON_LIMIT = 256 * 2**20  # Polygraphy's JSON is base64: beyond this, npz + the data-loader script only
REFERENCE_RUNNER = "fastvar-torch-reference"


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()


class GoldenRecorder(TorchBackend):
    """The torch backend, recording each call under the names of the graph it corresponds to."""

    def __init__(self, art: Artifact, sink: Callable[[str, dict, dict], None]) -> None:
        ref = reference_backend(art)
        super().__init__(ref.model, ref.vae, ref.sched, ref.plan)
        self.art, self.sink = art, sink
        self.text_len = art.data["text_len"]
        self.last_exec = self.plan.executed[-1].index

    def start(self, text: torch.Tensor, lengths: torch.Tensor, cfg_active: bool) -> None:
        b, lt, d = text.shape
        padded = torch.zeros((b, self.text_len, d), dtype=torch.float32)
        padded[:, :lt] = text
        super().start(padded, lengths, cfg_active)
        c = self.cond
        outs = {gn.SOS: c.sos, gn.GSS: c.gss, gn.HEAD_SCALE: c.head_scale, gn.HEAD_SHIFT: c.head_shift,
                gn.TEXT_MASK: c.text_mask}
        for i, (k, v) in enumerate(zip(c.ca_k, c.ca_v, strict=True)):
            outs[gn.ca_k(i)], outs[gn.ca_v(i)] = k, v
        self.sink(gn.CONDITION_GRAPH, {gn.TEXT: padded, gn.TEXT_LENGTHS: lengths.to(torch.int64)}, outs)

    def step(self, st: StepPlan, codes_in: torch.Tensor | None, cfg: float, inv_tau: float, write_kv: bool,
             noise: torch.Tensor | None = None):
        depth, c = self.model.cfg.depth, self.cond
        feeds = {gn.GSS: c.gss, gn.HEAD_SCALE: c.head_scale, gn.HEAD_SHIFT: c.head_shift, gn.TEXT_MASK: c.text_mask,
                 gn.INV_TAU: torch.tensor(inv_tau), gn.CFG_SCALE: torch.tensor(cfg), gn.NOISE: noise}
        feeds.update({gn.SOS: c.sos} if st.index == 0 else {gn.CODES: codes_in.float()})
        for i in range(depth):
            feeds[gn.ca_k(i)], feeds[gn.ca_v(i)] = c.ca_k[i], c.ca_v[i]
            past_k, past_v = self.kv.past(i)
            if past_k.shape[0]:
                feeds[gn.past_k(i)], feeds[gn.past_v(i)] = past_k.clone(), past_v.clone()
            if st.pruned and self.plan.block_pruned(i):
                for sub, t in zip(gn.INFINITY_SUBLAYERS, self.restore_caches[i], strict=True):
                    feeds[gn.cache(sub, i)] = t
        logits, _ = super().step(st, codes_in, cfg, inv_tau, write_kv, noise)
        out = self.last_output
        outs = {gn.LOGITS: logits, gn.BITS: sample_bits(logits, noise)}
        if st.index != self.last_exec:
            for i in range(depth):
                outs[gn.new_k(i)], outs[gn.new_v(i)] = out.new_k[i], out.new_v[i]
        if out.caches is not None:
            for i in range(depth):
                if self.plan.block_pruned(i):
                    for sub, t in zip(gn.INFINITY_SUBLAYERS, out.caches[i], strict=True):
                        outs[gn.cache(sub, i)] = t
        kept = {k: torch.from_numpy(v) for k, v in self.kept_sets.get(st.index, {}).items()}
        name = gn.step_graph(st.index)
        self.sink(name, feeds, {**outs, **kept})
        if kept:
            self.sink(gn.validate_graph(st.index), {**feeds, **kept}, outs)
        return logits, None

    def decode(self, summed: torch.Tensor) -> torch.Tensor:
        image = super().decode(summed)
        self.sink(gn.DECODER_GRAPH, {gn.CODES: summed.float()}, {gn.IMAGE: image})
        return image


def write_goldens(art: Artifact, seed: int = 0, text_embeddings: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Record every graph's goldens from a real reference generation; returns the index."""
    root = art.root / GOLDENS
    graphs = art.data["graphs"]
    index: dict = {"seed": seed, "runner": REFERENCE_RUNNER, "graphs": {}}

    def sink(name: str, feeds: dict, outs: dict) -> None:
        if name not in graphs:
            return
        g = graphs[name]
        ins = {t["name"]: _np(feeds[t["name"]]) for t in g["inputs"]}
        res = {t["name"]: _np(outs[t["name"]]) for t in g["outputs"]}
        files = {"inputs": _write_npz(root / f"{name}.inputs.npz", ins),
                 "outputs": _write_npz(root / f"{name}.outputs.npz", res)}
        if sum(a.nbytes for a in res.values()) <= JSON_LIMIT:
            files["outputs_json"] = _write_run_results(root / f"{name}.outputs.json", res)
        index["graphs"][name] = {"key": g["key"], "files": {k: _record(art.root, p) for k, p in files.items()}}

    d = art.data
    text, lengths = load_text_embeddings(text_embeddings, d["batch"], text_channels(art),
                                          default_len=min(16, d["text_len"]))
    if text.shape[1] > d["text_len"]:
        raise ArtifactError(f"the text has {text.shape[1]} tokens; the artifact's bucket holds {d['text_len']}")
    rec = for_artifact(art).golden_recorder(art, sink)
    generate(rec, artifact_schedule(art), art.plan(), artifact_geometry(art), text, lengths, seed, default_cfg(art),
             default_tau(art))
    missing = sorted(set(graphs) - set(index["graphs"]))
    if missing:
        raise ArtifactError(f"the reference run produced no goldens for {missing}")
    atomic_write_bytes(root / "data_loader.py", _loader_script(art).encode())
    atomic_write_json(root / INDEX, index)
    log(f"goldens: {len(index['graphs'])} graphs recorded from the PyTorch reference (seed {seed}) in {root}")
    return index


def _record(base: Path, p: Path) -> dict:
    return {"path": p.relative_to(base).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def _write_run_results(path: Path, outputs: dict[str, np.ndarray]) -> Path:
    from polygraphy.comparator import RunResults

    rr = RunResults()
    rr.add([outputs], runner_name=REFERENCE_RUNNER)
    text = rr.to_json() if hasattr(rr, "to_json") else None
    if text is None:
        from polygraphy.json import to_json

        text = to_json(rr)
    return atomic_write_bytes(path, text.encode())


def load_index(art: Artifact) -> dict:
    path = art.root / GOLDENS / INDEX
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path}: no readable golden index ({err})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _loader_script(art: Artifact) -> str:
    """A Polygraphy data-loader script: one function per graph, feeding its golden inputs and its weights."""
    names = sorted(art.data["graphs"])
    store = art.data["weights"][0]["path"]
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
