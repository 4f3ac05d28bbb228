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


def export_tiny(root: Path, schedule: str, **kw):
    from fastvar.export.artifact import ExportOptions, export

    opts = ExportOptions(model="infinity-tiny", random_init=True, res=kw.pop("res", "1024"), schedule=schedule,
                         text_len=kw.pop("text_len", 16), backend=kw.pop("backend", "onnxruntime"),
                         out=str(root), **kw)
    return export(opts, log=lambda _: None)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict[str, Path]:
    """infinity-tiny at 1024 exported once per schedule (about 45 s each on 2 cores), shared by the tests."""
    root = tmp_path_factory.mktemp("artifacts")
    out = {}
    for schedule in ("fastvar", "none"):
        export_tiny(root / schedule, schedule)
        out[schedule] = root / schedule
    return out
