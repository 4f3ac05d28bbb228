"""Parity figures as the contract defines them: teacher-forced logit error outside flipped positions,
kept-set overlap, free-running token agreement and image PSNR. Shared by the demo, validation and tests."""

from __future__ import annotations

import numpy as np


def kept_flips(ref_kept: dict[int, dict[str, np.ndarray]], got_kept: dict[int, dict[str, np.ndarray]],
               tokens: dict[int, int]) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Per pruned step: positions kept by one side and not the other in any pruned sub-layer (any row),
    and the mean kept-set overlap. Both sides name kept sets ``kept_{sub}_{block}`` (B2, K)."""
    flipped, overlap = {}, {}
    for step, want_sets in ref_kept.items():
        got_sets = got_kept.get(step, {})
        missing = sorted(set(want_sets) - set(got_sets))
        if missing:
            raise ValueError(f"step {step}: the compared run reports no kept set for {missing[:3]}")
        mask, ov = np.zeros(tokens[step], bool), []
        for name, want in want_sets.items():
            for g_row, w_row in zip(got_sets[name], want, strict=True):
                diff = np.setxor1d(g_row, w_row)
                mask[diff] = True
                ov.append(1 - len(diff) / 2 / len(w_row))
        flipped[step], overlap[step] = mask, float(np.mean(ov))
    return flipped, overlap


def logit_errors(ref: dict[str, np.ndarray], got: dict[str, np.ndarray],
                 flipped: dict[int, np.ndarray] | None = None) -> dict[str, float]:
    """Per scale: max |got - ref| over positions whose kept status did not flip, / max |ref| (the logit scale)."""
    if set(ref) != set(got):
        raise ValueError(f"different scales: {sorted(set(ref) ^ set(got))}")
    out = {}
    for key, want in ref.items():
        step = int(key.split("_")[1])
        keep = ~(flipped or {}).get(step, np.zeros(want.shape[1], bool))
        scale = max(float(np.abs(want).max()), 1e-12)
        out[key] = float(np.abs(got[key][:, keep] - want[:, keep]).max() / scale) if keep.any() else 0.0
    return out


def token_agreement(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    """Share of equal bits over every executed scale."""
    return float(np.mean([np.mean(got[k] == v) for k, v in ref.items()]))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
