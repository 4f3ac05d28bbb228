"""``INetworkDefinition``/``ITensor`` (pyGraph.cpp) and ``OnnxParser``/``ParserError`` (pyOnnx.cpp), with the
onnx-tensorrt rules our graphs depend on (ModelImporter.cpp, onnxOpImporters.cpp ``FallbackPluginImporter``,
importerUtils.cpp): see ../README.md. TopK's K > 3840 is refused here, naming the node, where TensorRT refuses it
at build time. Whether TensorRT implements an op for its types is not checked.
"""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import numpy_helper

from ._core import (
    DataType,
    Dims,
    ErrorCode,
    ILogger,
    NetworkDefinitionCreationFlag,
    PluginFieldType,
    QuickPluginCreationRequest,
    Severity,
    TensorRTPhase,
    buffer_bytes,
    check_arg,
    emit,
)
from ._plugins import (
    DimsExprs,
    IDimensionExpr,
    IExprBuilder,
    PluginField,
    PluginFieldCollection,
    get_plugin_registry,
)

MAX_TOPK_K = 3840
_TP, _AP = onnx.TensorProto, onnx.AttributeProto
ONNX_TO_TRT = {_TP.FLOAT: DataType.FLOAT, _TP.DOUBLE: DataType.FLOAT, _TP.INT8: DataType.INT8,
               _TP.UINT8: DataType.UINT8, _TP.FLOAT16: DataType.HALF, _TP.BFLOAT16: DataType.BF16,
               _TP.BOOL: DataType.BOOL, _TP.INT32: DataType.INT32, _TP.INT64: DataType.INT64,
               _TP.FLOAT8E4M3FN: DataType.FP8, _TP.INT4: DataType.INT4}
_TRT_TO_ONNX = {v: k for k, v in ONNX_TO_TRT.items() if k != _TP.DOUBLE}
_FIELD_TENSOR_TYPES = {_TP.FLOAT: PluginFieldType.FLOAT32, _TP.INT8: PluginFieldType.INT8,
                       _TP.INT16: PluginFieldType.INT16, _TP.INT32: PluginFieldType.INT32,
                       _TP.FLOAT16: PluginFieldType.FLOAT16, _TP.BFLOAT16: PluginFieldType.BF16,
                       _TP.DOUBLE: PluginFieldType.FLOAT64}


class ITensor:
    __slots__ = ("name", "dtype", "shape", "is_network_input", "is_network_output")

    def __init__(self, name: str, dtype: DataType, shape, is_input=False):
        self.name, self.dtype, self.shape = name, dtype, Dims(shape)
        self.is_network_input, self.is_network_output = is_input, False


class INetworkDefinition:
    __slots__ = ("name", "_flags", "_inputs", "_outputs", "_layers", "_plugins", "_source")

    def __init__(self, flags: int):
        self.name = "Unnamed Network 0"
        self._flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._layers: list[str] = []  # node names
        self._plugins: list[dict] = []  # plugin layers: the plugin, its node, tensors and creation request
        self._source = None  # the parsed model, for the builder

    num_layers = property(lambda self: len(self._layers))
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_flag(self, flag) -> bool:
        check_arg(flag, NetworkDefinitionCreationFlag, "get_flag", "flag")
        return bool(self._flags & (1 << int(flag)))

    def get_input(self, index):
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index):
        return self._outputs[index] if 0 <= index < len(self._outputs) else None


def _getter(attr):
    return lambda self: getattr(self, attr)


class ParserError:
    __slots__ = ("_code", "_desc", "_node", "_node_name", "_node_operator", "_func")
    code, desc, func = _getter("_code"), _getter("_desc"), _getter("_func")
    node, node_name, node_operator = _getter("_node"), _getter("_node_name"), _getter("_node_operator")

    def __init__(self, code, desc, node=-1, node_name="", node_operator="", func="parse"):
        self._code, self._desc, self._node = code, desc, node
        self._node_name, self._node_operator, self._func = node_name, node_operator, func

    def __str__(self):
        info = f"({self._func}): {self._code}: {self._desc}"
        if self._code in (ErrorCode.MODEL_DESERIALIZE_FAILED, ErrorCode.REFIT_FAILED):
            return info
        return f"In node {self._node} with name: {self._node_name} and operator: {self._node_operator} {info}"

    __repr__ = __str__


class _NodeFailure(Exception):
    def __init__(self, code, desc):
        super().__init__(desc)
        self.code, self.desc = code, desc


def node_name(node) -> str:
    """importerUtils.cpp getNodeName."""
    return "node_of_" + node.output[0] if not node.name and node.output else node.name


