"""The fake ``tensorrt.plugin`` ("quickly deployable plugins"), after the wheel's tensorrt/plugin/{_lib,_validate,
_plugin_class,_utils}.py: ``register``/``impl``/``aot_impl``, their signature checks, the creator they register and
the plugins it makes. Its sharp edges (raw ``issubclass`` on annotations, ``int(array)`` attributes, ``aot_impl``
taking every attribute, ``SymInt32`` extra arguments) are the wheel's: ../../README.md lists them.
"""

import inspect
import types
import typing
from types import SimpleNamespace

import numpy as np

import tensorrt as trt

from ._tensor import (
    KernelLaunchParams,
    Shape,
    ShapeExpr,
    ShapeExprs,
    SymExpr,
    SymExprs,
    SymInt32,
    SymIntExpr,
    SymIntExprs,
    Tensor,
    TensorDesc,
    cdiv,
    from_shape_expr,
)

__all__ = ["KernelLaunchParams", "Shape", "ShapeExpr", "ShapeExprs", "SymExpr", "SymExprs", "SymInt32", "SymIntExpr",
           "SymIntExprs", "Tensor", "TensorDesc", "aot_impl", "cdiv", "from_shape_expr", "impl", "op", "register"]

trt.Logger().log(trt.Logger.WARNING, "Functionality provided through tensorrt.plugin module is experimental.")

SERIALIZABLE_BUILTIN_TYPES = (int, float, bytes, bool, str)
SERIALIZABLE_NP_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, bool, np.bool_)
NUMPY_TO_FIELD = {np.dtype("int32"): trt.PluginFieldType.INT32, np.dtype("int16"): trt.PluginFieldType.INT16,
                  np.dtype("int8"): trt.PluginFieldType.INT8, np.dtype("bool"): trt.PluginFieldType.INT8,
                  np.dtype("int64"): trt.PluginFieldType.INT64, np.dtype("float32"): trt.PluginFieldType.FLOAT32,
                  np.dtype("float64"): trt.PluginFieldType.FLOAT64, np.dtype("float16"): trt.PluginFieldType.FLOAT16}
BUILTIN_TO_FIELD = {int: trt.PluginFieldType.INT64, float: trt.PluginFieldType.FLOAT64,
                    bool: trt.PluginFieldType.INT8, str: trt.PluginFieldType.CHAR, bytes: trt.PluginFieldType.UNKNOWN}
_EMPTY = inspect.Parameter.empty
op = SimpleNamespace()  # tensorrt.plugin.op.<namespace>.<name>: the PluginDef of each registered plugin
QDP_REGISTRY: dict = {}


class PluginDef:
    """A registered plugin: its functions and signature."""

    def __init__(self, plugin_id, register_func, tensor_names, input_attrs, num_outputs):
        self.plugin_id, self.register_func, self.num_outputs = plugin_id, register_func, num_outputs
        self.input_tensor_names, self.input_attrs = tensor_names, input_attrs
        self.impl_func = self.aot_impl_func = self.impl_attr_names = self.aot_impl_attr_names = None
        self.expects_tactic = None


def _numpy_dtype(annotation):
    """``npt.NDArray[np.int32]`` -> np.int32; None for anything else."""
    if annotation is not np.ndarray and typing.get_origin(annotation) is not np.ndarray:
        return None
    args = typing.get_args(annotation)
    if len(args) >= 2 and typing.get_args(args[1]):
        return typing.get_args(args[1])[0]
    raise ValueError("If using non-lazy registration, annotate numpy array attributes using 'numpy.typing.NDArray"
                     "[dtype]', where 'dtype' is the expected numpy dtype of the array.")


