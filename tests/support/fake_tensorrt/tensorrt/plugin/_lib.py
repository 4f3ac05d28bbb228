"""The ``tensorrt.plugin`` decorators and the creator they register (plugin/_lib.py of the wheel).

``register("ns::name")`` validates the signature, defines ``tensorrt.plugin.op.ns.name`` (a second registration
of the same id raises ValueError) and, unless ``lazy_register``, registers a creator in
``tensorrt.get_plugin_registry()`` with version "1", namespace ``ns`` and one field per attribute. The creator's
``create_plugin(name, namespace, fields, phase, request)`` turns fields back into attributes (``annotation(data)``
for built-in types) and picks JIT or AOT: STRICT_* requests need that implementation; otherwise a plugin with
both needs PREFER_AOT/PREFER_JIT (ValueError), and a plugin with one uses it.
"""

from __future__ import annotations

import types

import numpy as np

import tensorrt as trt

from ._export import public_api
from ._plugin_class import _TemplateAOTPlugin, _TemplateJITPlugin
from ._utils import BUILTIN_TO_FIELD, NUMPY_TO_FIELD
from ._validate import (
    is_numpy_array,
    numpy_dtype_of,
    parse_register_inputs,
    parse_register_return,
    validate_aot_impl,
    validate_autotune,
    validate_impl,
    validate_name_and_namespace,
)


class _PluginNamespace(types.ModuleType):
    """``tensorrt.plugin.op.<namespace>``: one attribute per registered plugin."""

    def __init__(self, namespace):
        super().__init__("tensorrt.plugin.op." + namespace)
        self._namespace = namespace

    def define(self, name, plugin_def):
        assert not hasattr(self, name)
        setattr(self, name, plugin_def)

    def __getattr__(self, name):
        raise AttributeError(f"'{type(self).__name__}' object '{self._namespace}' has no attribute '{name}'")

    def __repr__(self):
        return f'_PluginNamespace(namespace="{self._namespace}")'


class _Op(types.ModuleType):
    """``tensorrt.plugin.op``."""

    def __init__(self):
        super().__init__("tensorrt.plugin.op")

    def define_or_get(self, namespace):
        if namespace not in self.__dict__:
            setattr(self, namespace, _PluginNamespace(namespace))
        return self.__dict__[namespace]

    def __getattr__(self, name):
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")


op = _Op()
public_api(symbol="op")(op)

QDP_CREATORS: dict = {}
QDP_REGISTRY: dict = {}


class PluginDef:
    """A registered plugin: its functions and signature."""

    def __init__(self):
        self.plugin_id = None
        self.register_func = None
        self.impl_func = None
        self.aot_impl_func = None
        self.autotune_func = None
        self.autotune_attr_names = None
        self.input_tensor_names = None
        self.input_attrs = None
        self.impl_attr_names = None
        self.aot_impl_attr_names = None
        self.num_outputs = None
        self.expects_tactic = None

    def __call__(self, *args, **kwargs):
        raise NotImplementedError("the fake TensorRT network has no add_plugin(): put the plugin in the ONNX graph")


class _TemplatePluginCreator(trt.IPluginCreatorV3Quick):
    def __init__(self, name, namespace, attrs):
        trt.IPluginCreatorV3Quick.__init__(self)
        self.name = name
        self.plugin_namespace = namespace
        self.plugin_version = "1"
        fields = []
        for attr, (builtin, type_) in attrs.items():
            if builtin and type_ is str:
                fields.append(trt.PluginField(attr, b"", trt.PluginFieldType.CHAR))
            elif builtin and type_ is bytes:
                fields.append(trt.PluginField(attr, b"", trt.PluginFieldType.UNKNOWN))
            elif builtin:
                fields.append(trt.PluginField(attr, np.array([]), BUILTIN_TO_FIELD[type_]))
            else:
                fields.append(trt.PluginField(attr, np.array([]), NUMPY_TO_FIELD[np.dtype(type_)]))
        self.field_names = trt.PluginFieldCollection(fields)

    def create_plugin(self, name, namespace, fc, phase, qpcr=None):
        desc = QDP_REGISTRY[f"{namespace}::{name}"]
        attrs = {}
        for f in fc:
            if f.name not in desc.input_attrs:
                raise AssertionError(f"Unexpected attribute {f.name} provided to create_plugin. Expected one of "
                                     f"{desc.input_attrs.keys()}.")
            annotation = desc.input_attrs[f.name]
            if is_numpy_array(annotation):
                np_type = numpy_dtype_of(annotation)
                if np_type == np.float16:
                    attrs[f.name] = np.frombuffer(f.data.tobytes(), dtype=np.float16)
                else:
                    attrs[f.name] = f.data.astype(np_type)
            elif issubclass(annotation, str):
                attrs[f.name] = f.data.tobytes().decode("utf-8")
            else:
                attrs[f.name] = annotation(f.data)

        jit = self._choose(desc, qpcr)
        if jit:
            plugin = _TemplateJITPlugin(name, namespace, desc.num_outputs)
            plugin.init(desc.register_func, attrs, desc.impl_attr_names, desc.impl_func, desc.autotune_attr_names,
                        desc.autotune_func, desc.expects_tactic)
        else:
            plugin = _TemplateAOTPlugin(name, namespace, desc.num_outputs)
            plugin.init(desc.register_func, attrs, desc.aot_impl_attr_names, desc.aot_impl_func,
                        desc.autotune_attr_names, desc.autotune_func)
        return plugin

    @staticmethod
    def _choose(desc, qpcr) -> bool:
        """True for JIT, False for AOT."""
        Q = trt.QuickPluginCreationRequest
        if qpcr is None:
            return True
        if qpcr == Q.STRICT_AOT:
            if desc.aot_impl_func is None:
                raise ValueError(f"AOT implementation requested, but not defined for '{desc.plugin_id}'. Was "
                                 "@trt.plugin.aot_impl defined?")
            return False
        if qpcr == Q.STRICT_JIT:
            if desc.impl_func is None:
                raise ValueError(f"JIT implementation requested, but not defined for '{desc.plugin_id}'. Was "
                                 "@trt.plugin.impl defined?")
            return True
        aot, jit = desc.aot_impl_func is not None, desc.impl_func is not None
        if aot and jit:
            if qpcr == Q.PREFER_AOT:
                return False
            if qpcr == Q.PREFER_JIT:
                return True
            raise ValueError(f"Plugin '{desc.plugin_id}' has both AOT and JIT implementations. "
                             "NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS or "
                             "NetworkDefinitionCreationFlag.PREFER_JIT_PYTHON_PLUGINS should be specified.")
        if not (aot or jit):
            raise ValueError(f"Plugin '{desc.plugin_id}' does not have either a AOT or JIT implementation.")
        return jit


