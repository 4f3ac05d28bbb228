"""Test hooks of the fake; none of this exists in real TensorRT (see ../README.md).

* ``set_session_factory(fn)``: ``fn(model) -> onnxruntime.InferenceSession`` runs engines from then on (``model``:
  the ONNX file path after ``parse_from_file``, or the ModelProto bytes after ``parse``); ``None`` restores a plain
  CPU session. Returns the previous factory. Sessions are cached per engine and factory.
* ``executions``: the ``ICudaEngine.name`` of every successful ``execute_async_v3``, in order.
* ``read_plan(plan)``: the JSON header of a fake plan.
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
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def read_plan(plan) -> dict:
    """The header of a fake plan (bytes-like); ValueError for anything else."""
    data = memoryview(plan).tobytes()
    if not data.startswith(PLAN_MAGIC):
        raise ValueError("not a fake TensorRT plan (magic tag mismatch)")
    (size,) = struct.unpack_from("<Q", data, len(PLAN_MAGIC))
    return json.loads(data[len(PLAN_MAGIC) + 8: len(PLAN_MAGIC) + 8 + size].decode())


def write_plan(header: dict, payload: bytes | None) -> bytes:
    text = json.dumps(header, sort_keys=True).encode()
    return PLAN_MAGIC + struct.pack("<Q", len(text)) + text + (payload or b"")


def plan_payload(plan: bytes) -> bytes:
    (size,) = struct.unpack_from("<Q", plan, len(PLAN_MAGIC))
    return plan[len(PLAN_MAGIC) + 8 + size:]


def reset() -> None:
    from ._plugins import get_plugin_registry

    get_plugin_registry()._creators.clear()
    executions.clear()
    _factory[0] = None
    plugin = sys.modules.get(__package__ + ".plugin")
    if plugin is not None:
        plugin._reset()
