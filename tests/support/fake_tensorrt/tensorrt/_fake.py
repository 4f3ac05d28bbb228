"""Test hooks of the fake. None of this exists in real TensorRT.

* ``set_session_factory(fn)``: ``fn(model) -> onnxruntime.InferenceSession`` runs engines from then on; ``model``
  is the ONNX the engine was built from: a file path (``str``, after ``parse_from_file``) or the serialized
  ModelProto (``bytes``, after ``parse``; external data, if any, already folded in). Use it to give ONNX Runtime
  a custom op for plugin nodes. ``None`` restores the default (a plain CPU session). Returns the previous one.
  Sessions are cached per engine and factory.
* ``executions``: the ``ICudaEngine.name`` of every successful ``execute_async_v3``/``execute_v2``, in order.
* ``read_plan(plan)``: the JSON header of a fake plan (bytes-like), e.g. to inspect the AOT kernels it embeds.
* ``reset()``: empty the plugin registry, ``tensorrt.plugin``'s definitions, ``executions`` and the factory.
"""

from __future__ import annotations

import json
import struct
import sys

PLAN_MAGIC = b"FAKETRT\x00"
executions: list[str] = []
_factory = [None]


def set_session_factory(fn):
    previous, _factory[0] = _factory[0], fn
    return previous


def session_factory():
    return _factory[0] or default_session


def default_session(model):
    """A CPU ``onnxruntime.InferenceSession`` on the model (a path or serialized bytes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def read_plan(plan) -> dict:
    """The header of a fake plan; ValueError for anything else."""
    data = memoryview(plan).tobytes()
    if data[: len(PLAN_MAGIC)] != PLAN_MAGIC:
        raise ValueError("not a fake TensorRT plan (magic tag mismatch)")
    (size,) = struct.unpack_from("<Q", data, len(PLAN_MAGIC))
    start = len(PLAN_MAGIC) + 8
    return json.loads(data[start: start + size].decode())


def write_plan(header: dict, payload: bytes | None) -> bytes:
    text = json.dumps(header, sort_keys=True).encode()
    return PLAN_MAGIC + struct.pack("<Q", len(text)) + text + (payload or b"")


def plan_payload(plan: bytes) -> bytes:
    (size,) = struct.unpack_from("<Q", plan, len(PLAN_MAGIC))
    return plan[len(PLAN_MAGIC) + 8 + size:]


def reset() -> None:
    from ._plugins import get_plugin_registry

    get_plugin_registry()._clear()
    executions.clear()
    _factory[0] = None
    lib = sys.modules.get(__package__ + ".plugin._lib")
    if lib is not None:
        lib._reset()
