"""``fastvar-run DIR``: generate with a compiled artifact on the backend it asks for, and report the memory."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastvar.family import artifact_geometry, artifact_sampling, artifact_schedule, for_artifact, text_channels
from fastvar.runtime.backends import open_backend, resolve_backend, run_device
from fastvar.runtime.chain import generate
from fastvar.runtime.io import load_text_embeddings, read_npz, write_json, write_outputs
from fastvar.runtime.memory_budget import RunPlan, check_run_memory, plan_for_artifact
from fastvar.runtime.memory_probe import process_memory
from fastvar.runtime.nonfinite import failed_records, raise_for_failed_rows


def memory_report(backend, host: RunPlan) -> dict:
    """The run's peak resident memory (the kernel's high-water mark) with the parts we can name, beside the
    host plan it was checked against. File-backed pages count in the peak but can be reclaimed."""
    weights = getattr(backend, "weight_bytes", None)
    if weights is None:
        weights = sum(p.numel() * p.element_size() for p in backend.model.parameters())
        weights += sum(p.numel() * p.element_size() for p in backend.vae.parameters())
    now = process_memory()
    peak = now.peak
    return {"peak_rss_bytes": peak, "file_backed_bytes": now.file, "peak_anonymous_bytes": peak - now.file,
            "weights_bytes": weights, "kv_cache_bytes": backend.kv_bytes, "plan": host.to_dict(),
            "planned_peak_bytes": host.peak, "peak_vs_plan": (peak - host.peak) / host.peak}


def check_memory(art, backend: str, device: str, max_memory: float | None,
                 log: Callable[[str], None]) -> RunPlan:
    """The host plan of this run (and the GPU plan on a GPU), checked against what this machine has before
    anything is loaded: a run that cannot fit is refused now, not killed by the kernel minutes later."""
    host, gpu = plan_for_artifact(art, backend, device)
    for line in check_run_memory(host, gpu, max_memory):
        log(line)
    return host


def print_plan(root: str, backend: str = "auto", device: str = "cpu", max_memory: float | None = None,
               log: Callable[[str], None] = print) -> None:
    """``fastvar-run DIR --plan``: the memory plan of the run the same flags would start, and whether it fits."""
    from fastvar.manifest import Artifact

    art = Artifact.load(root)
    art.verify()
    backend = resolve_backend(art, backend)
    host, gpu = plan_for_artifact(art, backend, run_device(backend, device))
    log(host.table())
    if gpu is not None:
        log(gpu.table())
    for line in check_run_memory(host, gpu, max_memory):
        log(line)


def run_artifact(root: str, out: str, backend: str = "auto", text_embeddings: str | None = None, seed: int = 0,
                 cfg: float | None = None, tau: float | None = None, save_tokens: str | None = None,
                 save_logits: str | None = None, force_tokens: str | None = None, timings: str | None = None,
                 device: str = "cpu", more_smooth: bool | None = None, max_memory: float | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Generate with a compiled artifact (``fastvar-run DIR``); returns the timings report."""
    from fastvar.manifest import Artifact

    t0 = time.perf_counter()
    art = Artifact.load(root)
    art.verify(hash_check=False)  # every file there, of its size, declaring its interface: enough to plan from
    backend = resolve_backend(art, backend)
    host = check_memory(art, backend, run_device(backend, device), max_memory, log)
    art.verify()  # then the hashes (seconds for a full model), before anything is loaded
    m = art.manifest
    settings = artifact_sampling(art, seed, cfg, tau, more_smooth)
    geom = artifact_geometry(art)
    unguided = f"{for_artifact(art).sampling.unguided_cfg:g}"
    if geom.loop(artifact_schedule(art), settings).guided(settings.cfg) != m.guidance:
        from fastvar.manifest import ArtifactError

        raise ArtifactError(f"{root} was exported " + (f"with classifier-free guidance: give a --cfg other than "
                                                       f"{unguided}" if m.guidance else
                                                       f"without guidance (--no-guidance): it runs with --cfg "
                                                       f"{unguided} only"))
    be = open_backend(art, backend, device)
    sched = artifact_schedule(art)
    text, lengths = load_text_embeddings(text_embeddings, m.batch, text_channels(art),
                                         default_len=min(16, m.text_len))
    forced = read_npz(force_tokens, "--force-tokens") if force_tokens else None
    load_s = time.perf_counter() - t0
    res = generate(be, sched, art.plan(), geom, text, lengths, settings, force_tokens=forced,
                   keep_logits=save_logits is not None, allow_failed_rows=True)
    paths = write_outputs(res, out, save_tokens, save_logits)
    report = {"backend": be.name, "load_s": load_s, **res.timings, "images": [str(p) for p in paths],
              "failed": failed_records(res.failed, settings.seeds),
              "memory": memory_report(be, host)}
    if timings:
        write_json(timings, report, "the --timings report")
    mem = report["memory"]
    log(f"memory: peak RSS {mem['peak_rss_bytes'] / 2**30:.2f} GiB ({mem['peak_anonymous_bytes'] / 2**30:.2f} "
        f"anonymous), plan {host.peak / 2**30:.2f} GiB ({mem['peak_vs_plan']:+.1%}); weights "
        f"{mem['weights_bytes'] / 2**30:.2f}, KV cache {mem['kv_cache_bytes'] / 2**30:.2f}")
    log(f"{be.name}: loop {res.timings['loop_s']:.2f}s, decode {res.timings['decode_s']:.2f}s; per step: "
        + ", ".join(f"{s['index']}:{s['seconds']:.3f}s" for s in res.timings["steps"]))
    raise_for_failed_rows(res.failed, settings.seeds, paths)
    return report
