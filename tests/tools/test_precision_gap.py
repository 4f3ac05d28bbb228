"""tools/precision_gap.py: the fp32-vs-bf16 band of a model, per step, teacher-forced."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fastvar.export.artifact import ExportOptions

TOOL = Path(__file__).resolve().parents[2] / "tools" / "precision_gap.py"


def _tool():
    spec = importlib.util.spec_from_file_location("precision_gap", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("model,res,schedule,steps", [("infinity-tiny", "256", "12:0.4", 7),
                                                      ("hart-tiny", "1024", "fastvar", 14)])
def test_the_gap_is_bf16_rounding_per_step_with_flips_left_out(model, res, schedule, steps):
    out = _tool().gap(ExportOptions(model=model, random_init=True, res=res, schedule=schedule, depth=1), 0, None)
    errors = out["errors"]
    assert len(errors) == steps
    # bf16 keeps 8 mantissa bits: every step moves, by about 2^-8 of the scale, never by the scale itself
    assert all(1e-4 < e < 0.2 for e in errors.values()), errors
    assert set(out["kept_overlap"]) == set(out["flipped"]) and out["kept_overlap"]
    assert all(0.5 < v <= 1.0 for v in out["kept_overlap"].values())
