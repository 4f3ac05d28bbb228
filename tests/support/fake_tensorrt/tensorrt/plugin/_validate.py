"""Signature checks of the ``tensorrt.plugin`` decorators (plugin/_validate.py of the wheel). All raise ValueError.

* ``register``: every parameter annotated, no defaults, no ``*args``; TensorDescs first, then attributes of type
  int/float/str/bool/bytes or a 1-D ``npt.NDArray[dtype]`` (no lists/tuples); attribute names ``outputs``,
  ``stream``, ``tactic`` are reserved; return ``TensorDesc`` or ``Tuple[TensorDesc, ...]``; namespaces
  "", "trt", "tensorrt", "std" are reserved and neither part may contain ".".
* ``impl``: parameters exactly ``(inputs..., a subset of the attributes in registration order, outputs, stream
  [, tactic])``; return annotation, if any, None.
* ``aot_impl``: exactly ``(inputs..., attribute subset, outputs, tactic)`` -- ``tactic`` is required -- and a
  required return annotation ``Tuple[str|bytes, str|bytes, KernelLaunchParams, SymExprs]``.
* ``autotune``: ``(inputs..., attribute subset, outputs)``, returning (a list of) AutoTuneCombination.
Annotations given on impl/aot_impl/autotune parameters must agree with the registration. Annotations are
compared with a raw ``issubclass`` where the wheel uses one, so string annotations (``from __future__ import
annotations`` in the defining module) and ``typing.List[...]`` raise TypeError exactly as with real TensorRT.
"""

from __future__ import annotations

import inspect
import types
import typing

import numpy as np

from ._autotune import AutoTuneCombination
from ._tensor import KernelLaunchParams, SymExprs, Tensor, TensorDesc

SERIALIZABLE_BUILTIN_TYPES = (int, float, bytes, bool, str)
SERIALIZABLE_NP_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, bool, np.bool_)
RESERVED_NAMESPACES = {"", "trt", "tensorrt", "std"}
DISALLOWED_ATTR_NAMES = {"outputs", "stream", "tactic"}
_EMPTY = inspect.Parameter.empty


def is_npt_ndarray(annotation) -> bool:
    return typing.get_origin(annotation) is np.ndarray or getattr(annotation, "__origin__", None) is np.ndarray


def is_numpy_array(annotation) -> bool:
    return annotation is np.ndarray or is_npt_ndarray(annotation)


def numpy_dtype_of(annotation):
    """``npt.NDArray[np.int32]`` -> np.int32."""
    args = typing.get_args(annotation)
    if len(args) >= 2 and typing.get_args(args[1]):
        return typing.get_args(args[1])[0]
    raise AttributeError("Improper annotation for numpy array. Annotate numpy array attributes using "
                         "'numpy.typing.NDArray[dtype]', where 'dtype' is the expected numpy dtype of the array.")


def validate_name_and_namespace(ns: str, name: str) -> None:
    for what, value in (("namespace", ns), ("name", name)):
        if "." in value:
            raise ValueError(f"Provided {what} {value} cannot have any '.' in "
                             f'trt.plugin.register("{ns}::{name}", ...)')
    if ns in RESERVED_NAMESPACES:
        raise ValueError(f"Provided namespace {ns} is a reserved namespace")


def _is_subclass(annotation, cls) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, cls)