def _register_plugin_creator(name, namespace, attrs_types):
    registry = trt.get_plugin_registry()
    registry.register_creator(_TemplatePluginCreator(name, namespace, attrs_types), namespace)
    creator = registry.get_creator(name, "1", namespace)
    QDP_CREATORS[f"{namespace}::{name}"] = creator
    return creator


def _definition(plugin_id):
    if plugin_id not in QDP_REGISTRY:
        raise ValueError(f"Plugin {plugin_id} is not registered. Did you register it with tensorrt.plugin.register "
                         "API?")
    return QDP_REGISTRY[plugin_id]


@public_api()
def register(plugin_id: str, lazy_register: bool = False):
    """Decorator: describe a plugin's I/O from ``(inputs: TensorDesc..., attrs...) -> TensorDesc | Tuple``."""

    def decorator(register_func):
        ns, name = plugin_id.split("::")
        validate_name_and_namespace(ns, name)
        namespace = op.define_or_get(ns)
        if name in namespace.__dict__:
            raise ValueError(f"'{type(op).__name__}' already has a defintion for '{name}'")
        tensor_names, input_attrs, attrs_types = parse_register_inputs(register_func, lazy_register)
        plugin_def = PluginDef()
        plugin_def.plugin_id = plugin_id
        plugin_def.register_func = register_func
        plugin_def.input_tensor_names = tensor_names
        plugin_def.input_attrs = input_attrs
        plugin_def.num_outputs = parse_register_return(register_func)
        QDP_REGISTRY[plugin_id] = plugin_def
        if not lazy_register:
            _register_plugin_creator(name, ns, attrs_types)
        namespace.define(name, plugin_def)
        return register_func

    return decorator


@public_api()
def impl(plugin_id: str):
    """Decorator: the JIT implementation ``(inputs: Tensor..., attrs..., outputs, stream[, tactic]) -> None``."""

    def decorator(impl_func):
        plugin_def = _definition(plugin_id)
        plugin_def.impl_attr_names, plugin_def.expects_tactic = validate_impl(impl_func, plugin_def)
        plugin_def.impl_func = impl_func
        return impl_func

    return decorator


@public_api()
def aot_impl(plugin_id: str):
    """Decorator: the AOT implementation ``(inputs: TensorDesc..., attrs..., outputs, tactic) ->
    (kernel_name, ptx, KernelLaunchParams, SymExprs)``."""

    def decorator(aot_impl_func):
        plugin_def = _definition(plugin_id)
        plugin_def.aot_impl_attr_names = validate_aot_impl(aot_impl_func, plugin_def)
        plugin_def.aot_impl_func = aot_impl_func
        return aot_impl_func

    return decorator


@public_api()
def autotune(plugin_id: str):
    """Decorator: ``(inputs: TensorDesc..., attrs..., outputs) -> List[AutoTuneCombination]``."""

    def decorator(autotune_func):
        plugin_def = _definition(plugin_id)
        plugin_def.autotune_attr_names = validate_autotune(autotune_func, plugin_def)
        plugin_def.autotune_func = autotune_func
        return autotune_func

    return decorator


def _reset() -> None:
    """Forget every definition (fake only: ``tensorrt._fake.reset``)."""
    QDP_REGISTRY.clear()
    QDP_CREATORS.clear()
    for name in [n for n, v in op.__dict__.items() if isinstance(v, _PluginNamespace)]:
        delattr(op, name)
