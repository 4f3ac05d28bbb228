"""fastvar-run as users call it, through click (same code path as the console script)."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from support.full_disk import full_disk

import fastvar.atomic
from fastvar.cli import run_cmd


def _run(args):
    result = CliRunner().invoke(run_cmd, args, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("t") / "t.npy"
    np.save(p, np.random.default_rng(0).standard_normal((12, 2048)).astype(np.float32))
    return p


def test_tiny_1024_png_is_deterministic_and_seeded(tmp_path, text_file):
    base = ["--model", "infinity-tiny", "--random-init", "--res", "1024", "--text-embeddings", str(text_file)]
    r = _run([*base, "--seed", "0", "--out", str(tmp_path / "a.png"), "--timings", str(tmp_path / "t.json"),
              "--schedule", "fastvar"])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "a.png").size == (1024, 1024)
    timings = json.loads((tmp_path / "t.json").read_text())
    assert [s["index"] for s in timings["steps"]] == list(range(11))  # 11 of 13 steps
    assert {"load_s", "loop_s", "decode_s"} <= set(timings)
    assert _run([*base, "--seed", "0", "--out", str(tmp_path / "b.png")]).exit_code == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert _run([*base, "--seed", "1", "--out", str(tmp_path / "c.png")]).exit_code == 0
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()


def test_save_and_force_tokens_roundtrip(tmp_path, text_file):
    base = ["--model", "infinity-tiny", "--random-init", "--res", "256", "--text-embeddings", str(text_file),
            "--tau", "1", "--batch", "2"]
    assert _run([*base, "--seed", "0", "--out", str(tmp_path / "a.png"), "--save-tokens", str(tmp_path / "tok.npz"),
                 "--save-logits", str(tmp_path / "log.npz")]).exit_code == 0
    tok = np.load(tmp_path / "tok.npz")
    assert tok.files == [f"scale_{i:02d}" for i in range(7)]
    assert tok["scale_03"].shape == (2, 6, 6, 32) and tok["scale_03"].dtype == np.uint8
    assert np.load(tmp_path / "log.npz")["scale_03"].shape == (2, 36, 64)
    # teacher forcing with another seed reproduces the tokens, logits and images
    assert _run([*base, "--seed", "7", "--out", str(tmp_path / "f.png"), "--force-tokens", str(tmp_path / "tok.npz"),
                 "--save-logits", str(tmp_path / "log2.npz")]).exit_code == 0
    a, b = np.load(tmp_path / "log.npz"), np.load(tmp_path / "log2.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert (tmp_path / "a_1.png").read_bytes() == (tmp_path / "f_1.png").read_bytes()


@pytest.mark.parametrize("args,msg", [
    (["--res", "300"], "unsupported resolution '300'; accepted"),
    (["--random-init", "--schedule", "33:0.5"], "matches no step"),
    (["--ckpt", "x.pth"], "give both --ckpt"),
    (["--random-init", "--ckpt", "x.pth", "--vae", "v.pth"], "exclude each other"),
    (["--random-init", "--batch", "0"], "--batch must be >= 1"),
    (["--random-init", "--tau", "0"], "tau must be a finite number > 0"),
    # a flag the family does not use is refused, not ignored
    (["--model", "hart-tiny", "--random-init", "--tau", "0.7"], "samples without a temperature: leave --tau out"),
    (["--random-init", "--res", "256", "--no-more-smooth"], "no feedback choice"),
    (["--random-init", "--res", "256", "--schedule", ","], "names no step"),
    (["--random-init", "--res", "256", "--schedule", "ab:0.5"], "'ab' is not a side"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, msg):
    r = CliRunner().invoke(run_cmd, [*args, "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2
    assert msg in r.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("keys,msg", [
    (["SCALE_00"], "SCALE_00 match no scale of this schedule; expected keys: scale_00, scale_01"),
    ([], "the archive holds no arrays"),
])
def test_force_tokens_that_match_no_scale_are_named(tmp_path, keys, msg):
    forced = tmp_path / "f.npz"
    np.savez(forced, **{k: np.zeros((1, 1, 1, 32), np.uint8) for k in keys})
    r = CliRunner().invoke(run_cmd, ["--random-init", "--res", "256", "--tau", "1", "--force-tokens", str(forced),
                                     "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and msg in r.output
    assert not (tmp_path / "x.png").exists()


def test_bad_text_embeddings_are_rejected(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 100), np.float32))
    r = CliRunner().invoke(run_cmd, ["--random-init", "--res", "256", "--text-embeddings", str(bad),
                                     "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "expected (L, 2048) or (B, L, 2048)" in r.output


def test_help_needs_no_gpu():
    r = CliRunner().invoke(run_cmd, ["--help"])
    assert r.exit_code == 0 and "--force-tokens" in r.output and "teacher forcing" in r.output.lower()


@pytest.mark.parametrize("args,msg", [
    (["--tau", "nan"], "tau must be a finite number > 0"),
    (["--cfg", "inf"], "cfg must be a finite number"),
    (["--seed", "99999999999999999999999"], "--seed"),
])
def test_non_finite_and_out_of_range_numbers(tmp_path, args, msg):
    r = CliRunner().invoke(run_cmd, ["--random-init", "--res", "256", *args, "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and msg in r.output
    assert not (tmp_path / "x.png").exists()


def test_out_that_is_a_directory_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(run_cmd, ["--random-init", "--res", "256", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory; give a file path" in r.output
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_written_files_are_readable_by_others(tmp_path):
    import os

    r = CliRunner().invoke(run_cmd, ["--random-init", "--res", "256", "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.png").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_forced_tokens_must_be_bits(tmp_path):
    base = ["--random-init", "--res", "256", "--tau", "1"]
    assert CliRunner().invoke(run_cmd, [*base, "--out", str(tmp_path / "a.png"),
                                        "--save-tokens", str(tmp_path / "t.npz")]).exit_code == 0
    tok = dict(np.load(tmp_path / "t.npz"))
    tok["scale_02"] = tok["scale_02"].astype(np.float32) * 0.5
    np.savez(tmp_path / "bad.npz", **tok)
    r = CliRunner().invoke(run_cmd, [*base, "--out", str(tmp_path / "b.png"),
                                     "--force-tokens", str(tmp_path / "bad.npz")])
    assert r.exit_code == 2 and "scale_02 holds values other than 0 and 1" in r.output


def _header_only(f, shape):
    """An .npy file whose header claims ``shape`` but which holds 16 bytes of data."""
    from numpy.lib import format as npy

    npy.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
    f.write(b"\0" * 16)


@pytest.mark.parametrize("flag,make,msg", [
    ("--text-embeddings", lambda p: np.savez(p, t=np.zeros((4, 2048), np.float32)),
     "not a readable .npy array: it is an .npz archive (np.savez); give one array saved with np.save"),
    ("--text-embeddings", lambda p: _header_only(p, (10**12, 2048)), "its header claims shape (1000000000000, 2048)"),
    ("--text-embeddings", lambda p: np.save(p, np.full((4, 2048), np.nan, np.float32)), "non-finite value"),
    ("--force-tokens", lambda p: np.save(p, np.zeros((1, 1, 1, 32), np.uint8)),
     "is not a readable .npz archive: it is one .npy array (np.save)"),
    ("--force-tokens", lambda p: p.write(b"PK\x03\x04 not really a zip"), "--force-tokens"),
])
def test_hostile_arrays_are_refused_before_anything_is_allocated(tmp_path, flag, make, msg):
    path = tmp_path / "x.bin"
    with open(path, "wb") as f:
        make(f)
    r = CliRunner().invoke(run_cmd, ["--random-init", "--res", "256", "--tau", "1", flag, str(path),
                                     "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and msg in r.output, r.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("victim,flag,stage", [
    ("x.png", None, "writing image to"),
    ("t.npz", "--save-tokens", "writing the --save-tokens archive to"),
    ("t.json", "--timings", "writing the --timings report to"),
])
def test_a_full_disk_names_the_file_and_what_was_being_written(tmp_path, monkeypatch, victim, flag, stage):
    """ENOSPC mid-write: exit 2 naming the user's path and the stage, never our hidden temp file, which is gone."""
    full_disk(monkeypatch, fastvar.atomic, victim)
    args = ["--random-init", "--res", "256", "--tau", "1", "--out", str(tmp_path / "x.png")]
    r = CliRunner().invoke(run_cmd, args + ([flag, str(tmp_path / victim)] if flag else []))
    assert r.exit_code == 2, (r.output, r.exception)
    assert f"{stage} {tmp_path / victim} failed: No space left on device" in r.output
    assert ".fastvar.tmp" not in r.output and "the disk is full" in r.output
    assert not (tmp_path / victim).exists() and not list(tmp_path.glob(".*"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full (every write: ENOSPC)")
def test_a_device_that_is_full_is_named_with_the_stage(tmp_path):
    r = CliRunner().invoke(run_cmd, ["--random-init", "--res", "256", "--tau", "1", "--out", "/dev/full"])
    assert r.exit_code == 2, (r.output, r.exception)
    assert "writing image to /dev/full (character device) failed: could not write through it: No space left" \
        in r.output and ".fastvar" not in r.output
