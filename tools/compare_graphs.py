"""Compare the graphs of two exports of the same model: interfaces, and outputs on the first one's goldens.

    python tools/compare_graphs.py BASE NEW [--json FILE]

BASE must hold goldens (run ``fastvar-validate BASE`` once). For every graph of BASE: NEW's graph must
declare the same inputs and outputs (names, types, shapes, in order) and bind the same weights; both run
on ONNX Runtime (CPU, fp32) on BASE's golden inputs, each with its own artifact's weights, and each output
is reported as bit-identical or by its largest difference relative to its scale. Exit 0 when every
interface matches and every output is within ``--tol`` (default 1e-6) of its scale, 1 otherwise. This is
how an exporter change is shown to leave the graphs equivalent (issue 17).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _interface(path) -> tuple:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def one(vis):
        return [(v.name, v.type.tensor_type.elem_type, [d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in vis]

    return one(m.graph.input), one(m.graph.output)


def _session(art, name: str):
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = False  # a session per graph: give each one's memory back when it goes
    source: str | bytes = str(art.graph_path(name))
    if art.has_plugin_nodes and art.graph(name).kind in ("step", "validate"):
        from fastvar.plugins.restore.ort_op import for_onnxruntime, session_options

        source = for_onnxruntime(onnx.load(source)).SerializeToString()
        so = session_options(so)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def compare(base_dir: str, new_dir: str, tol: float) -> tuple[bool, list[dict]]:
    from fastvar.export.weight_store import read_store
    from fastvar.manifest import Artifact
    from fastvar.validate.goldens import GOLDENS, read_npz

    base, new = Artifact.load(base_dir), Artifact.load(new_dir)
    wb = {k: v.numpy() for k, v in read_store(base.weight_path()).items()}
    wn = {k: v.numpy() for k, v in read_store(new.weight_path()).items()}
    rows, ok = [], True
    for name, g in base.manifest.graphs.items():
        row: dict = {"graph": name}
        rows.append(row)
        if name not in new.manifest.graphs:
            row["problem"] = "missing from NEW"
            ok = False
            continue
        if _interface(base.graph_path(name)) != _interface(new.graph_path(name)):
            row["problem"] = "interfaces differ"
            ok = False
            continue
        if g.weights != new.graph(name).weights:
            row["problem"] = "bound weights differ"
            ok = False
            continue
        golden = base.root / GOLDENS / f"{name}.inputs.npz"
        if not golden.is_file():
            row["problem"] = "BASE has no goldens for it (run fastvar-validate BASE)"
            ok = False
            continue
        feeds = read_npz(golden)
        a = _session(base, name).run(None, {**feeds, **{w: wb[w] for w in g.weights}})
        b = _session(new, name).run(None, {**feeds, **{w: wn[w] for w in g.weights}})
        row["outputs"] = len(a)
        row["identical"] = sum(bool(np.array_equal(x, y)) for x, y in zip(a, b, strict=True))
        worst = 0.0
        for x, y in zip(a, b, strict=True):
            if np.array_equal(x, y):
                continue
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            worst = max(worst, float(np.abs(x64 - y64).max()) / max(float(np.abs(x64).max()), 1e-30))
        row["max_rel"] = worst
        ok &= worst <= tol
    return ok, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    ok, rows = compare(args.base, args.new, args.tol)
    for r in rows:
        if "problem" in r:
            print(f"{r['graph']}: {r['problem']}")
        else:
            print(f"{r['graph']}: {r['identical']}/{r['outputs']} outputs bit-identical, max rel diff "
                  f"{r['max_rel']:.3g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"base": args.base, "new": args.new, "tol": args.tol, "equivalent": ok, "graphs": rows}, f,
                      indent=1)
    print("equivalent" if ok else "NOT equivalent")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
