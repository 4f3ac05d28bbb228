"""An artifact whose weight store holds a NaN (exported by a version that did not refuse such checkpoints,
its hashes intact) is refused when a run loads it, naming the weight (issue 15, class 9)."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from conftest import export_tiny
from support.hostile import assert_refused, invoke

from fastvar.cli import run_cmd, validate_cmd
from fastvar.export.weight_store import read_header
from fastvar.manifest import file_record

KEY = "block_chunks.1.module.0.ffn.fc1.bias"  # stored as it is (weights may be stored transposed)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("store") / "a"
    export_tiny(root, "none", res="256", text_len=8, depth=2)
    return root


def _plant(root, key: str, value: float) -> str:
    """Overwrite one element of ``key`` in place and re-record the store's size and sha256."""
    m = json.loads((root / "manifest.json").read_text())
    rel = m["weights"][0]["path"]
    header = read_header(root / rel)
    assert header[key]["dtype"] == "F32"
    with open(root / rel, "r+b") as f:
        f.seek(header["__data_start__"] + header[key]["data_offsets"][0] + 4 * 3)
        f.write(struct.pack("<f", value))
    m["weights"][0].update(file_record(root, root / rel))
    (root / "manifest.json").write_text(json.dumps(m))
    return rel


def test_a_store_of_finite_weights_runs(artifact, tmp_path):
    r = invoke(run_cmd, [artifact, "--seed", "0", "--out", tmp_path / "x.png"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_re_hashed_store_holding_a_non_finite_weight_is_refused_at_load(artifact, tmp_path, value):
    root = shutil.copytree(artifact, tmp_path / "a")
    rel = _plant(root, KEY, float(value))
    r = invoke(run_cmd, [root, "--seed", "0", "--out", tmp_path / "x.png"])
    assert_refused(r, str(root / rel), f"weight '{KEY}' holds non-finite values")
    assert not (tmp_path / "x.png").exists()
    r = invoke(validate_cmd, [root, "--no-e2e"])
    assert_refused(r, f"weight '{KEY}' holds non-finite values")


def _rewrite_header(root, edit) -> str:
    """Apply ``edit`` to the store's safetensors header (same data after it) and re-record size and sha256."""
    m = json.loads((root / "manifest.json").read_text())
    rel = m["weights"][0]["path"]
    raw = (root / rel).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = edit(json.loads(raw[8:8 + n]))
    blob = json.dumps(header).encode()
    (root / rel).write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    m["weights"][0].update(file_record(root, root / rel))
    (root / "manifest.json").write_text(json.dumps(m))
    return rel


def _set(field, value):
    def edit(header):
        header[KEY][field] = value
        return header
    return edit


@pytest.mark.parametrize("edit,named", [
    (lambda h: [h], "the safetensors header is a list, not an object"),
    (lambda h: {**h, KEY: "F32"}, f"weight '{KEY}': its header entry is a str"),
    (_set("dtype", "F64x"), "dtype 'F64x'; accepted:"),
    (_set("shape", [-1]), "shape [-1] is not a list of at most 8 non-negative integers"),
    (_set("shape", [2**40, 2**40]), "needs"),
    (_set("data_offsets", [0]), "data_offsets [0] are not [start, end] inside the file's"),
    (_set("data_offsets", [10, 2]), "data_offsets [10, 2] are not [start, end]"),
    (_set("data_offsets", [0, 2**62]), "are not [start, end] inside the file's"),
], ids=["list", "entry-str", "dtype", "negative-shape", "huge-shape", "one-offset", "reversed", "past-end"])
def test_a_re_hashed_store_with_a_malformed_header_is_refused_naming_the_entry(artifact, tmp_path, edit, named):
    """The header is read from a file: each entry is checked before a tensor is read (class 12)."""
    root = shutil.copytree(artifact, tmp_path / "a")
    rel = _rewrite_header(root, edit)
    r = invoke(run_cmd, [root, "--seed", "0", "--out", tmp_path / "x.png"])
    assert_refused(r, str(root / rel), named)
