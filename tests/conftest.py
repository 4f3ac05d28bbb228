"""Shared fixtures: the upstream-written checkpoint pair and small random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("FASTVAR_FIXTURES", REPO.parent / "shared" / "fixtures"))
OFFICIAL = FIXTURES / "infinity-official-d16w64"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def official_dir() -> Path:
    if not (OFFICIAL / "infinity.pth").exists():
        pytest.skip(f"the upstream-written fixture is not at {OFFICIAL} (set FASTVAR_FIXTURES to the folder)")
    return OFFICIAL


@pytest.fixture(scope="session")
def official_pair(official_dir):
    from fastvar.export.models.checkpoint import load_infinity, load_vae

    vae = load_vae(official_dir / "vae.pth")
    return load_infinity(official_dir / "infinity.pth", vae.cfg), vae
