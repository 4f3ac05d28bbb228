"""Fuzzing what a user may be handed (issue 15): mutated manifests, golden indexes, checkpoint headers and
HART config files, fed through fastvar-run, fastvar-validate and fastvar-build --check-only in-process.

Every case must end in exit 0 or a clean exit 2 (an ``error:`` message, no traceback), and nothing outside
the scratch directory may be created or changed: the listing (sizes and mtimes) of the scratch's parent,
which holds a victim file that mutated paths point at, is the same before and after. The seed is fixed, so a
failure names a case that replays exactly.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import struct
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import export_tiny

from fastvar.cli import build_cmd, run_cmd, validate_cmd

SEED = 20261207
# Hostile replacements: wrong types, signs and sizes, paths that leave the artifact or point at the victim.
POOL: list = [None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 10**12, 1.5, -0.5, 1e308, math.nan, math.inf,
              -math.inf, "", "x", "fp32", "../victim.txt", "../../victim.txt", "/etc/passwd", "..", ".", "graphs",
              "weights/../../victim.txt", [], [0], [-1, 10**9], [[1, 2]], {}, {"a": 1}, "\u00e9\x00"]


def _paths(node, prefix=()) -> list[tuple]:
    """Every location in a JSON tree (the root is ``()``)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _near(value, rng: random.Random):
    """A plausible-looking neighbour of a value: the mutations a careless edit or a crafted file makes."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, -value, value * 1000, value * 10**9, 0, str(value), float(value)])
    if isinstance(value, float):
        return rng.choice([-value, value * 1e6, 0.0, math.nan, str(value), int(value)])
    if isinstance(value, str):
        return rng.choice([value + "x", value.upper(), "../" + value, "/" + value, "", value[: len(value) // 2],
                           value + "/../../victim.txt"])
    if isinstance(value, list):
        if not value:
            return [rng.choice(POOL)]
        return rng.choice([value[:-1], value + value[-1:], value[::-1], [], [value], value[0]])
    if isinstance(value, dict):
        if not value:
            return {"zzz": 1}
        keys = list(value)
        dropped = dict(value)
        del dropped[rng.choice(keys)]
        return rng.choice([dropped, {**value, "zzz": rng.choice(POOL)}, list(value.values()), None])
    return rng.choice(POOL)


def mutate_tree(tree, rng: random.Random) -> tuple[object, str]:
    """One mutation of a JSON tree: replace a node (hostile value or neighbour), or delete it."""
    tree = copy.deepcopy(tree)
    path = rng.choice(_paths(tree))
    op = rng.choice(["pool", "near", "near", "delete"]) if path else rng.choice(["pool", "near"])
    if op == "delete":
        parent = _get(tree, path[:-1])
        del parent[path[-1]]
        return tree, f"delete {list(path)}"
    new = rng.choice(POOL) if op == "pool" else _near(_get(tree, path), rng)
    if not path:
        return new, f"root := {new!r}"[:160]
    _get(tree, path[:-1])[path[-1]] = new
    return tree, f"{list(path)} := {new!r}"[:160]


def mutate_text(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A byte-level mutation of a JSON file: truncation, a flipped byte, or a different document."""
    op = rng.choice(["truncate", "flip", "replace"])
    if op == "truncate":
        at = rng.randrange(len(data))
        return data[:at], f"truncated at {at}"
    if op == "flip":
        at = rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:], f"bit flipped at {at}"
    doc = rng.choice([b"", b"[]", b"null", b"{}", b"\"x\"", b"1e999", b"{\"format\": 1}", b"\xff\xfe"])
    return doc, f"replaced by {doc!r}"


def mutate_json_file(path: Path, rng: random.Random, text_rate: float = 0.15) -> str:
    data = path.read_bytes()
    if rng.random() < text_rate:
        new, what = mutate_text(data, rng)
        path.write_bytes(new)
        return what
    tree, what = mutate_tree(json.loads(data), rng)
    path.write_text(json.dumps(tree, allow_nan=True))
    return what