def _attr(node, name):
    return next((a for a in node.attribute if a.name == name), None)


def _str_attr(node, name, default):
    a = _attr(node, name)
    return a.s.decode() if a is not None and a.type == _AP.STRING else default


def _value_types(model) -> dict:
    """name -> (onnx elem_type, dims with -1 for unknown, or None for an unknown rank)."""
    out = {}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        if not vi.type.HasField("tensor_type"):
            continue
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim] if t.HasField("shape") else None
        if vi.name in out and t.elem_type == 0:
            continue
        out[vi.name] = (t.elem_type, dims if dims is not None or vi.name not in out else out[vi.name][1])
    out.update({init.name: (init.data_type, list(init.dims)) for init in model.graph.initializer})
    return out


def _infer(model):
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - fall back to the declared types
        return model


class OnnxParser:
    __slots__ = ("_network", "_logger", "_errors")

    def __init__(self, network, logger):
        self._network = check_arg(network, INetworkDefinition, "OnnxParser.__init__", "network")
        self._logger = check_arg(logger, ILogger, "OnnxParser.__init__", "logger")
        self._errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index):
        return self._errors[index] if 0 <= index < len(self._errors) else None

    def clear_errors(self):
        self._errors.clear()

    def parse(self, model, path=None) -> bool:
        data = buffer_bytes(model, "parse", "model")
        if path is not None:
            check_arg(path, str, "parse", "path")  # char const*: a pathlib.Path is refused
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(data)
        except Exception:  # noqa: BLE001 - protobuf DecodeError
            self._errors.append(ParserError(ErrorCode.MODEL_DESERIALIZE_FAILED, "Failed to parse the ONNX model."))
            return False
        full = os.path.abspath(path) if path is not None else None
        return self._import(proto, data, full, os.path.dirname(full) if full else os.getcwd())

    def parse_from_file(self, model) -> bool:
        check_arg(model, str, "parse_from_file", "model")  # std::string: a pathlib.Path is refused
        try:
            proto = onnx.load(model, load_external_data=False)
        except Exception:  # noqa: BLE001 - missing or unreadable: logged, no ParserError
            emit(self._logger, Severity.ERROR, f"Failed to parse ONNX model from file: {model}!")
            return False
        full = os.path.abspath(model)
        ok = self._import(proto, None, full, os.path.dirname(full))
        for err in self._errors:
            emit(self._logger, Severity.ERROR, f"ERROR: In function {err.func()}:\n[{err.code().value}] {err.desc()}")
        return ok

    def _fail(self, code, desc, index=-1, node=None, func="importModel"):
        self._errors.append(ParserError(code, desc, index, node_name(node) if node is not None else "",
                                        node.op_type if node is not None else "", func))
        return False

    def _import(self, proto, data, path, base_dir) -> bool:
        net, graph = self._network, proto.graph
        work = _infer(proto)
        types = _value_types(work)
        initializers = {t.name for t in graph.initializer}
        constants = {t.name: t for t in graph.initializer}
        local_functions = {f.name for f in proto.functions}
        tensors: dict[str, ITensor] = {}
        for vi in graph.input:
            if vi.name in initializers:
                continue
            elem, dims = types.get(vi.name, (vi.type.tensor_type.elem_type, None))
            if elem not in ONNX_TO_TRT:
                return self._fail(ErrorCode.UNSUPPORTED_NODE,
                                  f"Failed to convert ONNX date type to TensorRT data type. (input {vi.name})")
            if dims is None:
                return self._fail(ErrorCode.UNSUPPORTED_GRAPH,
                                  f"Failed to convert ONNX dimensions to TensorRT dimensions. (input {vi.name})")
            tensors[vi.name] = t = ITensor(vi.name, ONNX_TO_TRT[elem], dims, is_input=True)
            net._inputs.append(t)
        for init in graph.initializer:  # weights feeding a layer are constant tensors
            if init.data_type in ONNX_TO_TRT:
                tensors[init.name] = ITensor(init.name, ONNX_TO_TRT[init.data_type], init.dims)
        known, layer_keys = set(tensors) | initializers, []
        for index, node in enumerate(graph.node):
            if any(i and i not in known for i in node.input):
                return self._fail(ErrorCode.INVALID_GRAPH, "Node input was not registered.", index, node, "parseNode")
            if node.op_type == "Constant" and _attr(node, "value") is not None:
                constants[node.output[0]] = _attr(node, "value").t
            plugin = not (onnx.defs.has(node.op_type) or node.op_type in local_functions)
            try:
                if plugin:
                    outs = self._add_plugin(node, tensors, types)
                    if any(types.get(o.name, (0, None))[1] is None for o in outs):
                        work = self._retype(work, outs)
                        types = _value_types(work)
                else:
                    _check_topk(node, constants, base_dir)
                    outs = [self._tensor(o, types) for o in node.output if o]
            except _NodeFailure as f:
                return self._fail(f.code, f.desc, index, node, "importFallbackPluginImporter" if plugin
                                  else f"import{node.op_type}")
            tensors.update((o.name, o) for o in outs)
            known.update(o.name for o in outs)
            net._layers.append(node_name(node))
            layer_keys.append(f"{node.domain}::{node.op_type}(" + ", ".join(
                "{}:{}".format(*types.get(i, (0, None))) for i in node.input) + ")")
        for vi in graph.output:
            if vi.name not in tensors:
                return self._fail(ErrorCode.INVALID_GRAPH, "The output tensor was not registered.")
            t = tensors[vi.name]
            if t.is_network_input:  # ModelImporter.cpp: an input marked as output goes through an Identity
                t.name = "__" + vi.name
                t = ITensor(vi.name, t.dtype, t.shape)
            declared = vi.type.tensor_type.elem_type
            if declared and declared not in ONNX_TO_TRT:
                return self._fail(ErrorCode.UNSUPPORTED_NODE, "Failed to convert ONNX date type to TensorRT data type.")
            t.dtype = ONNX_TO_TRT[declared] if declared else t.dtype
            t.is_network_output = True
            net._outputs.append(t)
        skip = {vi.name for vi in (*graph.input, *graph.output)} | initializers
        # what the builder needs: the ONNX (bytes, None after parse_from_file), where it and its external data live
        net._source = SimpleNamespace(model_bytes=data, path=path, base_dir=base_dir, layer_keys=layer_keys,
                                      activation_bytes=_peak_activation_bytes(graph.node, types, skip))
        return True

    @staticmethod
    def _tensor(name, types) -> ITensor:
        elem, dims = types.get(name, (_TP.FLOAT, None))
        return ITensor(name, ONNX_TO_TRT.get(elem, DataType.FLOAT), dims if dims is not None else ())

    @staticmethod
    def _retype(work, outs):
        """Declare a plugin's outputs to ONNX shape inference, so that types flow on past the node."""
        work = copy.deepcopy(work)
        names = {o.name for o in outs}
        keep = [vi for vi in work.graph.value_info if vi.name not in names]
        del work.graph.value_info[:]
        work.graph.value_info.extend(keep)
        work.graph.value_info.extend(onnx.helper.make_tensor_value_info(
            o.name, _TRT_TO_ONNX[o.dtype], [d if d >= 0 else None for d in o.shape]) for o in outs)
        return _infer(work)

    def _fields(self, node, creator) -> PluginFieldCollection:
        fields = PluginFieldCollection()
        for f in creator.field_names:
            a = _attr(node, f.name)
            if a is None:
                emit(self._logger, Severity.WARNING, f"Attribute {f.name} not found in plugin node! Ensure that the "
                     "plugin creator has a default value defined or the engine may fail to build.")
            elif a.type in (_AP.FLOAT, _AP.FLOATS):
                values = list(a.floats) if a.type == _AP.FLOATS else [a.f]
                fields.append(PluginField(a.name, np.array(values, np.float32), PluginFieldType.FLOAT32))
            elif a.type in (_AP.INT, _AP.INTS):
                values = list(a.ints) if a.type == _AP.INTS else [a.i]
                fields.append(PluginField(a.name, np.array(values).astype(np.int32), PluginFieldType.INT32))
            elif a.type in (_AP.STRING, _AP.STRINGS):
                fields.append(PluginField(a.name, a.s or b"".join(a.strings), PluginFieldType.CHAR))
            elif a.type == _AP.TENSOR and a.t.data_type in _FIELD_TENSOR_TYPES:
                fields.append(PluginField(a.name, numpy_helper.to_array(a.t), _FIELD_TENSOR_TYPES[a.t.data_type]))
            elif a.type == _AP.TENSOR:
                raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE, f"Tensor type: "
                                   f"{_TP.DataType.Name(a.t.data_type)} is unsupported in plugin fields.")
            else:
                raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE, f"Attributes of type: "
                                   f"{_AP.AttributeType.Name(a.type)} are unsupported as plugin fields.")
        return fields

    def _request(self, node) -> QuickPluginCreationRequest:
        Q, F = QuickPluginCreationRequest, NetworkDefinitionCreationFlag  # noqa: N806
        aot = _attr(node, "aot")
        if aot is not None:
            return Q.STRICT_AOT if (aot.i if aot.type == _AP.INT else aot.f) else Q.STRICT_JIT
        prefer_aot = self._network.get_flag(F.PREFER_AOT_PYTHON_PLUGINS)
        prefer_jit = self._network.get_flag(F.PREFER_JIT_PYTHON_PLUGINS)
        if prefer_aot and prefer_jit:
            raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE, "Both NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_"
                               "PLUGINS and NetworkDefinitionCreationFlag.PREFER_JIT_PYTHON_PLUGINS cannot be "
                               "specified at the same time.")
        return Q.PREFER_JIT if prefer_jit else Q.PREFER_AOT if prefer_aot else Q.UNKNOWN

    def _add_plugin(self, node, tensors, types) -> list[ITensor]:
        version, namespace = _str_attr(node, "plugin_version", "1"), _str_attr(node, "plugin_namespace", "")
        emit(self._logger, Severity.INFO, f"Searching for plugin: {node.op_type}, plugin_version: {version}, "
                                          f"plugin_namespace: {namespace}")
        creator = get_plugin_registry().get_creator(node.op_type, version, namespace)
        if creator is None:
            raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE,
                               "Plugin not found, are the plugin name, version, and namespace correct?")
        fields, request = self._fields(node, creator), self._request(node)
        try:
            plugin = creator.create_plugin(node.op_type, namespace, fields, TensorRTPhase.BUILD, request)
        except Exception as e:  # noqa: BLE001 - the C++ trampoline logs Python exceptions and returns nullptr
            emit(self._logger, Severity.ERROR, f"Exception caught in create_plugin(): {type(e).__name__}: {e}")
            plugin = None
        if plugin is None:
            raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE, "Could not create the plugin.")
        inputs, exprs = [tensors[i] for i in node.input if i], IExprBuilder()
        try:
            out_types = list(plugin.get_output_data_types([t.dtype for t in inputs], [len(t.shape) for t in inputs]))
            in_exprs = [DimsExprs(exprs.constant(d) if d >= 0 else IDimensionExpr()
                                  for d in t.shape) for t in inputs]
            out_exprs = list(plugin.get_output_shapes(in_exprs, [], exprs))
        except Exception as e:  # noqa: BLE001
            emit(self._logger, Severity.ERROR, f"Exception in plugin {node.op_type}: {type(e).__name__}: {e}")
            raise _NodeFailure(ErrorCode.INVALID_NODE, f"{type(e).__name__}: {e}") from None
        if not len(out_types) == len(out_exprs) == len(node.output):
            raise _NodeFailure(ErrorCode.INVALID_NODE, f"Plugin {node.op_type} has {len(out_types)} outputs but the "
                               f"node has {len(node.output)}.")
        outs = [ITensor(name, dtype, [e.get_constant_value() if e.is_constant() else -1 for e in dims])
                for name, dtype, dims in zip(node.output, out_types, out_exprs, strict=True)]
        self._network._plugins.append({"plugin": plugin, "inputs": inputs, "outputs": outs, "fields": fields, "info": {
            "node": node_name(node), "name": node.op_type, "version": version, "namespace": namespace,
            "request": request.name}})
        return outs


