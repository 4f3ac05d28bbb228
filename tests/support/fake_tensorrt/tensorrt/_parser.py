"""``OnnxParser`` and ``ParserError`` (``python/src/parsers/pyOnnx.cpp``) with onnx-tensorrt's dispatch rules.

Semantics, from onnx-tensorrt ``ModelImporter.cpp`` (``parseNode``, ``parseFromFile``, ``importModel``) and
``onnxOpImporters.cpp`` (``FallbackPluginImporter``, ``loadFields``, ``addPluginWithCreator``):

* nodes are imported in order; a node input that no earlier node produced is INVALID_GRAPH; the first failing
  node ends the parse;
* dispatch is on ``op_type`` alone: a standard ONNX op (``onnx.defs.has(op_type)``, whatever the node's domain)
  or a model-local function is imported; anything else is a plugin looked up as
  (``op_type``, string attr ``plugin_version`` or "1", string attr ``plugin_namespace`` or "");
  ``OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE`` sends a standard op with a registered creator to the plugin;
* only attributes named in the creator's ``field_names`` become PluginFields (INT -> INT32, narrowed; FLOAT ->
  FLOAT32; STRING -> CHAR; INTS/FLOATS -> arrays; TENSOR by element type); a missing one is a WARNING;
* a bool/int attribute ``aot`` makes a STRICT_AOT (or, when 0, STRICT_JIT) request; otherwise the network's
  PREFER_*_PYTHON_PLUGINS flag gives PREFER_AOT/PREFER_JIT/UNKNOWN (pyGraph.cpp ``add_plugin_default_func``);
* the plugin's output types/shapes come from its ``get_output_data_types``/``get_output_shapes``;
* ``parse_from_file`` of an unreadable file logs an ERROR and returns False with no ParserError;
* TopK with a constant K > 3840 fails on that node (NvInfer.h: "only values of K up to 3840 are supported");
  the real parser defers this to the builder; the fake reports it here, naming the node.
Everything else about an op (whether TensorRT implements it for these types) is not checked.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import onnx
from onnx import numpy_helper

from ._core import ILogger, buffer_bytes, check_arg, emit
from ._enums import (
    DataType,
    ErrorCode,
    NetworkDefinitionCreationFlag,
    OnnxParserFlag,
    PluginFieldType,
    QuickPluginCreationRequest,
    Severity,
    TensorRTPhase,
)
from ._network import ILayer, INetworkDefinition, IPluginV3Layer, ITensor, layer_type_for
from ._plugins import (
    DimsExprs,
    IExprBuilder,
    IPluginCreator,
    IPluginCreatorV3One,
    IPluginCreatorV3Quick,
    PluginField,
    PluginFieldCollection,
    get_plugin_registry,
    set_global_logger,
)

MAX_TOPK_K = 3840
_TP = onnx.TensorProto
# importerUtils.cpp convertDtype (DOUBLE is imported as FLOAT)
ONNX_TO_TRT = {_TP.FLOAT: DataType.FLOAT, _TP.DOUBLE: DataType.FLOAT, _TP.INT8: DataType.INT8,
               _TP.UINT8: DataType.UINT8, _TP.FLOAT16: DataType.HALF, _TP.BFLOAT16: DataType.BF16,
               _TP.BOOL: DataType.BOOL, _TP.INT32: DataType.INT32, _TP.INT64: DataType.INT64,
               _TP.FLOAT8E4M3FN: DataType.FP8, _TP.INT4: DataType.INT4}
_FIELD_TENSOR_TYPES = {_TP.FLOAT: PluginFieldType.FLOAT32, _TP.INT8: PluginFieldType.INT8,
                       _TP.INT16: PluginFieldType.INT16, _TP.INT32: PluginFieldType.INT32,
                       _TP.FLOAT16: PluginFieldType.FLOAT16, _TP.BFLOAT16: PluginFieldType.BF16,
                       _TP.DOUBLE: PluginFieldType.FLOAT64}


class ParserError:
    __slots__ = ("_code", "_desc", "_node", "_node_name", "_node_operator", "_func")

    def __init__(self, code, desc, node=-1, node_name="", node_operator="", func="parse"):
        self._code, self._desc, self._node = code, desc, node
        self._node_name, self._node_operator, self._func = node_name, node_operator, func

    def code(self):
        return self._code

    def desc(self):
        return self._desc

    def file(self):
        return "fake_tensorrt/_parser.py"

    def line(self):
        return 0

    def func(self):
        return self._func

    def node(self):
        return self._node

    def node_name(self):
        return self._node_name

    def node_operator(self):
        return self._node_operator

    def local_function_stack(self):
        return []

    def local_function_stack_size(self):
        return 0

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


class ParsedModel:
    """What the builder needs from a parse: the ONNX, its value types, the layers' timing-cache keys."""

    def __init__(self, model_bytes, path, base_dir, graph_name, value_types, layer_keys, activation_bytes):
        self.model_bytes = model_bytes  # the serialized ModelProto as given (None when parsed from a file)
        self.path = path  # the model file (parse_from_file, or parse(..., path=...)), absolute
        self.base_dir = base_dir  # where external data lives
        self.graph_name = graph_name
        self.value_types = value_types
        self.layer_keys = layer_keys
        self.activation_bytes = activation_bytes


