"""Files in and out of a run: text embeddings, token and logit archives, PNGs, JSON, written atomically."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastvar.atomic import atomic_write_bytes


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_images(images: np.ndarray, out: str | os.PathLike, rows: Sequence[int] | None = None,
                 batch: int | None = None) -> list[Path]:
    """One PNG per image: ``out`` itself for a batch of one, ``stem_{row}.png`` beside it otherwise.

    ``rows`` names each image's row of a ``batch`` whose failed rows are left out: the names do not
    depend on which rows failed."""
    out = Path(out)
    rows = range(len(images)) if rows is None else rows
    batch = len(images) if batch is None else batch
    if batch == 1:
        return [atomic_write_bytes(out, png_bytes(img), "image") for img in images]
    return [atomic_write_bytes(out.with_name(f"{out.stem}_{row}{out.suffix or '.png'}"), png_bytes(img), f"image {row}")
            for row, img in zip(rows, images, strict=True)]


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], what: str = "") -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue(), what)


_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", (b"PK\x03\x04", b"PK\x05\x06")


def _magic(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(6)
    except OSError:
        return b""


def read_npz(path: str | os.PathLike, what: str = "") -> dict[str, np.ndarray]:
    """Every array of an .npz archive (``what``: the flag that named it), each member's header bounded first."""
    label = f"{what} {path}" if what else str(path)
    if _magic(path) == _NPY_MAGIC:
        raise ValueError(f"{label} is not a readable .npz archive: it is one .npy array (np.save); give an archive "
                         "of named arrays (np.savez), as --save-tokens writes")
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():  # each member's .npy header, bounded before numpy allocates anything
                with z.open(info) as f:
                    try:
                        _check_npy_header(f, info.file_size)
                    except ValueError as err:
                        raise ValueError(f"member {info.filename}: {err}") from None
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{label} is not a readable .npz archive ({err})") from None


def read_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """One array from a .npy file, its header's shape checked against the file's size before loading (a small
    file cannot claim a huge array); an .npz archive or a pickle is refused."""
    if _magic(path).startswith(_ZIP_MAGIC):
        raise ValueError(f"{what} {path}: not a readable .npy array: it is an .npz archive (np.savez); give one "
                         "array saved with np.save")
    try:
        with open(path, "rb") as f:
            _check_npy_header(f, os.fstat(f.fileno()).st_size)
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{what} {path}: not a readable .npy array ({err})") from None


def _check_npy_header(f, size: int) -> None:
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(f)
        readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not read here (1.0 and 2.0 are)")
        shape, _, dtype = readers[version](f)
    except ValueError as err:
        raise ValueError(f"not an .npy array: {err}") from None
    if dtype.hasobject:
        raise ValueError("it holds Python objects (pickles are never loaded)")
    want = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if want > size - f.tell():
        raise ValueError(f"its header claims shape {shape} ({want} bytes) but the file holds {size - f.tell()} "
                         "bytes of data")


def write_json(path: str | os.PathLike, obj, what: str = "") -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode(), what)


def load_text_embeddings(path: str | os.PathLike | None, batch: int, channels: int,
                         default_len: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Text encoder states (L, D) or (B, L, D) from a .npy file -> (B, L, D) float32 and lengths (B,).

    Without a file, a fixed seeded embedding stands in (the embedded default: no text encoder needed).
    """
    if path is None:
        g = torch.Generator().manual_seed(1234)
        text = torch.randn((1, default_len, channels), generator=g)
    else:
        arr = read_npy(path, "--text-embeddings")
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[-1] != channels or arr.shape[1] == 0:
            raise ValueError(
                f"--text-embeddings {path}: shape {arr.shape}; expected (L, {channels}) or (B, L, {channels}) "
                "float, the text encoder's last hidden state for the valid tokens"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"--text-embeddings {path}: dtype {arr.dtype}; expected a float array")
        text = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        bad = (~torch.isfinite(text)).nonzero()
        if len(bad):
            raise ValueError(f"--text-embeddings {path}: holds a non-finite value (NaN or infinity) at "
                             f"{tuple(bad[0].tolist())}; a NaN in the text gives a meaningless image")
    if text.shape[0] == 1 and batch > 1:
        text = text.expand(batch, -1, -1).contiguous()
    elif text.shape[0] != batch:
        raise ValueError(f"--text-embeddings holds {text.shape[0]} prompts but --batch is {batch}")
    lengths = torch.full((batch,), text.shape[1], dtype=torch.long)
    return text, lengths


def write_outputs(res, out: str, save_tokens: str | None, save_logits: str | None) -> list:
    """The image(s), and the token and logit archives when asked: every run writes them the same way.

    A failed row (``res.failed``) gets no image; the archives keep every row, the evidence of where it failed."""
    paths = write_images(res.images, out, res.rows, res.batch)
    if save_tokens:
        write_npz(save_tokens, res.tokens, "the --save-tokens archive")
    if save_logits:
        write_npz(save_logits, res.logits, "the --save-logits archive")
    return paths
