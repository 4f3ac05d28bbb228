"""Attribute <-> PluginField conversions of ``tensorrt.plugin`` (plugin/_utils.py and _lib.py of the wheel)."""

from __future__ import annotations

import numpy as np

import tensorrt as trt

NUMPY_TO_FIELD = {np.dtype("int32"): trt.PluginFieldType.INT32, np.dtype("int16"): trt.PluginFieldType.INT16,
                  np.dtype("int8"): trt.PluginFieldType.INT8, np.dtype("bool"): trt.PluginFieldType.INT8,
                  np.dtype("int64"): trt.PluginFieldType.INT64, np.dtype("float32"): trt.PluginFieldType.FLOAT32,
                  np.dtype("float64"): trt.PluginFieldType.FLOAT64, np.dtype("float16"): trt.PluginFieldType.FLOAT16}
BUILTIN_TO_FIELD = {int: trt.PluginFieldType.INT64, float: trt.PluginFieldType.FLOAT64,
                    bool: trt.PluginFieldType.INT8}


def field_for(name, value):
    """The PluginField that carries attribute ``value`` (float16 arrays go as raw bytes)."""
    if isinstance(value, np.ndarray):
        if value.dtype == np.float16:
            return trt.PluginField(name, value.tobytes(), trt.PluginFieldType.UNKNOWN)
        return trt.PluginField(name, value, NUMPY_TO_FIELD[np.dtype(value.dtype)])
    if isinstance(value, str):
        return trt.PluginField(name, value.encode(), trt.PluginFieldType.CHAR)
    if isinstance(value, bytes):
        return trt.PluginField(name, value, trt.PluginFieldType.UNKNOWN)
    return trt.PluginField(name, np.array([value]), BUILTIN_TO_FIELD[type(value)])
