"""fastvar-export's planning and refusal paths, through click (no weights are built for these)."""

import json

from click.testing import CliRunner
from support.full_disk import full_disk

import fastvar.atomic
from fastvar.cli import export_cmd


def _export(args):
    return CliRunner().invoke(export_cmd, args, catch_exceptions=False)


def test_plan_prints_the_memory_table_without_building_anything(tmp_path):
    r = _export(["--model", "infinity-2b", "--random-init", "--res", "1024", "--precision", "bf16", "--plan",
                 "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    for item in ("transformer weights", "KV cache", "restore caches", "peak step activations", "VAE decode",
                 "text encoder", "total"):
        assert item in r.output, item
    assert "host memory plan: infinity-2b 1024x1024 b1 bf16 fastvar, onnxruntime on cpu" in r.output
    assert "loop working memory" in r.output and "decoder working memory" in r.output
    assert not (tmp_path / "a").exists()
    trt = _export(["--model", "infinity-2b", "--random-init", "--res", "1024", "--backend", "onnx", "--plan"])
    assert trt.exit_code == 0, trt.output
    assert ", tensorrt on cuda" in trt.output and "GPU memory plan" in trt.output and "load staging" in trt.output


def test_gpu_memory_refuses_a_plan_that_does_not_fit_with_the_shortfall(tmp_path):
    r = _export(["--model", "infinity-2b", "--random-init", "--gpu-memory", "1", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2
    assert "needs 18.42 GiB" in r.output and "short by 17.42 GiB" in r.output and "transformer weights" in r.output
    assert not (tmp_path / "a").exists()
    ok = _export(["--model", "infinity-2b", "--random-init", "--precision", "bf16", "--plan", "--gpu-memory", "80"])
    assert ok.exit_code == 0 and "fits in 80 GiB" in ok.output


def test_tensorrt_backend_without_tensorrt_fails_at_once(tmp_path):
    r = _export(["--model", "infinity-tiny", "--random-init", "--backend", "tensorrt", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "needs TensorRT" in r.output and "--backend onnxruntime" in r.output
    assert "fastvar-build" in r.output and not (tmp_path / "a").exists()


def test_bad_inputs_are_specific(tmp_path):
    r = _export(["--model", "infinity-tiny", "--random-init", "--schedule", "33:0.5", "--plan"])
    assert r.exit_code == 2 and "matches no step" in r.output
    r = _export(["--model", "infinity-tiny", "--random-init", "--text-len", "0", "--plan"])
    assert r.exit_code == 2 and "--text-len" in r.output
    r = _export(["--model", "infinity-tiny", "--plan"])
    assert r.exit_code == 2 and "--random-init" in r.output
    for flag in ("--gpu-memory", "--attention-budget"):  # click's FloatRange alone lets NaN through
        r = _export(["--model", "infinity-tiny", "--random-init", "--plan", flag, "nan"])
        assert r.exit_code == 2 and "'nan' is not a finite number" in r.output, flag
    r = _export(["--model", "infinity-tiny", "--random-init", "--schedule", ",", "--plan"])
    assert r.exit_code == 2 and "names no step" in r.output


def test_export_deletes_no_file_it_does_not_own(tmp_path):
    """A non-empty directory that is not an artifact is refused (its files untouched) unless --allow-nonempty;
    then only our own leftover temp files are swept, never another program's ``.*.tmp`` or a nested one."""
    out = tmp_path / "mine"
    (out / "graphs" / "deep").mkdir(parents=True)
    theirs = [out / ".notes.tmp", out / "graphs" / ".editor.swp.tmp", out / "graphs" / "deep" / ".x.fastvar.tmp"]
    for p in theirs:
        p.write_text("keep me")
    ours = out / "graphs" / ".decoder.onnx.abc123.fastvar.tmp"  # what an interrupted write of ours leaves
    ours.write_text("partial")
    args = ["--model", "infinity-tiny", "--random-init", "--res", "256", "--schedule", "none", "--text-len", "8",
            "--out", str(out)]
    r = _export(args)
    assert r.exit_code == 2 and "is a non-empty directory that is not an artifact" in r.output
    assert all(p.read_text() == "keep me" for p in theirs) and ours.exists()
    r = _export([*args, "--allow-nonempty"])
    assert r.exit_code == 0, r.output
    assert all(p.read_text() == "keep me" for p in theirs) and not ours.exists()
    assert (out / "manifest.json").is_file()
    assert _export(args).exit_code == 0  # an artifact now: a re-run needs no flag


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    """Two exports into one directory would mix their files: the second fails at once, naming the PID that
    holds the artifact's lock, and writes nothing."""
    import fcntl
    import os

    out = tmp_path / "art"
    out.mkdir()
    holder = os.open(out / ".fastvar.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        os.write(holder, b"4242\n")
        r = _export(["--model", "infinity-tiny", "--random-init", "--res", "256", "--text-len", "8", "--out", str(out)])
        assert r.exit_code == 2 and "being written by another fastvar process (PID 4242)" in r.output
        assert "--wait" in r.output
    finally:
        os.close(holder)
    assert sorted(p.name for p in out.iterdir()) == [".fastvar.lock"]


def test_a_full_disk_during_an_export_names_the_graph_and_its_file(tmp_path, monkeypatch):
    out = tmp_path / "a"
    full_disk(monkeypatch, fastvar.atomic, "condition.onnx")
    r = _export(["--model", "infinity-tiny", "--random-init", "--res", "256", "--schedule", "none", "--text-len", "8",
                 "--out", str(out)])
    assert r.exit_code == 2
    assert f"writing graph condition to {out / 'graphs' / 'condition.onnx'} failed: No space left on device" in r.output
    assert ".fastvar.tmp" not in r.output
    files = {p.name for p in (out / "graphs").iterdir()}
    assert "condition.onnx" not in files and not [n for n in files if n.startswith(".")]  # nor our temp file
    # other graphs, exported at the same time by other processes, are kept where the manifest records them
    recorded = json.loads((out / "manifest.json").read_text())
    assert recorded["complete"] is False and {f"{n}.onnx" for n in recorded["graphs"]} <= files