def _parse_register(func, lazy_register):
    """-> (tensor names, {attr: annotation}, {attr: field type}, number of outputs)."""
    sig = inspect.signature(func)
    tensor_names, input_attrs, field_types = [], {}, {}
    for idx, (name, p) in enumerate(sig.parameters.items()):
        if p.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            raise ValueError(f"Argument {name} is not a positional-or-keyword or keyword-only arg")
        if p.annotation is _EMPTY:
            raise ValueError(f"Argument {name} does not have a type annotation. Please mark as TensorDesc or one of "
                             "the serializable attribute types.")
        if p.default is not _EMPTY:
            raise ValueError(f"Argument {name} has a default value. Default values are not supported yet.")
        if issubclass(p.annotation, TensorDesc):  # raw issubclass: a string annotation raises TypeError
            if input_attrs:
                raise ValueError(f"TensorDescs args and attribute args cannot be interspersed. Received function "
                                 f"with signature {sig}.")
            tensor_names.append(name)
            continue
        if idx == 0:
            raise ValueError(f"TensorDescs args should come first, followed by attributes. Received function with "
                             f"signature {sig}.")
        if name in ("outputs", "stream", "tactic"):
            raise ValueError(f"'{name}' is not allowed as a plugin attribute name.")
        if p.annotation in SERIALIZABLE_BUILTIN_TYPES:
            field_types[name] = BUILTIN_TO_FIELD[p.annotation]
        elif p.annotation is np.ndarray or typing.get_origin(p.annotation) is np.ndarray:
            if not lazy_register:
                np_dtype = _numpy_dtype(p.annotation)
                if np_dtype not in SERIALIZABLE_NP_DTYPES:
                    raise ValueError(f"Attribute '{name}' is not a supported numpy array type. Supported numpy "
                                     f"arrays type are {SERIALIZABLE_NP_DTYPES}.")
                field_types[name] = NUMPY_TO_FIELD[np.dtype(np_dtype)]
        else:
            raise ValueError(f"Attribute '{name}' of type {p.annotation} is not a supported serializable type. "
                             f"Supported types are {SERIALIZABLE_BUILTIN_TYPES} or numpy arrays of type "
                             f"{SERIALIZABLE_NP_DTYPES}.")
        input_attrs[name] = p.annotation
    ret = sig.return_annotation
    if ret is _EMPTY:
        raise ValueError(f"No return annotation found for register function. Received signature {sig}.")
    outs = typing.get_args(ret) if typing.get_origin(ret) is tuple else (ret,)
    if not all(inspect.isclass(a) and issubclass(a, TensorDesc) for a in outs):
        raise ValueError(f"Return argument is of type {ret}. Return types can only be TensorDesc or Tuple[TensorDesc].")
    return tensor_names, input_attrs, field_types, len(outs)


def _check_signature(func, plugin_def, what, tensor_cls, tail):
    """``(inputs..., a subset of the attributes in registration order, *tail)``, annotations agreeing with the
    registration; returns the attribute names the function takes."""
    sig = inspect.signature(func)
    attr_names = []
    for name, p in sig.parameters.items():
        ann = p.annotation
        if ann is _EMPTY:
            attr_names += [name] if name in plugin_def.input_attrs else []
        elif name == "outputs":
            if typing.get_origin(ann) is not tuple or not all(issubclass(a, tensor_cls) for a in typing.get_args(ann)):
                raise ValueError(f"'outputs' should be of type Tuple[{tensor_cls.__name__}]. Received {ann}.")
        elif name in ("stream", "tactic") and name in tail:
            if not issubclass(ann, int):
                raise ValueError(f"'{name}' input argument should be an int")
        elif issubclass(ann, tensor_cls):
            if name not in plugin_def.input_tensor_names:
                raise ValueError(f"Unexpected tensor '{name}' specified in {what} function. Expected one of "
                                 f"{plugin_def.input_tensor_names}.")
        elif name not in plugin_def.input_attrs:
            raise ValueError(f"Unexpected attribute '{name}' specified in {what} function. Expected one of "
                             f"{list(plugin_def.input_attrs)}.")
        elif ann != plugin_def.input_attrs[name]:
            raise ValueError(f"Attribute '{name}' has a type annotation different from the one specified at "
                             f"registration. Expected '{plugin_def.input_attrs[name]}'.")
        else:
            attr_names.append(name)
    attrs = [n for n in plugin_def.input_attrs if n in attr_names]
    expected = "(" + ", ".join([*plugin_def.input_tensor_names, *attrs, *tail]) + ")"
    if f"({', '.join(sig.parameters)})" != expected:
        raise ValueError(f"Signature of the {what} function '{sig}' does not match the expected input arg schema: "
                         f"{expected}")
    return sig, attr_names


