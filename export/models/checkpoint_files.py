"""Reading checkpoint files into a flat mapping: a ``.pth`` pickle, a ``.safetensors`` file, or shards.

Pickles are opened with ``weights_only=True`` only (tensors and plain containers; anything else is refused,
never executed), and torch's own advice to retry without that protection is never repeated. A shard index
is untrusted: its ``weight_map`` must map names to relative paths inside its folder (symbolic links there
are followed: a Hugging Face snapshot links every file into ``../../blobs``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path, PurePosixPath

import torch

from fastvar.export.models.limits import CONFIG_BYTES
from fastvar.export.models.state_dict_checks import CheckpointError

ACCEPTED = "accepted: a .pth state dict, a .safetensors file, or a folder of sharded safetensors"
# Sentences of torch's messages that advise lowering the unpickler's guard; never shown to a user.
_ADVICE = re.compile(r"weights_only|safe_globals|allowlist|trust", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def torch_reason(err: BaseException) -> str:
    """What went wrong, from a torch or safetensors error, without advice to unpickle arbitrary objects."""
    text = _ANSI.sub("", str(err)).replace("WeightsUnpickler error: ", "")
    sentences = [s.strip(" .\t") for s in re.split(r"\.\s+|\n", text)]
    kept = [s for s in sentences if s and not _ADVICE.search(s)]
    reason = "; ".join(kept[:2])[:240]
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def _load_pickle(path: Path) -> dict:
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint; {ACCEPTED}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses anyway
            warnings.simplefilter("ignore")
            try:  # memory-map zip-format files: an 8.8 GB checkpoint is not read into RAM twice
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for non-checkpoints and unsafe pickles
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint of tensors only ({torch_reason(err)}); it was refused, not "
            f"executed; {ACCEPTED}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({torch_reason(err)})") from None


def read_state_dict(path: str | os.PathLike) -> dict:
    """Read a checkpoint in any supported layout into one flat mapping (its values are checked by the caller)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        if index:
            return read_state_dict(index[0])
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise CheckpointError(f"folder {path} holds no *.safetensors shards and no *.safetensors.index.json")
        sd: dict = {}
        for shard in shards:
            sd.update(_load_safetensors(shard))
        return sd
    if path.name.endswith(".index.json"):
        return _read_index(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return _load_pickle(path)


def read_json(path: Path, what: str) -> object:
    """A small JSON file (a config or a shard index), refusing a huge or deeply nested one cleanly."""
    size = path.stat().st_size
    if size > CONFIG_BYTES:
        raise CheckpointError(f"{path} is {size} bytes; a {what} is at most {CONFIG_BYTES} bytes")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, a 5000-digit int; deep nesting
        raise CheckpointError(f"{path} is not valid JSON ({type(err).__name__}: {str(err)[:200]})") from None


def shard_path(index: Path, name: object, key: object) -> Path:
    """The file a weight_map entry names: a relative path inside the index's folder."""
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{index}: weight_map[{key!r}] is {name!r}; accepted: a shard file name (a string)")
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or os.path.isabs(name):
        raise CheckpointError(f"{index}: weight_map[{key!r}] is {name!r}; a shard must be named by a relative "
                              "path inside the index's folder, without '..'")
    return index.parent / name


def _read_index(index: Path) -> dict:
    """A Hugging Face shard index (safetensors or pickle shards): every shard it names, checked complete."""
    data = read_json(index, "shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index} is not a shard index: it needs a \"weight_map\" object "
                              "(tensor name -> shard file)")
    shards = {shard_path(index, name, key) for key, name in weight_map.items()}
    sd: dict = {}
    for path in sorted(shards):
        if not path.is_file():
            raise CheckpointError(f"shard {path} named by {index.name} is missing")
        sd.update(_load_safetensors(path) if path.suffix == ".safetensors" else _load_pickle(path))
    missing = sorted(set(weight_map) - set(sd))
    if missing:
        raise CheckpointError(f"the shards lack {len(missing)} keys their index names, e.g. {missing[:3]}")
    return sd