def parse_register_inputs(func, lazy_register):
    """-> (tensor names, {attr: annotation}, {attr: (is_builtin, type)} for the creator's field names)."""
    sig = inspect.signature(func)
    tensor_names, input_attrs, attrs_types = [], {}, {}
    saw_attr = False
    for idx, (name, p) in enumerate(sig.parameters.items()):
        if p.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            raise ValueError(f"Argument {name} is not a positional-or-keyword or keyword-only arg")
        if p.annotation is _EMPTY:
            raise ValueError(f"Argument {name} does not have a type annotation. Please mark as TensorDesc or one of "
                             "the serializable attribute types.")
        if p.default is not _EMPTY:
            raise ValueError(f"Argument {name} has a default value. Default values are not supported yet.")
        if issubclass(p.annotation, TensorDesc):  # raw issubclass: a string annotation raises TypeError
            if saw_attr:
                raise ValueError("TensorDescs args and attribute args cannot be interspersed. Received function "
                                 f"with signature {sig}.")
            tensor_names.append(name)
            continue
        if idx == 0:
            raise ValueError(f"TensorDescs args should come first, followed by attributes. Received function with "
                             f"signature {sig}.")
        if name in DISALLOWED_ATTR_NAMES:
            raise ValueError(f"'{name}' is not allowed as a plugin attribute name.")
        if p.annotation in SERIALIZABLE_BUILTIN_TYPES:
            attrs_types[name] = (True, p.annotation)
        elif is_numpy_array(p.annotation):
            if not lazy_register:
                if p.annotation is np.ndarray:
                    raise ValueError("If using non-lazy registration, annotate numpy array attributes using "
                                     "'numpy.typing.NDArray[dtype]', where 'dtype' is the expected numpy dtype of "
                                     "the array.")
                np_dtype = numpy_dtype_of(p.annotation)
                if np_dtype not in SERIALIZABLE_NP_DTYPES:
                    raise ValueError(f"Attribute '{name}' is not a supported numpy array type. Supported numpy "
                                     f"arrays type are {SERIALIZABLE_NP_DTYPES}.")
                attrs_types[name] = (False, np_dtype)
        else:
            raise ValueError(f"Attribute '{name}' of type {p.annotation} is not a supported serializable type. "
                             f"Supported types are {SERIALIZABLE_BUILTIN_TYPES} or numpy arrays of type "
                             f"{SERIALIZABLE_NP_DTYPES}.")
        saw_attr = True
        input_attrs[name] = p.annotation
    return tensor_names, input_attrs, attrs_types


def parse_register_return(func) -> int:
    sig = inspect.signature(func)
    ret = sig.return_annotation
    if ret is _EMPTY:
        raise ValueError(f"No return annotation found for register function. Received signature {sig}.")
    bad = ValueError(f"Return argument is of type {ret}. Return types can only be TensorDesc or Tuple[TensorDesc].")
    if typing.get_origin(ret) is tuple:
        args = typing.get_args(ret)
        if not all(issubclass(a, TensorDesc) for a in args):
            raise bad
        return len(args)
    if not _is_subclass(ret, TensorDesc):
        raise bad
    return 1


def _check_params(func, plugin_def, what, tensor_cls, outputs_cls, extra):
    """Shared check of (inputs, attrs, outputs, *extra): returns the attribute names the function takes."""
    sig = inspect.signature(func)
    attr_names = []
    for name, p in sig.parameters.items():
        ann = p.annotation
        if ann is _EMPTY:
            if name in plugin_def.input_attrs:
                attr_names.append(name)
            continue
        if name == "outputs":
            if typing.get_origin(ann) is not tuple:
                raise ValueError(f"'outputs' should be of type Tuple[{outputs_cls.__name__}]. Received {ann}.")
            if not all(issubclass(a, outputs_cls) for a in typing.get_args(ann)):
                raise ValueError(f"Argument for receiving output {outputs_cls.__name__}, '{name}' contains a {ann}. "
                                 f"'{name}' should be a Tuple[{outputs_cls.__name__}].")
        elif name in ("stream", "tactic") and name in extra:
            if not issubclass(ann, int):
                raise ValueError(f"'{name}' input argument should be an int")
        elif issubclass(ann, tensor_cls):
            if name not in plugin_def.input_tensor_names:
                raise ValueError(f"Unexpected tensor '{name}' specified in {what} function. Expected one of "
                                 f"{plugin_def.input_tensor_names}.")
        else:
            if name not in plugin_def.input_attrs:
                raise ValueError(f"Unexpected attribute '{name}' specified in {what} function. Expected one of "
                                 f"{list(plugin_def.input_attrs)}.")
            if ann != plugin_def.input_attrs[name]:
                raise ValueError(f"Attribute '{name}' has a type annotation different from the one specified at "
                                 f"registration. Expected '{plugin_def.input_attrs[name]}'.")
            attr_names.append(name)
    return sig, attr_names