def _definition(plugin_id) -> PluginDef:
    if plugin_id not in QDP_REGISTRY:
        raise ValueError(f"Plugin {plugin_id} is not registered. Did you register it with tensorrt.plugin.register "
                         "API?")
    return QDP_REGISTRY[plugin_id]


def register(plugin_id: str, lazy_register: bool = False):
    """Decorator: the plugin's outputs from ``(inputs: TensorDesc..., attrs...) -> TensorDesc | Tuple``. Unless
    ``lazy_register``, registers a creator with version "1", namespace ``ns`` and one field per attribute."""

    def decorator(register_func):
        ns, name = plugin_id.split("::")
        for what, value in (("namespace", ns), ("name", name)):
            if "." in value:
                raise ValueError(f'Provided {what} {value} cannot have any \'.\' in trt.plugin.register("{ns}::'
                                 f'{name}", ...)')
        if ns in ("", "trt", "tensorrt", "std"):
            raise ValueError(f"Provided namespace {ns} is a reserved namespace")
        namespace = op.__dict__.setdefault(ns, SimpleNamespace())
        if hasattr(namespace, name):
            raise ValueError(f"'_Op' already has a defintion for '{name}'")
        tensor_names, input_attrs, field_types, num_outputs = _parse_register(register_func, lazy_register)
        QDP_REGISTRY[plugin_id] = plugin_def = PluginDef(plugin_id, register_func, tensor_names, input_attrs,
                                                         num_outputs)
        if not lazy_register:
            trt.get_plugin_registry().register_creator(_TemplatePluginCreator(name, ns, field_types), ns)
        setattr(namespace, name, plugin_def)
        return register_func

    return decorator


def impl(plugin_id: str):
    """Decorator: the JIT implementation ``(inputs: Tensor..., attrs..., outputs, stream[, tactic]) -> None``."""

    def decorator(impl_func):
        plugin_def = _definition(plugin_id)
        tactic = ["tactic"] if "tactic" in inspect.signature(impl_func).parameters else []
        sig, plugin_def.impl_attr_names = _check_signature(impl_func, plugin_def, "impl", Tensor,
                                                           ["outputs", "stream", *tactic])
        if sig.return_annotation not in (_EMPTY, None):
            raise ValueError("Return annotation should be None.")
        plugin_def.expects_tactic, plugin_def.impl_func = bool(tactic), impl_func
        return impl_func

    return decorator


def _str_or_bytes(index, arg):
    for a in typing.get_args(arg) if typing.get_origin(arg) in (typing.Union, types.UnionType) else (arg,):
        if a is not str and a is not bytes:
            raise ValueError(f"Return annotation for argument at {index} is '{a}'. Expected 'str' or 'bytes'.")


def aot_impl(plugin_id: str):
    """Decorator: the AOT implementation ``(inputs: TensorDesc..., attrs..., outputs, tactic) ->
    (kernel_name, ptx, KernelLaunchParams, SymExprs)``."""

    def decorator(aot_impl_func):
        plugin_def = _definition(plugin_id)
        sig, attr_names = _check_signature(aot_impl_func, plugin_def, "aot_impl", TensorDesc, ["outputs", "tactic"])
        ret = sig.return_annotation
        if ret is _EMPTY:
            raise ValueError(f"No return annotation found for aot_impl function. Received signature {sig}.")
        args = typing.get_args(ret)
        if typing.get_origin(ret) is not tuple or len(args) != 4:
            raise ValueError(f"Return annotation is {ret}. Expected tuple[str | bytes, str | bytes, "
                             "tensorrt.plugin.KernelLaunchParams, tensorrt.plugin.SymIntExprs].")
        _str_or_bytes(0, args[0])
        _str_or_bytes(1, args[1])
        if not issubclass(args[2], KernelLaunchParams):
            raise ValueError(f"Argument at index 2 of return annotation is '{args[2]}'. Expected "
                             "'tensorrt.plugin.KernelLaunchParams'.")
        if not issubclass(args[3], SymExprs):
            raise ValueError(f"Argument at index 3 of return annotation is '{args[3]}'. Expected a descendent of "
                             "tensorrt.plugin.SymExprs.")
        plugin_def.aot_impl_attr_names, plugin_def.aot_impl_func = attr_names, aot_impl_func
        return aot_impl_func

    return decorator


