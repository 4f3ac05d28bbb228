"""``fastvar-validate DIR``: per-graph parity with Polygraphy, then end-to-end parity, with exit codes.

Exit 0: every graph and the end-to-end check within tolerance. Exit 1: something is not (the message
names the graph, hence the scale, and the output). Exit 2 (raised as ``ValidationUsageError``): bad usage,
a missing or altered artifact file or golden.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fastvar import graph_names as gn
from fastvar.atomic import atomic_write_json
from fastvar.manifest import Artifact, ArtifactError, verify_file
from fastvar.validate.compare import DEFAULT_TOLERANCES, GraphResult, compare_graph
from fastvar.validate.goldens import GOLDENS, INDEX, load_index, read_npz, write_goldens


class ValidationUsageError(ValueError):
    """Exit code 2: the validation could not be carried out as asked."""


def _onnxrt_runner(art: Artifact, name: str):
    """Polygraphy's ONNX Runtime runner over a session that knows the custom restore op when the graph has it."""
    import onnx
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner

    def make():
        so = ort.SessionOptions()
        source: str | bytes = str(art.graph_path(name))
        if art.has_plugin_nodes and art.graph(name).kind in ("step", "validate"):
            from fastvar.plugins.restore.ort_op import for_onnxruntime, session_options

            source = for_onnxruntime(onnx.load(source)).SerializeToString()
            so = session_options(so)
        return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])

    return OnnxrtRunner(make, name="onnxruntime")


BACKENDS = ("onnxruntime", "tensorrt")


def _engine_backend(art: Artifact, names: list[str]):
    """The TensorRT backend holding an engine for every graph checked (validation variants included)."""
    missing = [n for n in names if n not in art.manifest.engines]
    if missing:
        raise ValidationUsageError(f"no engine for {', '.join(missing)}: run fastvar-build {art.root} --validation "
                                   "(validation variants are built only when asked)")
    from fastvar.runtime.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(art, "cuda" if _cuda() else "cpu", graphs=names)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _tolerances(art: Artifact, overrides: dict[str, float]) -> dict[str, float]:
    table = dict(DEFAULT_TOLERANCES[art.manifest.precision])
    table.update(overrides)
    return table


