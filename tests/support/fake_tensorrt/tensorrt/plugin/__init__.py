"""The fake ``tensorrt.plugin`` ("Quickly Deployable Plugins"), after python/packaging/bindings_wheel/tensorrt/plugin.

Public names are those the wheel publishes with ``public_api``. Importing it logs the wheel's WARNING that the
module is experimental.
"""

import tensorrt as trt

from . import _autotune, _lib, _tensor, _top_level  # noqa: F401 - importing publishes the public names

trt.Logger().log(trt.Logger.WARNING, "Functionality provided through tensorrt.plugin module is experimental.")