def _expected(plugin_def, attr_names, tail) -> str:
    attrs = [n for n in plugin_def.input_attrs if n in attr_names]
    return "(" + ", ".join(list(plugin_def.input_tensor_names) + attrs + tail) + ")"


def _actual(sig) -> str:
    return f"({', '.join(sig.parameters)})"


def validate_impl(func, plugin_def):
    """-> (attribute names, whether the impl takes ``tactic``)."""
    sig, attr_names = _check_params(func, plugin_def, "impl", Tensor, Tensor, ("stream", "tactic"))
    found_tactic = "tactic" in sig.parameters
    expected = _expected(plugin_def, attr_names, ["outputs", "stream"] + (["tactic"] if found_tactic else []))
    if _actual(sig) != expected:
        raise ValueError(f"Signature of the impl function '{sig}' does not match the expected input arg schema: "
                         f"{expected}")
    if sig.return_annotation is not _EMPTY and sig.return_annotation is not None:
        raise ValueError("Return annotation should be None.")
    return attr_names, found_tactic


def _str_or_bytes(index, arg):
    parts = typing.get_args(arg) if typing.get_origin(arg) in (typing.Union, types.UnionType) else (arg,)
    for a in parts:
        if a is not str and a is not bytes:
            raise ValueError(f"Return annotation for argument at {index} is '{a}'. Expected 'str' or 'bytes'.")


def validate_aot_impl(func, plugin_def):
    sig, attr_names = _check_params(func, plugin_def, "aot_impl", TensorDesc, TensorDesc, ("tactic",))
    expected = _expected(plugin_def, attr_names, ["outputs", "tactic"])
    if _actual(sig) != expected:
        raise ValueError(f"Signature of the aot_impl function '{sig}' does not match the expected input arg "
                         f"schema: {expected}")
    ret = sig.return_annotation
    if ret is _EMPTY:
        raise ValueError(f"No return annotation found for aot_impl function. Received signature {sig}.")
    schema = ("tuple[str | bytes, str | bytes, tensorrt.plugin.KernelLaunchParams, "
              "tensorrt.plugin.SymIntExprs]")
    args = typing.get_args(ret)
    if typing.get_origin(ret) is not tuple or len(args) != 4:
        raise ValueError(f"Return annotation is {ret}. Expected {schema}.")
    _str_or_bytes(0, args[0])
    _str_or_bytes(1, args[1])
    if not issubclass(args[2], KernelLaunchParams):
        raise ValueError(f"Argument at index 2 of return annotation is '{args[2]}'. Expected "
                         "'tensorrt.plugin.KernelLaunchParams'.")
    if not issubclass(args[3], SymExprs):
        raise ValueError(f"Argument at index 3 of return annotation is '{args[3]}'. Expected a descendent of "
                         "tensorrt.plugin.SymExprs.")
    return attr_names


def validate_autotune(func, plugin_def):
    sig, attr_names = _check_params(func, plugin_def, "autotune", TensorDesc, TensorDesc, ())
    expected = _expected(plugin_def, attr_names, ["outputs"])
    if _actual(sig) != expected:
        raise ValueError(f"Specified autotune function signature {sig} is not consistent with the expected input "
                         f"arg schema {expected}.")
    ret = sig.return_annotation
    if ret is not _EMPTY:
        ok = (all(issubclass(a, AutoTuneCombination) for a in typing.get_args(ret))
              if typing.get_origin(ret) is list else _is_subclass(ret, AutoTuneCombination))
        if not ok:
            raise ValueError(f"Return argument is of type {ret}. Return types can only be AutoTuneCombination or "
                             "List[AutoTuneCombination].")
    return attr_names