def parse_tolerances(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        prefix, _, value = item.partition("=")
        try:
            tol = float(value)
        except ValueError:
            raise ValidationUsageError(f"--tol {item!r}: expected PREFIX=VALUE, e.g. logits=1e-4") from None
        if not math.isfinite(tol) or tol < 0:
            raise ValidationUsageError(f"--tol {item!r}: the tolerance must be a finite number >= 0 (a NaN or "
                                       "infinite tolerance would pass anything)")
        out[prefix.strip()] = tol
    return out


def polygraphy_command(art: Artifact, name: str, tolerances: dict[str, float], engine: bool = False) -> str | None:
    """The `polygraphy run` line that checks one graph, or its engine, against its goldens. Graphs: standard-op
    ones only (Polygraphy's CLI cannot load ONNX Runtime custom ops). Engines: any, since the restore
    plugin's kernel is embedded in the plan (AOT) and Polygraphy's TrtRunner needs nothing else."""
    rec = art.manifest.engines.get(name)
    if engine and rec is None:
        return None
    if not engine and art.has_plugin_nodes and art.graph(name).kind in ("step", "validate"):
        return None
    index = art.root / GOLDENS / f"{name}.outputs.json"
    if not index.is_file():
        return None
    outs = [o.name for o in art.graph(name).outputs if not (gn.is_kept(o.name) or o.name == gn.BITS)]
    golden = read_npz(art.root / GOLDENS / f"{name}.outputs.npz")
    atol = " ".join(f"{o}:{_tol(o, tolerances) * float(np.abs(golden[o]).max(initial=0)):.3g}" for o in outs)
    rtol = " ".join(f"{o}:{_tol(o, tolerances):.3g}" for o in outs)
    model = f"{art.root / rec.path} --model-type engine --trt" if engine else f"{art.graph_path(name)} --onnxrt"
    return (f"polygraphy run {model} --data-loader-script "
            f"{art.root / GOLDENS / 'data_loader.py'}:{name} --load-outputs {index} "
            + ("" if engine else f"--onnx-outputs {' '.join(outs)} ") + f"--atol {atol} --rtol {rtol}")


def example_graphs(art: Artifact) -> list[str]:
    """The graphs whose `polygraphy run` line is printed: the first step, and the first pruned step's
    validation variant (or the last step)."""
    names = list(art.manifest.graphs)
    validate_graphs = [n for n in names if gn.is_validate_graph(n)]
    steps = [n for n in names if art.manifest.graphs[n].kind == "step"]
    return [steps[0], validate_graphs[0] if validate_graphs else steps[-1]]


def _tol(name: str, tolerances: dict[str, float]) -> float:
    from fastvar.validate.compare import tolerance_for

    return tolerance_for(name, tolerances)


def validate(root: str, report: str | None = None, tol: list[str] | None = None, regenerate: bool = False,
             e2e: bool = True, backend: str = "onnxruntime", log: Callable[[str], None] = print) -> tuple[int, dict]:
    """Run every check; returns (exit code 0 or 1, report). Usage problems raise ValidationUsageError.
    ``backend``: what is judged against the reference, the ONNX graphs (ONNX Runtime) or the engines."""
    if backend not in BACKENDS:
        raise ValidationUsageError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        raise ValidationUsageError("fastvar-validate needs Polygraphy: pip install polygraphy") from None
    try:
        art = Artifact.load(root)
        art.verify()
    except ArtifactError as err:
        raise ValidationUsageError(str(err)) from None
    if art.manifest.precision != "fp32" and backend == "onnxruntime":
        raise ValidationUsageError(f"{root} is {art.manifest.precision}: the ONNX Runtime runner here runs fp32 "
                                   "graphs; bf16 graphs are validated with TensorRT (fastvar-build) on a GPU")
    tolerances = _tolerances(art, parse_tolerances(tol or []))
    if regenerate or not (art.root / GOLDENS / INDEX).is_file():
        write_goldens(art, log=log)
    index = load_index(art)
    problems = []
    for name, g in art.manifest.graphs.items():
        rec = index["graphs"].get(name)
        if rec is None:
            problems.append(f"no goldens for graph {name} (regenerate with --regenerate-goldens)")
            continue
        if rec["key"] != g.key:
            problems.append(f"the goldens of {name} were recorded for another export of it "
                            "(regenerate with --regenerate-goldens)")
        problems += [why for f in rec["files"].values() if (why := verify_file(art.root, f))]
    if why := verify_file(art.root, index["data_loader"]):
        problems.append(f"{why}: the data-loader script is code `polygraphy run` executes; regenerate the goldens "
                        "with --regenerate-goldens")
    if problems:
        raise ValidationUsageError("; ".join(problems))
    engines = _engine_backend(art, list(art.manifest.graphs)) if backend == "tensorrt" else None
    weights = {k: v.numpy() for k, v in _store(art).items()} if engines is None else {}
    results: list[GraphResult] = []
    for name, g in art.manifest.graphs.items():
        feeds = read_npz(art.root / GOLDENS / f"{name}.inputs.npz")
        feeds.update({w: weights[w] for w in g.weights if w in weights})
        golden = read_npz(art.root / GOLDENS / f"{name}.outputs.npz")
        if engines is None:
            runner = _onnxrt_runner(art, name)
        else:
            from fastvar.validate.trt_runner import EngineRunner

            runner = EngineRunner(engines, name)
        res = compare_graph(name, g.step, runner, feeds, golden, tolerances)
        if g.kind == "step" and res.kept_overlap is not None and (res.kept_overlap < 1.0 or res.kept_reordered):
            # a flipped selection changes those tokens' outputs, and a reordered one the order the new K/V
            # are stored in: the compute is judged on the validation variant (identical selections); this
            # graph is judged on its kept-set overlap
            for o in res.outputs:
                if not o.passed and math.isfinite(o.max_rel):
                    judged = gn.validate_graph(g.step)
                    o.note = (o.note + "; " if o.note else "") + f"informational: judged on {judged}"
                    o.passed = True
        results.append(res)
    e2e_report = _end_to_end(art, log, engines) if e2e else None
    failures = [f for r in results for f in r.failures()] + (e2e_report or {}).get("failures", [])
    _print_table(results, log)
    out = {"artifact": str(art.root), "precision": art.manifest.precision, "tolerances": tolerances,
           "graphs": [r.to_dict() for r in results], "end_to_end": e2e_report, "failures": failures,
           "passed": not failures}
    if report:
        atomic_write_json(report, out, "the --report")
    for name in example_graphs(art):
        cmd = polygraphy_command(art, name, tolerances, engine=backend == "tensorrt")
        if cmd:
            log(f"check {name} with Polygraphy's CLI:\n  {cmd}")
    if failures:
        log("FAILED:\n  " + "\n  ".join(failures))
        return 1, out
    log(f"passed: {len(results)} graphs within tolerance" + (", end to end within tolerance" if e2e else ""))
    return 0, out


def _store(art: Artifact):
    from fastvar.export.weight_store import read_store

    return read_store(art.weight_path())


def _end_to_end(art: Artifact, log: Callable[[str], None], engines=None) -> dict:
    """Teacher-forced logits per scale (gating), free-running token agreement and PSNR (reported)."""
    from fastvar.family import artifact_geometry, artifact_sampling, artifact_schedule, for_artifact, text_channels
    from fastvar.runtime.backends import open_backend
    from fastvar.runtime.chain import generate
    from fastvar.runtime.io import load_text_embeddings
    from fastvar.runtime.parity import kept_flips, logit_errors, psnr, token_agreement

    m = art.manifest
    # HART's Gumbel-soft feedback follows each side's own logits, not the forced indices: teacher forcing
    # compares identical inputs only with the codebook rows fed back (docs/design/hart.md)
    sched, plan, geom = artifact_schedule(art), art.plan(), artifact_geometry(art)
    text = load_text_embeddings(None, m.batch, text_channels(art), default_len=min(16, m.text_len))
    has_choice = for_artifact(art).sampling.more_smooth is not None
    settings = artifact_sampling(art, more_smooth=False if has_choice else None)
    ref_be = open_backend(art, "torch")
    ort_be = engines if engines is not None else open_backend(art, "onnxruntime")
    ref = generate(ref_be, sched, plan, geom, *text, settings, keep_logits=True)
    free = generate(ort_be, sched, plan, geom, *text, settings, keep_logits=True)
    forced = generate(ort_be, sched, plan, geom, *text, settings, force_tokens=ref.tokens, keep_logits=True)
    tokens = {s.index: s.tokens for s in m.scales}
    flipped, overlap = kept_flips(ref_be.kept_sets, ort_be.kept_sets, tokens)
    errors = logit_errors(ref.logits, forced.logits, flipped)
    tol = DEFAULT_TOLERANCES[m.precision][gn.LOGITS]
    failures = [f"end to end: teacher-forced logits of {k} differ by {e:.2e} of the logit scale > {tol:.0e}"
                for k, e in errors.items() if e > tol]
    failures += [f"end to end: kept-set overlap at step {s} is {v:.4f} < 0.99" for s, v in overlap.items() if v < 0.99]
    agree, psnr_db = token_agreement(ref.tokens, free.tokens), psnr(ref.images, free.images)
    log(f"end to end ({ort_be.name} vs torch): teacher-forced worst logit error {max(errors.values()):.2e} of the "
        f"logit scale (tolerance {tol:.0e}); free-running token agreement {agree:.4f}, image PSNR {psnr_db:.1f} dB")
    return {"teacher_forced_logit_error": errors, "kept_overlap": overlap, "token_agreement": agree,
            "psnr_db": psnr_db if np.isfinite(psnr_db) else None, "tolerance": tol, "failures": failures}


def _print_table(results: list[GraphResult], log: Callable[[str], None]) -> None:
    log(f"{'graph':<18} {'output':<14} {'max abs':>9} {'mean abs':>9} {'max rel':>9} {'cosine':>9} {'tol':>7}  ok")
    for r in results:
        if r.error:
            log(f"{r.name:<18} {'-':<14} {r.error}")
        for o in r.outputs:
            if gn.is_block_state(o.name) and o.passed and not o.note:
                continue  # one line per block would drown the table; the report has them all
            log(f"{r.name:<18} {o.name:<14} {o.max_abs:9.2e} {o.mean_abs:9.2e} {o.max_rel:9.2e} {o.cosine:9.6f} "
                f"{o.tolerance:7.0e}  {'yes' if o.passed else 'NO'}" + (f"  {o.note}" if o.note else ""))
        blocks = [o for o in r.outputs if gn.is_block_state(o.name)]
        if blocks:
            worst = max(blocks, key=lambda o: o.max_rel)
            log(f"{r.name:<18} {'per-block':<14} worst {worst.name} {worst.max_rel:.2e} of its scale, "
                f"{sum(o.passed for o in blocks)}/{len(blocks)} within tolerance")
        if r.kept_overlap is not None:
            log(f"{r.name:<18} {'kept sets':<14} overlap {r.kept_overlap:.4f} (>= 0.99 required)")
