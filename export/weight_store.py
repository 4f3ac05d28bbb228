"""The one weight store of an artifact: every weight the graphs bind, once, in safetensors format.

Written tensor by tensor (the 2B's 8.8 GB of fp32 weights are never copied whole in memory, and a
linear weight that graphs consume transposed is transposed one tensor at a time), atomically, and
read back by every runtime backend. The file is standard safetensors: ``safetensors.safe_open`` reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fastvar.atomic import atomic_path
from fastvar.export.models.state_dict_checks import non_finite
from fastvar.export.onnx_export import TRANSPOSED_SUFFIX

_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
              torch.int32: "I32", torch.bool: "BOOL"}
_TORCH_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


class StoreError(ValueError):
    pass


def stored_tensor(weights: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """The tensor a graph binds under ``key``: the weight itself, or its transpose for ``name.T``."""
    if key.endswith(TRANSPOSED_SUFFIX):
        return weights[key[: -len(TRANSPOSED_SUFFIX)]].detach().t()
    return weights[key].detach()


def write_store(path: str | os.PathLike, keys: Iterable[str], weights: dict[str, torch.Tensor],
                progress: Callable[[str], None] | None = None) -> tuple[int, str]:
    """Write what the graphs bind under ``keys`` (model weights, ``name.T`` transposed) to ``path``."""
    return write_tensors(path, {k: (lambda k=k: stored_tensor(weights, k)) for k in keys}, progress)


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor | Callable[[], torch.Tensor]],
                  progress: Callable[[str], None] | None = None) -> tuple[int, str]:
    """Write named tensors (or thunks producing them, one at a time) sorted by name; returns the file's size
    and sha256, hashed from the bytes as they are written (the 2B's 8.4 GB are not read back to hash)."""
    keys = sorted(tensors)

    def get(k: str) -> torch.Tensor:
        t = tensors[k]
        return (t() if callable(t) else t).detach()

    header, offset = {}, 0
    for k in keys:
        t = get(k)
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt", "writer": "fastvar-trt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    digest = hashlib.sha256()
    hashing: list[Future] = []

    def write(f, data) -> None:
        """Write, and hash on the other thread while the next tensor is made (both release the GIL)."""
        f.write(data)
        if hashing:
            hashing.pop().result()
        hashing.append(pool.submit(digest.update, data))

    with ThreadPoolExecutor(1) as pool, atomic_path(path, "the weight store") as tmp, open(tmp, "wb") as f:
        write(f, struct.pack("<Q", len(blob)))
        write(f, blob)
        for k in keys:
            t = get(k).contiguous().cpu()
            if t.numel():
                write(f, memoryview(t.view(torch.uint8).numpy()))
        hashing.pop().result()
        if progress:
            progress(f"weights: {len(keys)} tensors, {offset / 2**20:.1f} MiB")
    return Path(path).stat().st_size, digest.hexdigest()


def read_header(path: str | os.PathLike) -> dict:
    """The store's safetensors header, every entry checked (dtype, shape, offsets inside the file, size equal
    to what shape and dtype need) before any tensor is read: the header is data from a file, and a wrong one
    must be an error naming the entry, not a reshape failure or a read past the end."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise StoreError(f"{path} is truncated: no safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise StoreError(f"{path} has an implausible header size ({n} bytes): not a weight store")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):
            raise StoreError(f"{path}: unreadable safetensors header") from None
    if not isinstance(header, dict):
        raise StoreError(f"{path}: the safetensors header is a {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    size = path.stat().st_size
    for key, info in header.items():
        _check_entry(path, key, info, size - 8 - n)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end != size:
        raise StoreError(f"{path} is {size} bytes, its header describes {8 + n + end}: truncated or corrupted")
    header["__data_start__"] = 8 + n
    return header


def _is_count(v) -> bool:
    return type(v) is int and 0 <= v


def _check_entry(path: Path, key: str, info, data_bytes: int) -> None:
    """One header entry: a known dtype, a shape of non-negative ints, offsets inside the data that span exactly
    the bytes the shape needs."""
    where = f"{path}: weight {key[:120]!r}"
    if not isinstance(info, dict):
        raise StoreError(f"{where}: its header entry is a {type(info).__name__}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _TORCH_DTYPES:
        raise StoreError(f"{where}: dtype {str(dtype)[:40]!r}; accepted: {', '.join(sorted(_TORCH_DTYPES))}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(_is_count(d) for d in shape):
        raise StoreError(f"{where}: shape {str(shape)[:80]} is not a list of at most 8 non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1] <= data_bytes):
        raise StoreError(f"{where}: data_offsets {str(offsets)[:80]} are not [start, end] inside the file's "
                         f"{data_bytes} data bytes")
    need = int(np.prod(shape, dtype=object)) * _TORCH_DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != need:
        raise StoreError(f"{where}: {offsets[1] - offsets[0]} bytes stored, its shape {shape} of {dtype} needs {need}")


def read_store(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Load tensors (all, or ``keys``) into memory once; CPU tensors that backends share."""
    return dict(iter_store(path, keys))


def iter_store(path: str | os.PathLike, keys: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors (all, or ``keys``) one at a time, each read when asked for: a backend that moves them to a GPU
    stages one tensor on the host at a time, not the whole store."""
    header = read_header(path)
    start = header.pop("__data_start__")
    wanted = list(header) if keys is None else list(keys)
    missing = [k for k in wanted if k not in header]
    if missing:
        raise StoreError(f"{path} lacks weights the graphs bind: {missing[:5]}{' …' if len(missing) > 5 else ''}")
    with open(path, "rb") as f:
        for k in wanted:
            info = header[k]
            a, b = info["data_offsets"]
            f.seek(start + a)
            buf = np.fromfile(f, dtype=np.uint8, count=b - a)
            dtype = _TORCH_DTYPES[info["dtype"]]
            t = torch.from_numpy(buf).view(dtype).reshape(info["shape"])
            _check_finite(path, k, t)
            yield k, t


def _check_finite(path: str | os.PathLike, key: str, t: torch.Tensor) -> None:
    """Refuse a stored weight holding NaN or infinity, as it is loaded. Export refuses such checkpoints, so
    only an artifact exported by an older version (its hashes intact) can hold one: without this it would
    run and write a meaningless image."""
    if (counts := non_finite(t)) is not None:
        raise StoreError(f"{path}: weight {key!r} holds non-finite values ({counts}); the artifact was exported "
                         "from a damaged checkpoint: re-export it from one whose weights are finite")