class _TemplatePluginCreator(trt.IPluginCreatorV3Quick):
    def __init__(self, name, namespace, field_types):
        trt.IPluginCreatorV3Quick.__init__(self)
        self.name, self.plugin_namespace, self.plugin_version = name, namespace, "1"
        self.field_names = trt.PluginFieldCollection(
            trt.PluginField(attr, b"" if t in (trt.PluginFieldType.CHAR, trt.PluginFieldType.UNKNOWN)
                            else np.array([]), t) for attr, t in field_types.items())

    def create_plugin(self, name, namespace, fc, phase, qpcr=None):
        desc = QDP_REGISTRY[f"{namespace}::{name}"]
        attrs = {}
        for f in fc:
            if f.name not in desc.input_attrs:
                raise AssertionError(f"Unexpected attribute {f.name} provided to create_plugin. Expected one of "
                                     f"{desc.input_attrs.keys()}.")
            annotation = desc.input_attrs[f.name]
            np_type = _numpy_dtype(annotation)
            if np_type is np.float16:
                attrs[f.name] = np.frombuffer(f.data.tobytes(), dtype=np.float16)
            elif np_type is not None:
                attrs[f.name] = f.data.astype(np_type)
            elif issubclass(annotation, str):
                attrs[f.name] = f.data.tobytes().decode("utf-8")
            else:
                attrs[f.name] = annotation(f.data)  # int(array): NumPy >= 2.4 refuses a 1-element array
        if self._jit(desc, qpcr):
            return _TemplateJITPlugin(name, namespace, desc, attrs)
        return _TemplateAOTPlugin(name, namespace, desc, attrs)

    @staticmethod
    def _jit(desc, qpcr) -> bool:
        Q = trt.QuickPluginCreationRequest  # noqa: N806
        aot, jit = desc.aot_impl_func is not None, desc.impl_func is not None
        if qpcr is None:
            return True
        if qpcr == Q.STRICT_AOT and not aot:
            raise ValueError(f"AOT implementation requested, but not defined for '{desc.plugin_id}'. Was "
                             "@trt.plugin.aot_impl defined?")
        if qpcr == Q.STRICT_JIT and not jit:
            raise ValueError(f"JIT implementation requested, but not defined for '{desc.plugin_id}'. Was "
                             "@trt.plugin.impl defined?")
        if qpcr in (Q.STRICT_AOT, Q.STRICT_JIT):
            return qpcr == Q.STRICT_JIT
        if aot and jit and qpcr not in (Q.PREFER_AOT, Q.PREFER_JIT):
            raise ValueError(f"Plugin '{desc.plugin_id}' has both AOT and JIT implementations. "
                             "NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS or "
                             "NetworkDefinitionCreationFlag.PREFER_JIT_PYTHON_PLUGINS should be specified.")
        if not (aot or jit):
            raise ValueError(f"Plugin '{desc.plugin_id}' does not have either a AOT or JIT implementation.")
        return qpcr == Q.PREFER_JIT if aot and jit else jit


def _frozen(shape_expr, dtype) -> TensorDesc:
    d = TensorDesc(shape_expr, dtype)
    d._immutable = True
    return d