def node_name(node) -> str:
    """importerUtils.cpp getNodeName."""
    if not node.name and node.output:
        return "node_of_" + node.output[0]
    return node.name


def _attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return a
    return None


def _value_types(model) -> dict:
    """name -> (onnx elem_type, dims with -1 for unknown, or None for unknown rank)."""
    out = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        dims = None
        if t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if vi.name in out and t.elem_type == 0:
            continue
        if vi.name in out and dims is None:
            dims = out[vi.name][1]
        out[vi.name] = (t.elem_type, dims)
    for init in g.initializer:
        out[init.name] = (init.data_type, list(init.dims))
    return out


def _infer(model):
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - fall back to the declared types
        return model


class OnnxParser:
    __slots__ = ("_network", "_logger", "_errors", "_flags", "_layer_outputs")

    def __init__(self, network, logger):
        check_arg(network, INetworkDefinition, "OnnxParser.__init__", "network")
        check_arg(logger, ILogger, "OnnxParser.__init__", "logger")
        self._network = network
        self._logger = logger
        self._errors: list[ParserError] = []
        self._flags = 0
        self._layer_outputs: dict[str, list] = {}
        set_global_logger(logger)

    # --- errors and flags ---
    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index):
        return self._errors[index] if 0 <= index < len(self._errors) else None

    def clear_errors(self):
        self._errors.clear()

    @property
    def flags(self) -> int:
        return self._flags

    @flags.setter
    def flags(self, value):
        self._flags = int(value)

    def set_flag(self, flag):
        self._flags |= 1 << int(check_arg(flag, OnnxParserFlag, "set_flag", "flag"))

    def clear_flag(self, flag):
        self._flags &= ~(1 << int(check_arg(flag, OnnxParserFlag, "clear_flag", "flag")))

    def get_flag(self, flag) -> bool:
        return bool(self._flags & (1 << int(check_arg(flag, OnnxParserFlag, "get_flag", "flag"))))

    def supports_operator(self, op_name) -> bool:
        return onnx.defs.has(op_name)

    def get_used_vc_plugin_libraries(self) -> list:
        return []

    def get_layer_output_tensor(self, name, i):
        outs = self._layer_outputs.get(name)
        return outs[i] if outs is not None and 0 <= i < len(outs) else None

    # --- parsing ---
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
        base = os.path.dirname(full) if full else os.getcwd()
        return self._import(proto, data, full, base)

    def parse_from_file(self, model) -> bool:
        check_arg(model, str, "parse_from_file", "model")  # std::string: a pathlib.Path is refused
        if not os.path.isfile(model):
            emit(self._logger, Severity.ERROR, f"Failed to parse ONNX model from file: {model}!")
            return False
        try:
            proto = onnx.load(model, load_external_data=False)
        except Exception:  # noqa: BLE001
            emit(self._logger, Severity.ERROR, f"Failed to parse ONNX model from file: {model}!")
            return False
        full = os.path.abspath(model)
        ok = self._import(proto, None, full, os.path.dirname(full))
        for err in self._errors:
            emit(self._logger, Severity.ERROR, f"ERROR: {err.file()}:{err.line()} In function {err.func()}:\n"
                                               f"[{err.code().value}] {err.desc()}")
        return ok

    def _fail(self, code, desc, index=-1, node=None, func="importModel"):
        self._errors.append(ParserError(code, desc, index, node_name(node) if node is not None else "",
                                        node.op_type if node is not None else "", func))
        return False

    def _import(self, proto, data, path, base_dir) -> bool:
        net = self._network
        graph = proto.graph
        work = _infer(proto)
        types = _value_types(work)
        initializers = {t.name for t in graph.initializer}
        constants = {t.name: t for t in graph.initializer}  # TensorProtos, read only when needed
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
            t = ITensor(vi.name, ONNX_TO_TRT[elem], dims)
            t._is_input = True
            tensors[vi.name] = t
            net._inputs.append(t)

        for init in graph.initializer:  # weights feeding a layer become constant tensors (TensorOrWeights)
            if init.data_type in ONNX_TO_TRT:
                tensors[init.name] = ITensor(init.name, ONNX_TO_TRT[init.data_type], list(init.dims))
        known = set(tensors) | initializers
        layer_keys, exprs = [], IExprBuilder()
        for index, node in enumerate(graph.node):
            name = node_name(node)
            for inp in node.input:
                if inp and inp not in known:
                    return self._fail(ErrorCode.INVALID_GRAPH, "Node input was not registered.", index, node,
                                      "parseNode")
            if node.op_type == "Constant":
                value = _attr(node, "value")
                if value is not None and node.output:
                    constants[node.output[0]] = value.t
            plugin_node = not (onnx.defs.has(node.op_type) or node.op_type in local_functions)
            try:
                plugin = self._plugin_lookup(node, local_functions)
                plugin_node = plugin is not None or plugin_node
                if plugin is None:
                    self._check_builtin(node, constants, base_dir)
                    outs = [self._tensor(o, types) for o in node.output if o]
                    layer = ILayer(name, layer_type_for(node.op_type, False),
                                   [tensors.get(i) for i in node.input], outs, node)
                else:
                    outs, layer = self._add_plugin(index, node, plugin, tensors, types, exprs)
                    if any(o.name not in types or types[o.name][1] is None for o in outs):
                        work = self._retype(work, outs)
                        types = _value_types(work)
            except _NodeFailure as f:
                importer = "FallbackPluginImporter" if plugin_node else node.op_type
                return self._fail(f.code, f.desc, index, node, f"import{importer}")
            for o in outs:
                tensors[o.name] = o
                known.add(o.name)
            self._layer_outputs.setdefault(name, outs)
            net._layers.append(layer)
            layer_keys.append(_layer_key(node, types))

        for vi in graph.output:
            if vi.name not in tensors:
                return self._fail(ErrorCode.INVALID_GRAPH, "The output tensor was not registered.")
            t = tensors[vi.name]
            if t.is_network_input:  # ModelImporter.cpp: an input marked as output goes through an Identity
                t.name = "__" + vi.name
                t = ITensor(vi.name, t.dtype, t.shape)
            declared = vi.type.tensor_type.elem_type
            if declared:
                if declared not in ONNX_TO_TRT:
                    return self._fail(ErrorCode.UNSUPPORTED_NODE,
                                      "Failed to convert ONNX date type to TensorRT data type.")
                t._dtype = ONNX_TO_TRT[declared]
            t._is_output = True
            net._outputs.append(t)

        skip = {vi.name for vi in graph.input} | {vi.name for vi in graph.output} | initializers
        net._source = ParsedModel(data, path, base_dir, graph.name, types, layer_keys,
                                  _peak_activation_bytes(graph.node, types, skip))
        return True

    def _tensor(self, name, types) -> ITensor:
        elem, dims = types.get(name, (_TP.FLOAT, None))
        return ITensor(name, ONNX_TO_TRT.get(elem, DataType.FLOAT), dims if dims is not None else ())

    @staticmethod
    def _retype(work, outs):
        """Declare a plugin's outputs to ONNX shape inference so that types flow past the node."""
        work = copy.deepcopy(work)
        trt_to_onnx = {v: k for k, v in ONNX_TO_TRT.items() if k != _TP.DOUBLE}
        names = {o.name for o in outs}
        keep = [vi for vi in work.graph.value_info if vi.name not in names]
        del work.graph.value_info[:]
        work.graph.value_info.extend(keep)
        for o in outs:
            work.graph.value_info.append(onnx.helper.make_tensor_value_info(
                o.name, trt_to_onnx[o.dtype], [d if d >= 0 else None for d in o.shape]))
        return _infer(work)

    def _plugin_lookup(self, node, local_functions):
        """The creator for a node that goes to the plugin importer, or None for a built-in/local-function node."""
        standard = onnx.defs.has(node.op_type) or node.op_type in local_functions
        version, namespace = self._str_attr(node, "plugin_version", "1"), self._str_attr(node, "plugin_namespace", "")
        if standard and not (self._flags & (1 << int(OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE))):
            return None
        creator = get_plugin_registry().get_creator(node.op_type, version, namespace)
        if standard and creator is None:
            return None
        emit(self._logger, Severity.INFO, f"Searching for plugin: {node.op_type}, plugin_version: {version}, "
                                          f"plugin_namespace: {namespace}")
        if creator is None:
            raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE,
                               "Plugin not found, are the plugin name, version, and namespace correct?")
        return creator

    @staticmethod
    def _str_attr(node, name, default):
        a = _attr(node, name)
        return a.s.decode() if a is not None and a.type == onnx.AttributeProto.STRING else default

    @staticmethod
    def _check_builtin(node, constants, base_dir):
        if node.op_type != "TopK":
            return
        k = None
        if len(node.input) > 1 and node.input[1] in constants:
            k = int(numpy_helper.to_array(constants[node.input[1]], base_dir).reshape(-1)[0])
        elif _attr(node, "k") is not None:
            k = _attr(node, "k").i
        if k is not None and k > MAX_TOPK_K:
            raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE,
                               f"TopK: K = {k} exceeds the maximum supported value of {MAX_TOPK_K}.")

    def _fields(self, node, creator) -> PluginFieldCollection:
        fields = PluginFieldCollection()
        for f in creator.field_names:
            a = _attr(node, f.name)
            if a is None:
                emit(self._logger, Severity.WARNING, f"Attribute {f.name} not found in plugin node! Ensure that the "
                     "plugin creator has a default value defined or the engine may fail to build.")
                continue
            AP = onnx.AttributeProto
            if a.type == AP.FLOAT:
                fields.append(PluginField(a.name, np.array([a.f], np.float32), PluginFieldType.FLOAT32))
            elif a.type == AP.INT:
                fields.append(PluginField(a.name, np.array([a.i]).astype(np.int32), PluginFieldType.INT32))
            elif a.type == AP.STRING:
                fields.append(PluginField(a.name, a.s, PluginFieldType.CHAR))
            elif a.type == AP.FLOATS:
                fields.append(PluginField(a.name, np.array(a.floats, np.float32), PluginFieldType.FLOAT32))
            elif a.type == AP.INTS:
                fields.append(PluginField(a.name, np.array(a.ints).astype(np.int32), PluginFieldType.INT32))
            elif a.type == AP.STRINGS:
                fields.append(PluginField(a.name, b"".join(a.strings), PluginFieldType.CHAR))
            elif a.type == AP.TENSOR and a.t.data_type in _FIELD_TENSOR_TYPES:
                fields.append(PluginField(a.name, numpy_helper.to_array(a.t), _FIELD_TENSOR_TYPES[a.t.data_type]))
            elif a.type == AP.TENSOR:
                raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE, f"Tensor type: "
                                   f"{_TP.DataType.Name(a.t.data_type)} is unsupported in plugin fields.")
            else:
                raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE, f"Attributes of type: "
                                   f"{AP.AttributeType.Name(a.type)} are unsupported as plugin fields.")
        return fields

    def _request(self, node) -> QuickPluginCreationRequest:
        aot = _attr(node, "aot")
        if aot is not None:
            value = aot.i if aot.type == onnx.AttributeProto.INT else aot.f
            return QuickPluginCreationRequest.STRICT_AOT if value else QuickPluginCreationRequest.STRICT_JIT
        prefer_aot = self._network.get_flag(NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
        prefer_jit = self._network.get_flag(NetworkDefinitionCreationFlag.PREFER_JIT_PYTHON_PLUGINS)
        if prefer_aot and prefer_jit:
            raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE, "Both NetworkDefinitionCreationFlag."
                               "PREFER_AOT_PYTHON_PLUGINS and NetworkDefinitionCreationFlag."
                               "PREFER_JIT_PYTHON_PLUGINS cannot be specified at the same time.")
        if prefer_jit:
            return QuickPluginCreationRequest.PREFER_JIT
        return QuickPluginCreationRequest.PREFER_AOT if prefer_aot else QuickPluginCreationRequest.UNKNOWN

    def _add_plugin(self, index, node, creator, tensors, types, exprs):
        namespace = self._str_attr(node, "plugin_namespace", "")
        version = self._str_attr(node, "plugin_version", "1")
        fields = self._fields(node, creator)
        request = self._request(node)
        try:
            if isinstance(creator, IPluginCreatorV3Quick):
                plugin = creator.create_plugin(node.op_type, namespace, fields, TensorRTPhase.BUILD, request)
            elif isinstance(creator, IPluginCreatorV3One):
                plugin = creator.create_plugin(node_name(node), fields, TensorRTPhase.BUILD)
            elif isinstance(creator, IPluginCreator):
                plugin = creator.create_plugin(node_name(node), fields)
            else:
                plugin = None
        except Exception as e:  # noqa: BLE001 - the C++ trampoline logs Python exceptions and returns nullptr
            emit(self._logger, Severity.ERROR, f"Exception caught in create_plugin(): {type(e).__name__}: {e}")
            plugin = None
        if plugin is None:
            raise _NodeFailure(ErrorCode.UNSUPPORTED_NODE, "Could not create the plugin.")
        inputs = [tensors[i] for i in node.input if i]
        try:
            out_types = list(plugin.get_output_data_types([t.dtype for t in inputs], [len(t.shape) for t in inputs]))
            in_exprs = [DimsExprs([exprs.constant(d) if d >= 0 else exprs.declare_size_tensor(0, None, None)
                                   for d in t.shape]) for t in inputs]
            out_exprs = list(plugin.get_output_shapes(in_exprs, [], exprs))
        except Exception as e:  # noqa: BLE001
            emit(self._logger, Severity.ERROR, f"Exception in plugin {node.op_type}: {type(e).__name__}: {e}")
            raise _NodeFailure(ErrorCode.INVALID_NODE, f"{type(e).__name__}: {e}") from None
        if len(out_types) != len(node.output) or len(out_exprs) != len(node.output):
            raise _NodeFailure(ErrorCode.INVALID_NODE, f"Plugin {node.op_type} has {len(out_types)} outputs but the "
                               f"node has {len(node.output)}.")
        outs = []
        for name, dtype, dims in zip(node.output, out_types, out_exprs, strict=True):
            shape = [e.get_constant_value() if e.is_constant() else -1 for e in dims]
            outs.append(ITensor(name, dtype, shape))
        info = {"node": node_name(node), "name": node.op_type, "version": version, "namespace": namespace,
                "request": request.name, "fields": fields}
        return outs, IPluginV3Layer(node_name(node), inputs, outs, node, plugin, info)


def _peak_activation_bytes(nodes, types, skip) -> int:
    """Peak bytes of live intermediate tensors, nodes run in order (a stand-in for TensorRT's activation memory)."""
    def nbytes(name):
        elem, dims = types.get(name, (0, None))
        if name in skip or dims is None or elem not in ONNX_TO_TRT or -1 in dims:
            return 0
        return int(np.prod(dims, dtype=np.int64)) * int(max(1, ONNX_TO_TRT[elem].itemsize))

    last_use = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = i
    live = peak = 0
    for i, node in enumerate(nodes):
        live += sum(nbytes(o) for o in node.output if o)
        peak = max(peak, live)
        live -= sum(nbytes(o) for o in node.output if o and o not in last_use)
        live -= sum(nbytes(n) for n in set(node.input) if n and last_use.get(n) == i)
    return peak


def _layer_key(node, types) -> str:
    sig = []
    for i in node.input:
        elem, dims = types.get(i, (0, None))
        sig.append(f"{elem}:{dims}")
    return f"{node.domain}::{node.op_type}({', '.join(sig)})"
