"""fastvar-validate: exit 0 on fresh artifacts, 1 naming the scale and output on a wrong graph or weight,
2 on a missing golden or graph; the printed `polygraphy run` line passes."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fastvar.cli import validate_cmd
from fastvar.manifest import file_record

pytest.importorskip("polygraphy", reason="fastvar-validate runs Polygraphy's comparator")


def _validate(args):
    return CliRunner().invoke(validate_cmd, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def validated(tiny_artifacts, tmp_path_factory):
    """Copies of both tiny artifacts, validated once (which records their goldens)."""
    root = tmp_path_factory.mktemp("validated")
    out = {}
    for schedule, src in tiny_artifacts.items():
        dst = root / schedule
        shutil.copytree(src, dst)
        report = root / f"{schedule}.json"
        r = _validate([dst, "--report", report])
        out[schedule] = (dst, r, json.loads(report.read_text()))
    return out


@pytest.mark.parametrize("schedule", ["fastvar", "none"])
def test_fresh_artifact_passes(validated, schedule):
    root, r, report = validated[schedule]
    assert r.exit_code == 0, r.output
    assert report["passed"] and not report["failures"]
    names = {g["name"] for g in report["graphs"]}
    assert {"condition", "decoder", "step_00"} <= names
    if schedule == "fastvar":
        assert {"step_09_validate", "step_10_validate"} <= names
        kept = {g["name"]: g["kept_overlap"] for g in report["graphs"] if g["kept_overlap"] is not None}
        assert set(kept) == {"step_09", "step_10"} and min(kept.values()) >= 0.99
    e2e = report["end_to_end"]
    assert max(e2e["teacher_forced_logit_error"].values()) <= 1e-4
    assert e2e["token_agreement"] >= 0.99
    logits = next(o for g in report["graphs"] if g["name"] == "step_05" for o in g["outputs"] if o["name"] == "logits")
    assert logits["cosine"] > 0.999999 and logits["max_rel"] <= 1e-4
    assert "polygraphy run" in r.output and "max rel" in r.output


def test_the_data_loader_script_is_verified_like_every_golden(validated, tmp_path):
    """The script `polygraphy run` is told to execute is hashed: an altered one, or an index without its
    hash, is refused (exit 2) before anything is judged or printed."""
    root = _copy(validated, "none", tmp_path)
    loader = root / "goldens" / "data_loader.py"
    original = loader.read_bytes()
    loader.write_bytes(original.replace(b"json", b"JSON", 1))  # the same size, other code
    r = _validate([root, "--no-e2e"])
    assert r.exit_code == 2 and "data_loader.py does not match its recorded sha256" in r.output
    assert "--data-loader-script" not in r.output  # no command to run it was printed
    loader.write_bytes(original)
    index_path = root / "goldens" / "index.json"
    index = json.loads(index_path.read_text())
    del index["data_loader"]
    index_path.write_text(json.dumps(index))
    r = _validate([root, "--no-e2e"])
    assert r.exit_code == 2 and "records no hash of data_loader.py" in r.output
    index_path.write_text(json.dumps({"graphs": []}))
    r = _validate([root, "--no-e2e"])
    assert r.exit_code == 2 and "not a golden index" in r.output


def test_goldens_behind_a_link_are_refused_and_nothing_is_written_through_it(validated, tmp_path):
    root = _copy(validated, "none", tmp_path / "a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(root / "goldens")
    (root / "goldens").symlink_to(elsewhere)
    r = _validate([root, "--no-e2e"])
    assert r.exit_code == 2 and f"{root / 'goldens'} is a symbolic link" in r.output
    assert list(elsewhere.iterdir()) == []


def _copy(validated, schedule, tmp_path) -> Path:
    dst = tmp_path / schedule
    shutil.copytree(validated[schedule][0], dst)
    return dst


def _rerecord(root: Path, rel: str) -> None:
    """Make the manifest believe a replaced file (a wrong export, not a corrupted download)."""
    m = json.loads((root / "manifest.json").read_text())
    for g in m["graphs"].values():
        if g["file"]["path"] == rel:
            g["file"] = file_record(root, root / rel)
    for w in m["weights"]:
        if w["path"] == rel:
            w.update(file_record(root, root / rel))
    (root / "manifest.json").write_text(json.dumps(m))


def test_perturbed_weight_fails_naming_scale_and_output(validated, tmp_path):
    from fastvar.export.weight_store import read_store, write_tensors

    root = _copy(validated, "fastvar", tmp_path)
    store = root / "weights" / "transformer.safetensors"
    weights = read_store(store)
    key = "block_chunks.1.module.0.ffn.fc2.bias"
    weights[key] = weights[key] + 0.05 * torch.ones_like(weights[key])
    write_tensors(store, weights)
    _rerecord(root, "weights/transformer.safetensors")
    r = _validate([root, "--no-e2e"])
    assert r.exit_code == 1, r.output
    assert "FAILED" in r.output and "step_00: output logits" in r.output


def test_graph_from_another_schedule_is_refused_naming_the_scale_and_tensor(validated, tmp_path):
    """An unpruned step_09 re-hashed into a FastVAR artifact, whose step_09 takes restore caches and gives kept
    indices: its interface is not its record's, so it is refused (exit 2) before any golden is judged."""
    root = _copy(validated, "fastvar", tmp_path)
    shutil.copy(validated["none"][0] / "graphs" / "step_09.onnx", root / "graphs" / "step_09.onnx")
    _rerecord(root, "graphs/step_09.onnx")
    r = _validate([root, "--no-e2e"])
    assert r.exit_code == 2, r.output
    assert "graph step_09: the manifest records input 'cache_sa_0', which the graph file does not have" in r.output
    assert "step_10" not in r.output and "max rel" not in r.output


def test_missing_golden_or_graph_is_a_usage_error(validated, tmp_path):
    root = _copy(validated, "none", tmp_path)
    (root / "goldens" / "step_03.inputs.npz").unlink()
    r = _validate([root])
    assert r.exit_code == 2 and "step_03.inputs.npz" in r.output and "missing" in r.output
    root = _copy(validated, "none", tmp_path / "b")
    (root / "graphs" / "step_04.onnx").unlink()
    r = _validate([root])
    assert r.exit_code == 2 and "step_04.onnx" in r.output
    assert _validate([tmp_path / "nowhere"]).exit_code == 2
    assert _validate([root, "--tol", "logits"]).exit_code == 2


@pytest.mark.parametrize("value", ["nan", "inf", "-1e-4"])
def test_a_tolerance_must_be_finite_and_not_negative(validated, value):
    """A NaN tolerance would pass anything: refused before any graph runs."""
    root, _, _ = validated["fastvar"]
    r = _validate([root, "--tol", f"logits={value}"])
    assert r.exit_code == 2 and "must be a finite number >= 0" in r.output


def test_printed_polygraphy_command_passes(validated):
    root, r, _ = validated["fastvar"]
    lines = [line.strip() for line in r.output.splitlines() if line.strip().startswith("polygraphy run")]
    assert len(lines) == 2 and "step_09_validate" in lines[1]
    exe = Path(sys.executable).with_name("polygraphy")
    if not exe.exists():
        pytest.skip(f"the polygraphy console script is not beside {sys.executable}")
    for line in lines:
        args = shlex.split(line)
        done = subprocess.run([str(exe), *args[1:]], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "PASSED" in done.stdout + done.stderr
