"""Checks on a state dict read from a user's file, made before its numbers size anything.

A loaded state dict is untrusted: every entry must be a named tensor no larger than the data stored for it,
every shape is checked for rank before it is indexed, every dimension read off it is bounded
(``limits``), a set of block indices must be exactly 0..n-1, and every weight that is loaded must be
finite. Each failure is a ``CheckpointError`` naming the file and the key or field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from fastvar.export.models.limits import Bound


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the reason and what is accepted."""


def tensor_entries(sd: Mapping, source: str) -> dict[str, torch.Tensor]:
    """``sd`` as a dict of named tensors, refusing other values and tensors larger than their data.

    A pickle can describe a tensor of any shape over a one-element storage (stride 0): its dimensions would
    then size the model, and converting it would allocate all of it."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{source}: key {k!r} is of type {type(k).__name__}, not a string "
                                  "(not a state dict)")
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{source}: entry {k!r} is of type {type(v).__name__}, not a tensor "
                                  "(not a state dict)")
        if v.layout != torch.strided or v.device.type != "cpu" or v.is_complex():
            raise CheckpointError(f"{source}: tensor {k!r} is a {v.layout} {v.dtype} tensor on {v.device.type}; "
                                  "accepted: dense tensors of real numbers with their data in the file")
        if v.numel() and v.numel() * v.element_size() > v.untyped_storage().nbytes():
            raise CheckpointError(f"{source}: tensor {k!r} of shape {tuple(v.shape)} claims more elements than "
                                  f"its {v.untyped_storage().nbytes()} stored bytes (an expanded or overlapping "
                                  "view, not a weight)")
        out[k] = v
    return out


def dim(sd: Mapping[str, torch.Tensor], key: str, rank: int, axis: int, bound: Bound, field: str,
        source: str) -> int:
    """Dimension ``axis`` of ``sd[key]``, which must have ``rank`` dimensions, as the bounded ``field``."""
    t = sd[key]
    if t.ndim != rank:
        raise CheckpointError(f"{source}: {key} has shape {tuple(t.shape)}; a {rank}-d tensor is expected "
                              f"(it gives the {field})")
    n = int(t.shape[axis])
    if not bound.holds(n):
        raise CheckpointError(f"{source}: {key} of shape {tuple(t.shape)} gives {field} {n}; accepted: "
                              f"{bound.accepted()}")
    return n


def indices(keys: Iterable[str], pattern: re.Pattern, group: int = 1) -> set[int]:
    """The integers a numbered key family uses (``blocks.(\\d+).``), as a set."""
    return {int(m.group(group)) for k in keys if (m := pattern.match(k))}


def count_of(found: set[int], bound: Bound, field: str, what: str, source: str) -> int:
    """How many of ``what`` there are, given the indices present: exactly 0..n-1, with n bounded."""
    n = len(found)
    if not found or max(found) != n - 1:  # n distinct non-negative integers up to n-1 are exactly 0..n-1
        absent = [i for i in range(n + 5) if i not in found][:5]  # never sized by the largest index
        raise CheckpointError(f"{source}: {what} indices must be exactly 0..n-1; found {_summary(found)}"
                              + (f" (absent: {', '.join(map(str, absent))}, ...)" if found else ""))
    if not bound.holds(n):
        raise CheckpointError(f"{source}: {n} {what} give {field} {n}; accepted: {bound.accepted()}")
    return n


def expect_count(found: set[int], want: int, field: str, what: str, source: str) -> None:
    """A config's count (``depth``, already bounded) against the indices its weights use, before anything is
    built from it."""
    if len(found) != want or (found and max(found) != want - 1):
        raise CheckpointError(f"{source}: {field} is {want}, but the weights hold {what} {_summary(found)} "
                              f"(expected 0..{want - 1})")


def expect_dim(sd: Mapping[str, torch.Tensor], key: str, axis: int, want: int, field: str, source: str) -> None:
    """A config's dimension against the tensor that carries it (absent keys are left to the strict check)."""
    t = sd.get(key)
    if t is None:
        return
    if t.ndim <= axis or t.shape[axis] != want:
        raise CheckpointError(f"{source}: {field} is {want}, but {key} has shape {tuple(t.shape)} "
                              f"(dimension {axis} should be {want})")


def _summary(found: set[int]) -> str:
    s = sorted(found)
    if not s:
        return "none"
    if s[-1] - s[0] + 1 == len(s):
        return f"{s[0]}..{s[-1]}"
    return ", ".join(map(str, s[:8])) + (f", ... ({len(s)} in all, up to {s[-1]})" if len(s) > 8 else "")


def non_finite(t: torch.Tensor) -> str | None:
    """How many NaN and infinite values a floating-point tensor holds, as words; None when all are finite.
    The one test of a weight's values, for checkpoints and for an artifact's weight store alike."""
    if not t.is_floating_point() or bool(torch.isfinite(t).all()):
        return None
    return f"{int(torch.isnan(t).sum())} NaN, {int(torch.isinf(t).sum())} infinite of {t.numel()}"


def check_finite(key: str, t: torch.Tensor, source: str) -> None:
    """Refuse a weight holding NaN or infinity: it would give a meaningless image, not an error."""
    if (counts := non_finite(t)) is not None:
        raise CheckpointError(f"{source}: tensor {key!r} holds non-finite values ({counts}); the checkpoint is "
                              "damaged or was saved from a diverged run")
