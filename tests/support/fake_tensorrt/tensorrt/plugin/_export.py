"""``public_api``: publish a definition as ``tensorrt.plugin.<name>`` (plugin/_export.py of the wheel)."""

from __future__ import annotations

import importlib

import tensorrt as trt


def public_api(module=None, symbol=None):
    def export(obj):
        mod = module or importlib.import_module(__package__)
        name = symbol or obj.__name__
        mod.__dict__.setdefault("__all__", []).append(name)
        setattr(mod, name, obj)
        return obj

    return export


IS_AOT_ENABLED = hasattr(trt, "QuickPluginCreationRequest")
