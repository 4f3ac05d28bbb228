"""Rows that went non-finite during a generation: flagged on the device, read once after the loop.

A NaN or infinity in what a row samples from (its CFG-mixed logits, HART's diffusion residual) or decodes
makes that row's image meaningless, yet sampling turns it into valid tokens and the decoder into a PNG.
The flags are tensor ops only, so the loop never waits on the host (a per-step ``.item()`` would stall the
device queue at every scale); rows of a batch are independent, so a bad row fails only its own image
(a server batches strangers' prompts together).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["NonFiniteRows", "RowFlags", "non_finite_rows", "failed_records", "failure_lines", "raise_for_failed_rows"]


def non_finite_rows(values: torch.Tensor) -> torch.Tensor:
    """(B,) bool on the device: which rows of batch-major ``values`` hold a NaN or infinity."""
    return ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)


class RowFlags:
    """Per row, the first check that saw a non-finite value; kept as a (B,) int64 tensor on the device."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.places: list[str] = []  # what each check looked at, in order: the code the flag tensor holds
        self.first: torch.Tensor | None = None  # (B,) index into places, -1 while the row is finite

    def check(self, place: str, values: torch.Tensor) -> None:
        """Flag the rows of ``values`` (batch-major) holding a NaN or infinity, unless already flagged."""
        if values.shape[0] != self.batch:
            raise RuntimeError(f"{place}: {values.shape[0]} rows, the batch has {self.batch}")
        code = len(self.places)
        self.places.append(place)
        bad = non_finite_rows(values)
        if self.first is None:
            self.first = torch.full((self.batch,), -1, dtype=torch.int64, device=values.device)
        self.first = self.first.masked_fill(bad.to(self.first.device) & (self.first < 0), code)

    def read(self) -> dict[int, str]:
        """Row -> where it first went non-finite. The one host synchronisation: call it after the loop."""
        if self.first is None:
            return {}
        return {row: self.places[code] for row, code in enumerate(self.first.tolist()) if code >= 0}


def failure_lines(failed: dict[int, str], seeds: Sequence[int], outcome: str = "a generation needing every image "
                  "fails") -> list[str]:
    """One message per failed row: the image index, its seed, where it first went non-finite, and ``outcome``."""
    return [f"image {row} (seed {seeds[row]}): NaN or infinity first in {place}; {outcome} (an extreme --cfg, "
            "text embedding or weight overflows the model's arithmetic)" for row, place in sorted(failed.items())]


class NonFiniteRows(ValueError):
    """Rows of a generation went non-finite: one line per row; ``written`` lists the good rows' files."""

    def __init__(self, lines: list[str], written: Sequence[object] = ()) -> None:
        super().__init__("\n".join(lines))
        self.lines, self.written = lines, list(written)


def failed_records(failed: dict[int, str], seeds: Sequence[int]) -> list[dict]:
    """The failed rows for a run's timings report (JSON)."""
    return [{"image": row, "seed": seeds[row], "first_non_finite": place} for row, place in sorted(failed.items())]


def raise_for_failed_rows(failed: dict[int, str], seeds: Sequence[int], written: Sequence[object]) -> None:
    """End a run whose rows failed with an error, once the good rows' images and the archives are written."""
    if failed:
        raise NonFiniteRows(failure_lines(failed, seeds, "no image is written for it"), written)
