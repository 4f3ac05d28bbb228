"""FastVARRestore: area-upsample a cached token map and scatter the freshly computed tokens into it.

Importing the package needs only torch. The ONNX schema/translation (``.onnx_op``) and the ONNX Runtime
kernel (``.ort_op``) are separate modules because they import onnx, onnxscript and onnxruntime.
"""

from .reference import area_upsample, restore_add_reference, restore_reference
from .torch_op import area_matrix, restore_add_custom, restore_custom, restore_standard

__all__ = ["area_matrix", "area_upsample", "restore_add_custom", "restore_add_reference", "restore_custom",
           "restore_reference", "restore_standard"]
