"""Shared fixtures: the upstream-written checkpoint pair and small random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("FASTVAR_FIXTURES", REPO.parent / "shared" / "fixtures"))
OFFICIAL = FIXTURES / "infinity-official-d16w64"

# pytest-xdist workers (the README's command runs one per core) share the cores: each takes its part.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


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


FAKE_TENSORRT = Path(__file__).resolve().parent / "support" / "fake_tensorrt"


@pytest.fixture
def fake_tensorrt():
    """The CPU fake of ``tensorrt`` (tests/support/fake_tensorrt), freshly imported and isolated per test.

    Puts tests/support/fake_tensorrt first on sys.path, hides any imported ``tensorrt*`` modules, imports the fake
    and yields it; afterwards empties its plugin registry and restores sys.path and sys.modules. A module that imported
    ``tensorrt`` at its top keeps the object it got: import it inside the test, after this fixture.
    """
    import importlib
    import sys

    def ours(name: str) -> bool:
        return name == "tensorrt" or name.startswith("tensorrt.")

    saved_path = list(sys.path)
    saved_modules = {name: sys.modules.pop(name) for name in list(sys.modules) if ours(name)}
    sys.path.insert(0, str(FAKE_TENSORRT))
    importlib.invalidate_caches()
    trt = None
    try:
        trt = importlib.import_module("tensorrt")
        assert Path(trt.__file__).resolve().is_relative_to(FAKE_TENSORRT), trt.__file__
        yield trt
    finally:
        if trt is not None and hasattr(trt, "_fake"):
            trt._fake.reset()
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path
        importlib.invalidate_caches()


def ort_with_restore(model):
    """An ONNX Runtime session for a graph (path or bytes) whose FastVARRestore(Add) nodes run as the ORT
    custom op: the session factory the fake ``tensorrt`` runs plugin engines with."""
    import onnx
    import onnxruntime as ort

    from fastvar.plugins.restore.ort_op import for_onnxruntime, session_options

    proto = onnx.load(model) if isinstance(model, str) else onnx.load_from_string(model)
    return ort.InferenceSession(for_onnxruntime(proto).SerializeToString(), session_options(ort.SessionOptions()),
                                providers=["CPUExecutionProvider"])


def build_fake_engines(root: Path, **kw) -> tuple[dict, list[str]]:
    """fastvar-build for an sm_90 GPU (the fake ``tensorrt`` must be imported): the engine records and the log."""
    from fastvar.builder.engine_builder import BuildOptions, build_engines

    lines: list[str] = []
    engines = build_engines(root, BuildOptions(compute_capability="9.0", **kw), log=lines.append)
    return engines, lines
