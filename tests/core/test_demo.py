"""fastvar-demo, the README's main job: export, run, validate, all on CPU without a checkpoint."""

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from fastvar.cli import demo_cmd


@pytest.mark.slow
def test_demo_exports_runs_and_validates(tmp_path):
    r = CliRunner().invoke(demo_cmd, ["--out", str(tmp_path)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "demo.png").size == (1024, 1024)
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert [s["index"] for s in timings["steps"]] == list(range(11))
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["passed"] and report["end_to_end"]["token_agreement"] >= 0.99
    for line in ("image:", "validation report:", "passed:"):
        assert line in r.output
