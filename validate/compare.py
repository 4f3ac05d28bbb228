"""Per-graph comparison: Polygraphy's comparator runs each graph in ONNX Runtime on its golden inputs and
judges every output against the reference with per-output tolerances; we add the figures for the table.

Tolerances are relative to each output's scale (its largest reference magnitude): ``tol`` means
"every element within tol·scale, or within tol relative". Defaults per output kind and precision are
in ``DEFAULT_TOLERANCES``; ``--tol PREFIX=VALUE`` overrides outputs whose name starts with PREFIX.
Sampled bits are judged by the share of flipped bits (a draw whose probability sits within 1e-7 of its
uniform noise may flip), kept indices by set overlap (order is not part of the rule's result).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fastvar import graph_names as gn

# prefix -> relative tolerance, per precision; the longest matching prefix wins
# HART's diffusion residual: the iDDPM loop divides by sqrt(alpha_bar) ~ 0 near t = 999 before clamping x0,
# so the fp32 reference itself moves by ~1e-2 of its scale at a few elements when its inputs move by 1e-6
# relative (docs/design/hart.md); its max error is judged at that conditioning, not at 1e-4.
DEFAULT_TOLERANCES = {
    "fp32": {"": 1e-4, gn.LOGITS: 1e-4, gn.IMAGE: 1e-3, gn.BITS: 1e-3, gn.TEXT_MASK: 0.0, gn.RESIDUAL: 5e-2},
    "bf16": {"": 3e-2, gn.LOGITS: 3e-2, gn.IMAGE: 1e-2, gn.BITS: 2e-2, gn.TEXT_MASK: 0.0, gn.RESIDUAL: 1e-1},
}
KEPT_OVERLAP_MIN = 0.99


@dataclass
class OutputResult:
    name: str
    max_abs: float
    mean_abs: float
    max_rel: float  # max |got - ref| / max |ref|
    cosine: float
    tolerance: float
    passed: bool
    note: str = ""

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


@dataclass
class GraphResult:
    name: str
    step: int | None
    outputs: list[OutputResult] = field(default_factory=list)
    error: str | None = None
    kept_overlap: float | None = None
    kept_reordered: bool = False  # the same kept set in another order (near-tied scores ranked the other way)

    @property
    def passed(self) -> bool:
        ok_kept = self.kept_overlap is None or self.kept_overlap >= KEPT_OVERLAP_MIN
        return self.error is None and ok_kept and all(o.passed for o in self.outputs)

    def failures(self) -> list[str]:
        out = [f"{self.name}: {self.error}"] if self.error else []
        out += [f"{self.name}: output {o.name} max error {o.max_rel:.2e} of its scale > tolerance {o.tolerance:.0e}"
                + (f" ({o.note})" if o.note else "") for o in self.outputs if not o.passed]
        if self.kept_overlap is not None and self.kept_overlap < KEPT_OVERLAP_MIN:
            out.append(f"{self.name}: kept-set overlap {self.kept_overlap:.4f} < {KEPT_OVERLAP_MIN}")
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "step": self.step, "passed": self.passed, "error": self.error,
                "kept_overlap": self.kept_overlap, "kept_reordered": self.kept_reordered,
                "outputs": [o.to_dict() for o in self.outputs]}


def tolerance_for(name: str, table: dict[str, float]) -> float:
    best = max((p for p in table if name.startswith(p)), key=len)
    return table[best]


def metrics(got: np.ndarray, want: np.ndarray) -> tuple[float, float, float, float]:
    g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    d = np.abs(g - w)
    scale = max(float(np.abs(w).max(initial=0.0)), 1e-30)
    denom = float(np.linalg.norm(g) * np.linalg.norm(w))
    cos = float(g @ w / denom) if denom > 0 else (1.0 if not d.any() else 0.0)
    return float(d.max(initial=0.0)), float(d.mean()) if d.size else 0.0, float(d.max(initial=0.0)) / scale, cos


def compare_graph(name: str, step: int | None, runner, feeds: dict[str, np.ndarray],
                  golden: dict[str, np.ndarray], tolerances: dict[str, float]) -> GraphResult:
    """Run one graph through a Polygraphy runner (ONNX Runtime's, or an engine's) and compare it with its
    goldens."""
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # our table and report replace Polygraphy's per-output logs

    result = GraphResult(name, step)
    try:
        run = Comparator.run([runner], data_loader=[feeds])
    except Exception as err:  # a graph that does not load or run with these inputs is a failed graph
        result.error = f"does not run on its golden inputs ({type(err).__name__}: {str(err).splitlines()[0][:300]})"
        return result
    got = dict(run[0][1][0].items())
    plain = [n for n in golden if not (gn.is_kept(n) or n == gn.BITS)]
    scales = {n: max(float(np.abs(golden[n].astype(np.float64)).max(initial=0.0)), 1e-30) for n in plain}
    tol = {n: tolerance_for(n, tolerances) for n in golden}
    ref = RunResults()
    ref.add([{n: golden[n] for n in plain}], runner_name="reference")
    run_plain = RunResults()
    run_plain.add([{n: got[n] for n in plain if n in got}], runner_name=runner.name)
    run_plain.extend(ref)
    compare = SimpleCompareFunc(atol={n: tol[n] * scales[n] for n in plain}, rtol={n: tol[n] for n in plain},
                                check_error_stat={"": "elemwise"})
    verdict = Comparator.compare_accuracy(run_plain, compare_func=compare)
    acc = verdict.lst[0] if hasattr(verdict, "lst") else verdict  # AccuracyResults (0.5x) or AccuracyResult
    per_output = {n: bool(r) for its in acc.values() for it in its for n, r in it.items()}
    for n, want in golden.items():
        if n not in got:
            result.outputs.append(OutputResult(n, math.inf, math.inf, math.inf, 0.0, tol[n], False, "missing"))
            continue
        if got[n].shape != want.shape:
            result.outputs.append(OutputResult(n, math.inf, math.inf, math.inf, 0.0, tol[n], False,
                                               f"shape {got[n].shape} vs reference {want.shape}"))
            continue
        if gn.is_kept(n):
            overlap = float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(got[n], want, strict=True)]))
            result.kept_overlap = overlap if result.kept_overlap is None else min(result.kept_overlap, overlap)
            result.kept_reordered |= not np.array_equal(got[n], want)
            continue
        max_abs, mean_abs, max_rel, cos = metrics(got[n], want)
        if n == gn.BITS:
            flipped = float(np.mean(got[n] != want))
            result.outputs.append(OutputResult(n, max_abs, mean_abs, flipped, cos, tol[n], flipped <= tol[n],
                                               f"{flipped:.2%} of bits flipped"))
            continue
        result.outputs.append(OutputResult(n, max_abs, mean_abs, max_rel, cos, tol[n], per_output.get(n, False)))
    return result