class _TemplatePluginBase(trt.IPluginV3, trt.IPluginV3QuickCore, trt.IPluginV3QuickBuild):
    """TensorRT calls ``get_output_data_types`` (the register function sees fake ShapeExprs), then
    ``get_output_shapes`` (real expressions), then ``set_tactic`` and the build callbacks."""

    def __init__(self, name, namespace, desc, attrs):
        self.plugin_name, self.plugin_namespace, self.plugin_version = name, namespace, "1"
        self.desc, self.attrs, self._tactic = desc, attrs, 0

    def get_output_data_types(self, input_types, ranks):
        self.input_types = input_types
        outs = self.desc.register_func(*(_frozen(ShapeExprs(r, _is_dummy=True), t) for t, r in
                                         zip(input_types, ranks, strict=True)), **self.attrs)
        return [o.dtype for o in (outs if isinstance(outs, tuple) else (outs,))]

    def get_output_shapes(self, inputs, shape_inputs, exprBuilder):  # noqa: N803 - TensorRT's name
        SymIntExpr._exprBuilder = exprBuilder
        try:
            self.input_descs = [_frozen(ShapeExprs.from_tuple([ShapeExpr(e) for e in dims]), t)
                                for t, dims in zip(self.input_types, inputs, strict=True)]
            outs = self.desc.register_func(*self.input_descs, **self.attrs)
            self.output_descs = outs if isinstance(outs, tuple) else (outs,)
            return [trt.DimsExprs(e._expr for e in d.shape_expr) for d in self.output_descs]
        finally:
            SymIntExpr._exprBuilder = None

    def set_tactic(self, tactic):
        self._tactic = tactic


class _TemplateJITPlugin(_TemplatePluginBase, trt.IPluginV3QuickRuntime):
    """Its ``impl`` would run as a Python callback at execution time; the fake never calls it."""

    def get_fields_to_serialize(self):
        """Only the ``impl``'s attributes are serialized into the plan."""
        fields = trt.PluginFieldCollection()
        for k in (k for k in self.attrs if k in (self.desc.impl_attr_names or [])):
            v = self.attrs[k]
            if isinstance(v, np.ndarray):
                fields.append(trt.PluginField(k, v.tobytes(), trt.PluginFieldType.UNKNOWN) if v.dtype == np.float16
                              else trt.PluginField(k, v, NUMPY_TO_FIELD[v.dtype]))
            else:
                data = v.encode() if isinstance(v, str) else v if isinstance(v, bytes) else np.array([v])
                fields.append(trt.PluginField(k, data, BUILTIN_TO_FIELD[type(v)]))
        return fields


class _TemplateAOTPlugin(_TemplatePluginBase, trt.IPluginV3QuickAOTBuild):
    """Its ``aot_impl`` returns a compiled kernel that TensorRT embeds in the plan."""

    def get_launch_params(self, inDimsExprs, in_out, num_inputs, launchParams, symExprSetter,  # noqa: N803
                          exprBuilder):
        SymIntExpr._exprBuilder = exprBuilder
        try:
            for d, t in zip([*self.input_descs, *self.output_descs], in_out, strict=True):
                d.__dict__["_shape"] = Shape(t)
            values = tuple(self.attrs.values())  # every attribute, positionally, as the wheel does
            name, ptx, launch, extra = self.desc.aot_impl_func(*self.input_descs, *values, self.output_descs,
                                                               self._tactic)
            if not isinstance(name, (str, bytes)):
                raise TypeError(f"Kernel name must be a 'str' or 'bytes'.  Got: {type(name)}.")
            if not isinstance(ptx, (str, bytes)):
                raise TypeError(f"PTX/CUBIN must be a 'str' or 'bytes'.  Got: {type(ptx)}.")
            if not isinstance(launch, KernelLaunchParams):
                raise TypeError(f"Launch params must be a 'tensorrt.plugin.KernelLaunchParams'.  Got: "
                                f"{type(launch)}.")
            if not isinstance(extra, SymExprs):
                raise TypeError(f"Extra args must be a 'tensorrt.plugin.SymIntExprs'.  Got: {type(extra)}.")
            for field, value in vars(launch).items():
                setattr(launchParams, field, value._expr)
            self._kernel = (name, ptx)
            symExprSetter.nbSymExprs = len(extra)
            for i, arg in enumerate(extra):
                if not isinstance(arg, SymInt32):
                    raise TypeError(f"Extra args must be a 'tensorrt.plugin.SymInt32'.  Got: {type(arg)}.")
                symExprSetter[i] = arg._expr
        finally:
            SymIntExpr._exprBuilder = None

    def get_kernel(self, inputDesc, outputDesc):  # noqa: N803
        name, ptx = self._kernel
        return name, ptx.encode() if isinstance(ptx, str) else ptx


def _reset() -> None:
    """Forget every definition (fake only: ``tensorrt._fake.reset``)."""
    QDP_REGISTRY.clear()
    op.__dict__.clear()
