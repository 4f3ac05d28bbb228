"""``INetworkDefinition``, ``ITensor`` and ``ILayer`` (``python/src/infer/pyGraph.cpp``), filled by the parser.

The fake network is one layer per ONNX node (real TensorRT may emit several); layer types are a coarse map from
``op_type``. It cannot be built layer by layer (no ``add_*``): only ``OnnxParser`` populates it.
"""

from __future__ import annotations

from ._core import Dims, check_arg
from ._enums import DataType, LayerType, NetworkDefinitionCreationFlag, TensorFormat, TensorLocation

_LAYER_TYPES = {
    "Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION", "Cast": "CAST", "CastLike": "CAST",
    "Relu": "ACTIVATION", "Sigmoid": "ACTIVATION", "Tanh": "ACTIVATION", "LeakyRelu": "ACTIVATION",
    "Elu": "ACTIVATION", "Selu": "ACTIVATION", "Softplus": "ACTIVATION", "HardSigmoid": "ACTIVATION",
    "Gelu": "ACTIVATION", "MaxPool": "POOLING", "AveragePool": "POOLING", "Softmax": "SOFTMAX",
    "LogSoftmax": "SOFTMAX", "Concat": "CONCATENATION", "Add": "ELEMENTWISE", "Sub": "ELEMENTWISE",
    "Mul": "ELEMENTWISE", "Div": "ELEMENTWISE", "Pow": "ELEMENTWISE", "Max": "ELEMENTWISE", "Min": "ELEMENTWISE",
    "Equal": "ELEMENTWISE", "Less": "ELEMENTWISE", "Greater": "ELEMENTWISE", "And": "ELEMENTWISE",
    "Or": "ELEMENTWISE", "Exp": "UNARY", "Log": "UNARY", "Sqrt": "UNARY", "Neg": "UNARY", "Abs": "UNARY",
    "Not": "UNARY", "Erf": "UNARY", "Sin": "UNARY", "Cos": "UNARY", "Reciprocal": "UNARY", "Floor": "UNARY",
    "Ceil": "UNARY", "Pad": "PADDING", "Reshape": "SHUFFLE", "Transpose": "SHUFFLE", "Flatten": "SHUFFLE",
    "ReduceSum": "REDUCE", "ReduceMean": "REDUCE", "ReduceMax": "REDUCE", "ReduceMin": "REDUCE",
    "TopK": "TOPK", "ArgMax": "TOPK", "ArgMin": "TOPK", "Gather": "GATHER", "GatherElements": "GATHER",
    "GatherND": "GATHER", "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY", "Constant": "CONSTANT",
    "Identity": "IDENTITY", "Slice": "SLICE", "Shape": "SHAPE", "Resize": "RESIZE", "Where": "SELECT",
    "ScatterND": "SCATTER", "ScatterElements": "SCATTER", "Einsum": "EINSUM", "NonZero": "NON_ZERO",
    "LayerNormalization": "NORMALIZATION", "RMSNormalization": "NORMALIZATION",
    "InstanceNormalization": "NORMALIZATION", "Squeeze": "SQUEEZE", "Unsqueeze": "UNSQUEEZE",
    "CumSum": "CUMULATIVE", "RotaryEmbedding": "ROTARY_EMBEDDING", "QuantizeLinear": "QUANTIZE",
    "DequantizeLinear": "DEQUANTIZE", "Expand": "SLICE", "Tile": "SLICE", "OneHot": "ONE_HOT",
}


def layer_type_for(op_type: str, plugin: bool) -> LayerType:
    if plugin:
        return LayerType.PLUGIN_V3
    return LayerType[_LAYER_TYPES.get(op_type, "ELEMENTWISE")]


class ITensor:
    __slots__ = ("name", "_shape", "_dtype", "_is_input", "_is_output", "location", "allowed_formats",
                 "_dim_names")

    def __init__(self, name: str, dtype: DataType, shape):
        self.name = name
        self._dtype = dtype
        self._shape = Dims(shape)
        self._is_input = self._is_output = False
        self.location = TensorLocation.DEVICE
        self.allowed_formats = 1 << int(TensorFormat.LINEAR)
        self._dim_names: dict[int, str] = {}

    @property
    def shape(self) -> Dims:
        return Dims(self._shape)

    @shape.setter
    def shape(self, value):
        self._shape = Dims(value)

    @property
    def dtype(self) -> DataType:
        return self._dtype

    @property
    def is_network_input(self) -> bool:
        return self._is_input

    @property
    def is_network_output(self) -> bool:
        return self._is_output

    @property
    def is_shape_tensor(self) -> bool:
        return False

    @property
    def is_execution_tensor(self) -> bool:
        return True

    def set_dimension_name(self, index, name):
        self._dim_names[int(index)] = name

    def get_dimension_name(self, index):
        return self._dim_names.get(int(index))

    def __repr__(self):
        return f"<ITensor {self.name!r} {self._dtype.name} {self._shape}>"


class ILayer:
    __slots__ = ("name", "metadata", "_type", "_inputs", "_outputs", "_node")

    def __init__(self, name: str, type_: LayerType, inputs: list, outputs: list, node=None):
        self.name = name
        self.metadata = ""
        self._type = type_
        self._inputs = inputs
        self._outputs = outputs
        self._node = node

    @property
    def type(self) -> LayerType:
        return self._type

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index):
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index):
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    def get_output_type(self, index):
        return self._outputs[index].dtype

    def __repr__(self):
        return f"<ILayer {self.name!r} {self._type.name}>"


class IPluginV3Layer(ILayer):
    __slots__ = ("_plugin", "_plugin_info")

    def __init__(self, name, inputs, outputs, node, plugin, plugin_info):
        super().__init__(name, LayerType.PLUGIN_V3, inputs, outputs, node)
        self._plugin = plugin
        self._plugin_info = plugin_info

    def get_plugin(self):
        return self._plugin


class INetworkDefinition:
    __slots__ = ("name", "_builder", "_flags", "_inputs", "_outputs", "_layers", "_source", "error_recorder")

    def __init__(self, builder, flags: int):
        self.name = "Unnamed Network 0"
        self._builder = builder
        self._flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._layers: list[ILayer] = []
        self._source = None  # set by the parser: the ONNX model and what the builder needs from it
        self.error_recorder = None

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    @property
    def flags(self) -> int:
        return self._flags

    @property
    def builder(self):
        return self._builder

    def get_flag(self, flag) -> bool:
        check_arg(flag, NetworkDefinitionCreationFlag, "get_flag", "flag")
        return bool(self._flags & (1 << int(flag)))

    def get_layer(self, index):
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def get_input(self, index):
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index):
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    def __len__(self):
        return len(self._layers)

    def __getitem__(self, index):
        if index < 0:
            index += len(self._layers)
        if not 0 <= index < len(self._layers):
            raise IndexError("Out of bounds")
        return self._layers[index]