def _check_topk(node, constants, base_dir) -> None:
    if node.op_type != "TopK":
        return
    k = _attr(node, "k").i if _attr(node, "k") is not None else None
    if len(node.input) > 1 and node.input[1] in constants:
        k = int(numpy_helper.to_array(constants[node.input[1]], base_dir).reshape(-1)[0])
    if k is not None and k > MAX_TOPK_K:
        raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE,
                           f"TopK: K = {k} exceeds the maximum supported value of {MAX_TOPK_K}.")


def _peak_activation_bytes(nodes, types, skip) -> int:
    """Peak bytes of live intermediate tensors, nodes run in order (a stand-in for TensorRT's activation memory)."""
    def nbytes(name):
        elem, dims = types.get(name, (0, None))
        if name in skip or dims is None or elem not in ONNX_TO_TRT or -1 in dims:
            return 0
        return int(np.prod(dims, dtype=np.int64)) * int(max(1, ONNX_TO_TRT[elem].itemsize))

    last_use = {name: i for i, node in enumerate(nodes) for name in node.input}
    live = peak = 0
    for i, node in enumerate(nodes):
        live += sum(nbytes(o) for o in node.output if o)
        peak = max(peak, live)
        live -= sum(nbytes(o) for o in node.output if o and o not in last_use)
        live -= sum(nbytes(n) for n in set(node.input) if n and last_use.get(n) == i)
    return peak