def mutate_safetensors_header(path: Path, rng: random.Random) -> str:
    """Mutate the JSON header of a safetensors file (tensor names, dtypes, shapes, offsets) or its length."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    if rng.random() < 0.1:
        claimed = rng.choice([0, 1, n - 1, n + 1, len(data), 2**40, 2**64 - 1])
        path.write_bytes(struct.pack("<Q", claimed) + data[8:])
        return f"header length {n} -> {claimed}"
    if rng.random() < 0.3:  # rename a tensor: block indices and prefixes decide what the loader builds
        key = rng.choice([k for k in header if k != "__metadata__"])
        new_key = rng.choice([key.replace(".0.", ".100000000.", 1), key.replace("block_chunks.", "blocks.", 1),
                              key + ".x", "", key.upper(), "../" + key])
        header[new_key] = header.pop(key)
        what = f"key {key} -> {new_key}"
    else:
        header, what = mutate_tree(header, rng)
    blob = json.dumps(header, allow_nan=True).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + body)
    return what


def _listing(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in [*filenames, *dirnames]:
            st = (here / name).lstat()
            out[str((here / name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """A 256 px infinity-tiny artifact with its goldens, an Infinity checkpoint pair (safetensors transformer)
    and a HART release folder: what each fuzz case starts from."""
    from fastvar.export.models.checkpoint import build_random_infinity, build_random_vae, save_state_dict
    from fastvar.export.models.factory import build_pair
    from fastvar.export.models.hart_checkpoint import save_hart_folder, save_tokenizer_folder
    from fastvar.export.models.infinity_config import preset

    root = tmp_path_factory.mktemp("fuzz-bases")
    export_tiny(root / "art", "fastvar", res="256")
    r = CliRunner().invoke(validate_cmd, [str(root / "art"), "--no-e2e"])
    assert r.exit_code == 0, r.output  # records the goldens the validate cases start from
    cfg = preset("infinity-tiny")
    save_state_dict(build_random_infinity(cfg, 7), root / "t.safetensors")
    save_state_dict(build_random_vae(cfg.vae, 8), root / "v.pth", wrap_key="vae")
    model, tok = build_pair("hart-tiny", random_init=True, seed=5)
    save_hart_folder(model, root / "rel" / "llm", ema=model)
    save_tokenizer_folder(tok, root / "rel" / "tokenizer")
    return {"art": root / "art", "ckpt": root / "t.safetensors", "vae": root / "v.pth", "hart": root / "rel"}


def _case_artifact(bases, scratch: Path, rng: random.Random) -> tuple[Callable, list[str], str]:
    art = scratch / "art"
    shutil.copytree(bases["art"], art)
    command = rng.choice(["run", "validate", "build"])
    target = art / "manifest.json"
    if command == "validate" and rng.random() < 0.25:
        target = art / "goldens" / "index.json"
    what = f"{target.relative_to(scratch)}: {mutate_json_file(target, rng)}"
    if command == "run":
        return run_cmd, [str(art), "--backend", "onnxruntime", "--seed", "0", "--out", str(scratch / "o.png")], what
    if command == "validate":
        return validate_cmd, [str(art), "--no-e2e", "--report", str(scratch / "r.json")], what
    return build_cmd, [str(art), "--check-only"], what


def _case_checkpoint(bases, scratch: Path, rng: random.Random) -> tuple[Callable, list[str], str]:
    ckpt = scratch / "t.safetensors"
    shutil.copy(bases["ckpt"], ckpt)
    what = f"t.safetensors: {mutate_safetensors_header(ckpt, rng)}"
    return run_cmd, ["--model", "infinity", "--ckpt", str(ckpt), "--vae", str(bases["vae"]), "--res", "256",
                     "--seed", "0", "--out", str(scratch / "o.png")], what


def _case_hart_config(bases, scratch: Path, rng: random.Random) -> tuple[Callable, list[str], str]:
    rel = scratch / "rel"
    shutil.copytree(bases["hart"], rel)
    target = rel / rng.choice(["llm", "llm", "tokenizer"]) / "config.json"
    what = f"{target.relative_to(scratch)}: {mutate_json_file(target, rng, text_rate=0.1)}"
    return run_cmd, ["--model", "hart", "--ckpt", str(rel), "--seed", "0", "--out", str(scratch / "o.png")], what


# (how many cases, how each is made): 150 artifacts, 40 checkpoint headers, 15 HART configs (a HART config that
# still loads runs a full 1024 px generation, the slowest case).
PLAN = [(150, _case_artifact), (40, _case_checkpoint), (15, _case_hart_config)]


def _judge(result) -> str | None:
    """None for exit 0 or a clean exit 2; otherwise what went wrong."""
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        return "traceback:\n" + "".join(traceback.format_exception(*result.exc_info))[-1500:]
    if result.exit_code == 0:
        return None
    if result.exit_code == 2 and "rror" in result.output and "Traceback" not in result.output:
        return None
    return f"exit {result.exit_code}:\n{result.output[-800:]}"


def test_mutated_inputs_end_in_success_or_a_clean_refusal(bases, tmp_path):
    work = tmp_path / "parent"
    scratch_root = work / "scratch"
    scratch_root.mkdir(parents=True)
    (work / "victim.txt").write_text("a file no command may touch\n")
    before = _listing(work, scratch_root)
    rng = random.Random(SEED)
    failures, seconds, n = [], [], 0
    cwd = Path.cwd()
    for count, make in PLAN:
        for _ in range(count):
            scratch = scratch_root / f"case{n:03d}"
            scratch.mkdir()
            command, args, what = make(bases, scratch, rng)
            os.chdir(scratch)  # relative paths a mutated file names resolve inside the scratch
            try:
                t0 = time.perf_counter()
                result = CliRunner().invoke(command, args)
                seconds.append(time.perf_counter() - t0)
            finally:
                os.chdir(cwd)
            bad = _judge(result)
            if bad:
                failures.append(f"case {n} ({command.name} {what}): {bad}")
            shutil.rmtree(scratch)
            n += 1
    assert n >= 200
    assert not failures, f"{len(failures)} of {n} cases failed:\n\n" + "\n\n".join(failures[:8])
    assert _listing(work, scratch_root) == before, "a command created or changed a file outside its scratch"
    print(f"{n} cases in {sum(seconds):.0f} s (slowest {max(seconds):.1f} s)")
