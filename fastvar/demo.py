"""``fastvar-demo``: the whole pipeline on an embedded default, with no checkpoint, GPU or network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class ParityError(RuntimeError):
    """The compiled graphs and the reference disagree beyond tolerance (exit code 1, not bad usage)."""


def run_demo(out: str, log: Callable[[str], None] = print) -> dict:
    """Export infinity-tiny (random weights, 1024, FastVAR), generate with ONNX Runtime, then validate
    every graph against the PyTorch reference with Polygraphy and the chain end to end."""
    from fastvar.export.artifact import ExportOptions, export
    from fastvar.runtime.artifact_run import run_artifact
    from fastvar.validate.run import validate

    root = Path(out)
    art_dir = root / "artifact"
    export(ExportOptions(model="infinity-tiny", random_init=True, res="1024", schedule="fastvar",
                         backend="onnxruntime", out=str(art_dir)), log=log)
    run = run_artifact(str(art_dir), str(root / "demo.png"), backend="onnxruntime", seed=0,
                       timings=str(root / "timings.json"), log=log)
    code, _ = validate(str(art_dir), report=str(root / "validation.json"), log=log)
    log(f"image: {run['images'][0]}")
    log(f"timings: {root / 'timings.json'}")
    log(f"validation report: {root / 'validation.json'}")
    if code != 0:
        raise ParityError(f"validation failed; see {root / 'validation.json'}")
    return {"image": run["images"][0], "timings": run, "validation": str(root / "validation.json")}
