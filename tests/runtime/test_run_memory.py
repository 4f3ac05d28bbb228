"""A run's memory is weights + KV cache + one graph's working memory, never a sum over graphs (memory issue).

Per-session ONNX Runtime arenas each kept their own peak, so resident memory climbed step after step (the
full infinity-2b was OOM-killed). Measured here on infinity-tiny at 1024, whose last steps and decoder work
in tens to hundreds of MiB: with the arenas the process held 1.6 GiB beyond its weights after three images;
now at most about 130 MiB, within the plan's largest single graph."""

import pytest
import torch

from fastvar.family import artifact_geometry, artifact_schedule
from fastvar.manifest import Artifact
from fastvar.runtime.backends import onnxruntime as ort_backend
from fastvar.runtime.backends import open_backend
from fastvar.runtime.chain import SamplingSettings, generate
from fastvar.runtime.io import load_text_embeddings

MIB = 2**20
MARGIN = 32 * MIB  # outputs (logits, bits, the image), thread pools and allocator slack


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _image(be, art):
    text, lengths = load_text_embeddings(None, art.data["batch"], art.data["model"]["config"]["text_channels"],
                                         default_len=16)
    return generate(be, artifact_schedule(art), art.plan(), artifact_geometry(art), text, lengths,
                    SamplingSettings.uniform(text.shape[0], 0, 4.0, 0.5))


@pytest.mark.slow
def test_onnxruntime_holds_one_graphs_working_memory_not_the_sum(tiny_artifacts, monkeypatch):
    """Resident memory beyond what the backend holds once loaded (weights, sessions), after every graph's
    run over three images, stays within the plan's KV cache, restore caches and the largest single graph's
    working memory: with per-session arenas it reached 1.6 GiB here, about four times that bound."""
    art = Artifact.load(tiny_artifacts["fastvar"])
    plan = {it["name"]: it["bytes"] for it in art.data["memory_plan"]["items"]}
    state = plan["KV cache"] + plan["FastVAR restore caches"]
    be = open_backend(art, "onnxruntime")
    loaded = _rss()
    held: list[tuple[int, str, int]] = []
    images = [0]
    inner = ort_backend._Session.run

    def measured(self):
        out = inner(self)
        held.append((images[-1], self.name, _rss() - loaded))
        return out

    monkeypatch.setattr(ort_backend._Session, "run", measured)
    for n in range(3):
        images.append(n)
        _image(be, art)
    steps = [h for i, name, h in held if i == 0 and name.startswith("step_")]
    assert len(steps) == len(art.plan().executed)
    assert max(steps) <= state + plan["peak step activations"] + MARGIN, [round(h / MIB) for h in steps]
    largest_graph = max(plan["peak step activations"], plan["VAE decode activations"])
    worst = max(held, key=lambda x: x[2])
    assert worst[2] <= state + largest_graph + MARGIN, (worst, round(worst[2] / MIB))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_the_decoder_runs_after_the_kv_cache_is_freed(tiny_artifacts, backend):
    art = Artifact.load(tiny_artifacts["fastvar"])
    be = open_backend(art, backend)
    seen = {}
    inner = be.decode

    def decode(state: torch.Tensor) -> torch.Tensor:
        seen["kv"] = be.kv
        seen["bound"] = sum(len(s.bound) for s in be.sessions.values()) if backend == "onnxruntime" else 0
        return inner(state)

    be.decode = decode
    res = _image(be, art)
    assert seen == {"kv": None, "bound": 0}
    plan = {it["name"]: it["bytes"] for it in art.data["memory_plan"]["items"]}
    assert res.images.shape == (1, 1024, 1024, 3) and be.kv_bytes == plan["KV cache"]
    assert be.kept_sets  # what parity checks read after a run is kept
