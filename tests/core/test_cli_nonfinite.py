"""fastvar-run when a row's values go non-finite (issue 15, class 9): the row's image is not written, the other
rows' are, an error names each failed image, its seed and first bad scale, and the exit status is 2."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import export_tiny

from fastvar.cli import run_cmd

OVERFLOW = "1e38"  # a finite --cfg whose CFG mix overflows float32 logits


@pytest.fixture(scope="module")
def batch_two_artifact(tmp_path_factory):
    """infinity-tiny at 256, two images per call (depth 2 keeps the export short)."""
    root = tmp_path_factory.mktemp("nonfinite") / "art"
    export_tiny(root, "fastvar", res="256", text_len=8, depth=2, batch=2)
    return root


def _run(args):
    return CliRunner().invoke(run_cmd, args)


def test_overflowing_cfg_fails_every_image_and_writes_no_png(batch_two_artifact, tmp_path):
    out = tmp_path / "a.png"
    r = _run([str(batch_two_artifact), "--cfg", OVERFLOW, "--seed", "4", "--out", str(out),
              "--save-tokens", str(tmp_path / "t.npz"), "--save-logits", str(tmp_path / "l.npz"),
              "--timings", str(tmp_path / "time.json")])
    assert r.exit_code == 2, r.output
    for row in (0, 1):
        assert (f"error: image {row} (seed {4 + row}): NaN or infinity first in the logits of scale 0 (1x1 tokens); "
                "no image is written for it") in r.output
    assert "Traceback" not in r.output and "wrote" not in r.output
    assert not list(tmp_path.glob("*.png"))
    # the archives are the evidence: every row, the non-finite logits as they were
    assert np.load(tmp_path / "t.npz")["scale_00"].shape[0] == 2
    assert (~np.isfinite(np.load(tmp_path / "l.npz")["scale_00"])).any(axis=(1, 2)).all()
    failed = json.loads((tmp_path / "time.json").read_text())["failed"]
    assert [(f["image"], f["seed"]) for f in failed] == [(0, 4), (1, 5)]
    # the same artifact at a sane cfg writes both images, named as before
    r = _run([str(batch_two_artifact), "--seed", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a_0.png", "a_1.png"]


def test_overflowing_cfg_in_the_reference_run(tmp_path):
    r = _run(["--model", "infinity-tiny", "--random-init", "--res", "256", "--cfg", OVERFLOW,
              "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2
    assert "image 0 (seed 0): NaN or infinity first in the logits of scale 0" in r.output
    assert not (tmp_path / "x.png").exists()


def test_help_says_a_non_finite_image_exits_2():
    r = _run(["--help"])
    assert r.exit_code == 0 and "exit status is 2" in " ".join(r.output.split())


@pytest.mark.slow
def test_one_bad_row_fails_alone_and_the_other_image_is_unchanged(tmp_path):
    """HART (no norm on the text): row 1's text embedding, finite but scaled by 1e36, overflows its logits a
    few scales in; row 0's PNG is written and byte for byte the one it makes beside a good row 1."""
    text = np.random.default_rng(0).standard_normal((2, 12, 1536)).astype(np.float32)
    bad = text.copy()
    bad[1] *= np.float32(1e36)
    np.save(tmp_path / "good.npy", text)
    np.save(tmp_path / "bad.npy", bad)
    base = ["--model", "hart-tiny", "--random-init", "--batch", "2", "--seed", "3"]
    r = _run([*base, "--text-embeddings", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "bad.png")])
    assert r.exit_code == 2, r.output
    assert f"wrote {tmp_path / 'bad_0.png'}\n" in r.output
    assert re.search(r"error: image 1 \(seed 4\): NaN or infinity first in the logits of scale \d+ \(\d+x\d+ "
                     r"tokens\); no image is written for it", r.output), r.output
    assert "image 0" not in r.output and not (tmp_path / "bad_1.png").exists()
    assert _run([*base, "--text-embeddings", str(tmp_path / "good.npy"),
                 "--out", str(tmp_path / "good.png")]).exit_code == 0
    assert (tmp_path / "bad_0.png").read_bytes() == (tmp_path / "good_0.png").read_bytes()
