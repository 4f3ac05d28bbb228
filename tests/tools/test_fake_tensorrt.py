"""Faithfulness of the CPU fake of ``tensorrt`` (tests/support/fake_tensorrt) to the TensorRT 11.1 Python API.

Every plugin here is defined inside its test, after the ``fake_tensorrt`` fixture has imported the fake. This
module deliberately has no ``from __future__ import annotations``: ``tensorrt.plugin`` rejects string annotations.
"""

import pathlib
import typing

import numpy as np
import numpy.typing as npt
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP


def _model(nodes, inputs, outputs, inits=(), opsets=(("", 17),), name="g"):
    graph = oh.make_graph(nodes, name, inputs, outputs, list(inits))
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 10
    return model


def _vi(name, elem, shape):
    return oh.make_tensor_value_info(name, elem, shape)


def _recorder(trt):
    class Recorder(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.records = []

        def log(self, severity, msg):
            self.records.append((severity, msg))

        def errors(self):
            return [m for s, m in self.records if s <= trt.Logger.ERROR]

    return Recorder()


def _parse(trt, model, logger, flags=0):
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(model.SerializeToString())
    return builder, network, parser, ok


def _build(trt, model, logger, flags=0, configure=None):
    builder, network, parser, ok = _parse(trt, model, logger, flags)
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    if configure is not None:
        configure(config)
    return builder.build_serialized_network(network, config)


def _io_buffers(trt, engine, feeds):
    """Host buffers for every I/O tensor: the given inputs, empty outputs of the engine's shape and dtype."""
    bufs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            bufs[name] = np.ascontiguousarray(feeds[name])
        else:
            bufs[name] = np.zeros(tuple(engine.get_tensor_shape(name)), trt.nptype(engine.get_tensor_dtype(name)))
    return bufs


def _execute(trt, engine, feeds, context=None):
    context = context or engine.create_execution_context()
    bufs = _io_buffers(trt, engine, feeds)
    for name, arr in bufs.items():
        assert context.set_tensor_address(name, arr.ctypes.data)
    assert context.execute_async_v3(0)
    return {n: a for n, a in bufs.items() if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}


def _add_model():
    w = onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    nodes = [oh.make_node("Add", ["x", "w"], ["a"]), oh.make_node("Relu", ["a"], ["y"])]
    return _model(nodes, [_vi("x", TP.FLOAT, [2, 3])], [_vi("y", TP.FLOAT, [2, 3])], [w])


def _ref_session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------------- API surface


def test_keyword_names_are_the_bindings(fake_tensorrt):
    trt = fake_tensorrt
    logger = trt.Logger(min_severity=trt.Logger.ERROR)
    builder = trt.Builder(logger=logger)
    network = builder.create_network(flags=0)
    parser = trt.OnnxParser(network=network, logger=logger)
    assert parser.parse(model=_add_model().SerializeToString(), path=None)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(pool=trt.MemoryPoolType.WORKSPACE, pool_size=1 << 20)
    assert config.get_memory_pool_limit(pool=trt.MemoryPoolType.WORKSPACE) == 1 << 20
    plan = builder.build_serialized_network(network=network, config=config)
    engine = trt.Runtime(logger=logger).deserialize_cuda_engine(serialized_engine=plan)
    context = engine.create_execution_context(strategy=trt.ExecutionContextAllocationStrategy.STATIC)
    assert engine.get_tensor_shape(name="x") == (2, 3)
    assert trt.get_plugin_registry().get_creator(type="none", version="1", plugin_namespace="") is None

    with pytest.raises(TypeError):
        trt.Logger(severity=trt.Logger.ERROR)
    with pytest.raises(TypeError):
        builder.create_network(flag=0)
    with pytest.raises(TypeError):
        parser.parse(model_bytes=b"")
    with pytest.raises(TypeError):
        parser.parse_from_file(path="x.onnx")
    with pytest.raises(TypeError):
        parser.parse_from_file(pathlib.Path("x.onnx"))  # std::string: pybind11 takes no Path
    with pytest.raises(TypeError):
        config.set_memory_pool_limit(pool=trt.MemoryPoolType.WORKSPACE, size=1)
    with pytest.raises(TypeError):
        config.set_timing_cache(config.create_timing_cache(b""), ignore=False)
    with pytest.raises(TypeError):
        builder.build_serialized_network(net=network, config=config)
    with pytest.raises(TypeError):
        trt.Runtime(logger).deserialize_cuda_engine(plan=plan)
    with pytest.raises(TypeError):
        context.set_tensor_address(tensor="x", ptr=0)
    with pytest.raises(TypeError):
        context.execute_async_v3(stream=0)
    with pytest.raises(TypeError):
        trt.get_plugin_registry().get_creator(name="x", version="1")
    # pybind11 enums are not ints: the wrong argument type is rejected
    with pytest.raises(TypeError):
        config.set_flag(int(trt.BuilderFlag.REFIT))
    with pytest.raises(TypeError):
        engine.create_execution_context(0)


def test_trt11_names_only(fake_tensorrt):
    trt = fake_tensorrt
    for gone in ("FP16", "BF16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"):
        assert not hasattr(trt.BuilderFlag, gone)
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")  # deprecated, still bound, ignored
    config = trt.Builder(trt.Logger()).create_builder_config()
    with pytest.raises(AttributeError):
        config.max_workspace_size = 1 << 30  # removed in TensorRT 10; bindings objects take no new attributes
    assert [m.name for m in trt.ExecutionContextAllocationStrategy] == ["STATIC", "ON_PROFILE_CHANGE",
                                                                          "USER_MANAGED"]
    assert trt.__version__ == "11.1.0"


def test_enums_types_and_host_memory(fake_tensorrt):
    trt = fake_tensorrt
    assert trt.float16 is trt.DataType.HALF and trt.bool is trt.DataType.BOOL and trt.bfloat16 is trt.DataType.BF16
    assert trt.nptype(trt.float16) is np.float16 and trt.nptype(trt.int64) is np.int64
    with pytest.raises(TypeError):
        trt.nptype(trt.bfloat16)  # no numpy bf16 in the real mapping either
    assert trt.DataType.FLOAT != 0  # not py::arithmetic
    assert trt.BuilderFlag.REFIT == 4 and int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS) == 2
    assert trt.Logger.WARNING is trt.ILogger.Severity.WARNING is trt.Logger.Severity.WARNING
    assert trt.Logger().min_severity == trt.Logger.WARNING

    class Forgetful(trt.ILogger):
        def __init__(self):  # no ILogger.__init__(self): pybind11 refuses the object
            self.n = 0

        def log(self, severity, msg):
            self.n += 1

    with pytest.raises(TypeError, match="must be called"):
        Forgetful()
    # an enum passed where an int bitmask is expected is taken as its value (a classic mistake, as with pybind11)
    net = trt.Builder(trt.Logger()).create_network(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    assert net.get_flag(trt.NetworkDefinitionCreationFlag.PREFER_JIT_PYTHON_PLUGINS)
    assert not net.get_flag(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)

    plan = _build(trt, _add_model(), trt.Logger())
    assert isinstance(plan, trt.IHostMemory) and plan.dtype == trt.DataType.UINT8
    assert plan.nbytes == len(bytes(plan)) == memoryview(plan).nbytes
    with pytest.raises(TypeError):
        len(plan)
    with pytest.raises(TypeError):
        plan[0]
    assert plan  # truthy, like any pybind11 object


def test_builder_config_properties(fake_tensorrt):
    trt = fake_tensorrt
    log = _recorder(trt)
    config = trt.Builder(log).create_builder_config()
    assert config.builder_optimization_level == 3
    assert config.get_flag(trt.BuilderFlag.TF32)  # on by default: the builder must clear it for exact fp32
    config.builder_optimization_level = 7  # "greater than the maximum level results in identical behavior to 5"
    assert config.builder_optimization_level == 7
    config.builder_optimization_level = -1  # "Must be non-negative": an API error, the value is kept
    assert config.builder_optimization_level == 7 and log.errors()
    config.clear_flag(trt.BuilderFlag.TF32)
    config.set_flag(trt.BuilderFlag.DISABLE_TIMING_CACHE)
    assert config.get_flag(trt.BuilderFlag.DISABLE_TIMING_CACHE) and not config.get_flag(trt.BuilderFlag.TF32)
    assert config.flags == 1 << int(trt.BuilderFlag.DISABLE_TIMING_CACHE)
    config.clear_flag(trt.BuilderFlag.DISABLE_TIMING_CACHE)
    assert config.flags == 0


# ------------------------------------------------------------------------------------------------------- parser


def test_parser_errors(fake_tensorrt, tmp_path):
    trt = fake_tensorrt
    log = _recorder(trt)
    node = oh.make_node("NoSuchOp", ["x"], ["y"], name="mystery", domain="acme", plugin_namespace="acme",
                        plugin_version="2")
    model = _model([oh.make_node("Relu", ["x"], ["r"]), node], [_vi("x", TP.FLOAT, [2])], [_vi("y", TP.FLOAT, [2])],
                   opsets=(("", 17), ("acme", 1)))
    _, _, parser, ok = _parse(trt, model, log)
    assert not ok and parser.num_errors == 1
    err = parser.get_error(0)
    assert err.code() == trt.ErrorCode.UNSUPPORTED_NODE and str(err.code()) == "UNSUPPORTED_NODE"
    assert (err.node(), err.node_name(), err.node_operator()) == (1, "mystery", "NoSuchOp")
    assert err.desc() == "Plugin not found, are the plugin name, version, and namespace correct?"
    assert str(err).startswith("In node 1 with name: mystery and operator: NoSuchOp ")
    assert ("Searching for plugin: NoSuchOp, plugin_version: 2, plugin_namespace: acme"
            in [m for _, m in log.records])
    parser.clear_errors()
    assert parser.num_errors == 0 and parser.get_error(0) is None

    _, _, parser, ok = _parse(trt, model, log)
    assert not parser.parse(b"\x07 definitely not protobuf")
    assert parser.get_error(parser.num_errors - 1).code() == trt.ErrorCode.MODEL_DESERIALIZE_FAILED

    # nodes out of topological order: the input is not registered yet
    swapped = _model([oh.make_node("Relu", ["a"], ["y"]), oh.make_node("Neg", ["x"], ["a"])],
                     [_vi("x", TP.FLOAT, [2])], [_vi("y", TP.FLOAT, [2])])
    _, _, parser, ok = _parse(trt, swapped, log)
    assert not ok and parser.get_error(0).code() == trt.ErrorCode.INVALID_GRAPH and parser.get_error(0).node() == 0

    # a missing file: False, an ERROR log, and no ParserError (onnx-tensorrt parseFromFile)
    net = trt.Builder(log).create_network(0)
    parser = trt.OnnxParser(net, log)
    n_errors = len(log.errors())
    assert not parser.parse_from_file(str(tmp_path / "missing.onnx"))
    assert parser.num_errors == 0 and len(log.errors()) == n_errors + 1


def test_topk_above_3840_fails_in_the_parser(fake_tensorrt):
    trt = fake_tensorrt

    def topk_model(k):
        kk = onnx.numpy_helper.from_array(np.array([k], np.int64), "k")
        node = oh.make_node("TopK", ["x", "k"], ["v", "i"], name="pick", axis=1)
        return _model([node], [_vi("x", TP.FLOAT, [1, 5000])],
                      [_vi("v", TP.FLOAT, [1, k]), _vi("i", TP.INT64, [1, k])], [kk])

    _, _, parser, ok = _parse(trt, topk_model(3841), trt.Logger())
    assert not ok
    err = parser.get_error(0)
    assert (err.node_name(), err.node_operator(), err.code()) == ("pick", "TopK", trt.ErrorCode.UNSUPPORTED_NODE)
    assert "3840" in err.desc()
    _, net, _, ok = _parse(trt, topk_model(3840), trt.Logger())
    assert ok and net.num_layers == 1 and net.get_output(1).dtype == trt.int64


# ------------------------------------------------------------------------------------ build, plan and execution


def test_parse_build_serialize_deserialize_execute_matches_ort(fake_tensorrt):
    trt = fake_tensorrt
    w = onnx.numpy_helper.from_array(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "w")
    nodes = [oh.make_node("Mul", ["x", "w"], ["xw"]), oh.make_node("Relu", ["xw"], ["y"]),
             oh.make_node("Cast", ["x"], ["h"], to=TP.FLOAT16),
             oh.make_node("ArgMax", ["x"], ["idx"], axis=1, keepdims=0),
             oh.make_node("Greater", ["x", "zero"], ["pos"]), oh.make_node("And", ["pos", "flag"], ["m"]),
             oh.make_node("Cast", ["idx"], ["u"], to=TP.UINT8)]
    zero = onnx.numpy_helper.from_array(np.zeros((), np.float32), "zero")
    model = _model(nodes, [_vi("x", TP.FLOAT, [2, 3]), _vi("flag", TP.BOOL, [2, 3])],
                   [_vi("y", TP.FLOAT, [2, 3]), _vi("h", TP.FLOAT16, [2, 3]), _vi("idx", TP.INT64, [2]),
                    _vi("m", TP.BOOL, [2, 3]), _vi("u", TP.UINT8, [2])], [w, zero])
    log = trt.Logger()
    builder, network, parser, ok = _parse(trt, model, log)
    assert ok and (network.num_inputs, network.num_outputs, network.num_layers) == (2, 5, 7)
    assert [network.get_output(i).dtype for i in range(5)] == [trt.float32, trt.float16, trt.int64, trt.bool,
                                                                trt.uint8]
    network.name = "tiny"
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    engine = trt.Runtime(log).deserialize_cuda_engine(plan)
    engine = trt.Runtime(log).deserialize_cuda_engine(engine.serialize())  # a serialized engine round-trips
    assert engine.name == "tiny" and engine.num_io_tensors == 7
    assert [engine.get_tensor_name(i) for i in range(7)] == ["x", "flag", "y", "h", "idx", "m", "u"]
    assert engine.get_tensor_mode("y") == trt.TensorIOMode.OUTPUT
    assert engine.get_tensor_mode("nope") == trt.TensorIOMode.NONE
    assert engine.get_tensor_dtype("m") == trt.bool and engine.get_tensor_shape("idx") == (2,)
    assert engine.device_memory_size_v2 >= 256

    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 3)).astype(np.float32), "flag": rng.random((2, 3)) > 0.3}
    got = _execute(trt, engine, feeds)
    want = dict(zip(["y", "h", "idx", "m", "u"], _ref_session(model).run(None, feeds), strict=True))
    for name, value in want.items():
        assert got[name].dtype == value.dtype
        np.testing.assert_array_equal(got[name], value)
    assert trt._fake.executions == ["tiny"]


def test_parse_from_file_with_external_data_and_torch_buffers(fake_tensorrt, tmp_path):
    trt = fake_tensorrt
    model = _add_model()
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.bin", size_threshold=0)
    log = trt.Logger()
    builder = trt.Builder(log)
    network = builder.create_network()
    assert trt.OnnxParser(network, log).parse_from_file(str(tmp_path / "m.onnx"))
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert trt._fake.read_plan(plan)["onnx"]["path"] == str(tmp_path / "m.onnx")
    engine = trt.Runtime(log).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    x, y = torch.randn(2, 3), torch.empty(2, 3)
    context.set_tensor_address("x", x.data_ptr())
    context.set_tensor_address("y", y.data_ptr())
    assert context.get_tensor_address("y") == y.data_ptr()
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream if torch.cuda.is_available() else 0)
    torch.testing.assert_close(y, torch.relu(x + torch.arange(6.0).reshape(2, 3)))


def test_version_mismatch_refuses_to_deserialize(fake_tensorrt, monkeypatch):
    trt = fake_tensorrt
    plan = _build(trt, _add_model(), trt.Logger())
    assert trt._fake.read_plan(plan)["trt_version"] == "11.1.0"
    log = _recorder(trt)
    monkeypatch.setattr(trt, "__version__", "11.2.0")
    assert trt.Runtime(log).deserialize_cuda_engine(plan) is None
    assert any("expecting library version 11.2.0 got 11.1.0" in m for m in log.errors())
    assert trt.Runtime(log).deserialize_cuda_engine(b"ftrt not a plan") is None
    with pytest.raises(TypeError):
        trt.Runtime(log).deserialize_cuda_engine("a str is not a buffer")


def test_dynamic_input_needs_a_profile(fake_tensorrt):
    trt = fake_tensorrt
    log = _recorder(trt)
    model = _model([oh.make_node("Relu", ["x"], ["y"])], [_vi("x", TP.FLOAT, ["n", 3])], [_vi("y", TP.FLOAT, None)])
    builder, network, _, ok = _parse(trt, model, log)
    assert ok and network.get_input(0).shape == (-1, 3)
    assert builder.build_serialized_network(network, builder.create_builder_config()) is None
    assert any("optimization profile" in m for m in log.errors())


def test_execute_refuses_bad_bindings(fake_tensorrt):
    trt = fake_tensorrt
    log = _recorder(trt)
    engine = trt.Runtime(log).deserialize_cuda_engine(_build(trt, _add_model(), log))
    x, y = np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)

    context = engine.create_execution_context()
    assert not context.set_tensor_address("nope", x.ctypes.data)
    assert context.set_tensor_address("x", x.ctypes.data)
    assert not context.execute_async_v3(0)  # the output has no address
    assert "output tensor y" in log.errors()[-1]

    big = np.zeros(12, np.float32)  # x in big[0:6], y in big[4:10]: overlapping buffers
    assert context.set_tensor_address("x", big.ctypes.data)
    assert context.set_tensor_address("y", big.ctypes.data + 16)
    assert not context.execute_async_v3(0)
    assert "overlaps" in log.errors()[-1]
    assert context.set_tensor_address("y", y.ctypes.data)
    assert context.execute_async_v3(0) and trt._fake.executions == [engine.name]

    managed = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    managed.set_tensor_address("x", x.ctypes.data)
    managed.set_tensor_address("y", y.ctypes.data)
    assert not managed.execute_async_v3(0)  # no device memory
    small = np.zeros(engine.device_memory_size_v2 - 1, np.uint8)
    managed.set_device_memory(small.ctypes.data, small.nbytes)
    assert not managed.execute_async_v3(0)  # too little
    scratch = np.zeros(engine.device_memory_size_v2, np.uint8)
    managed.set_device_memory(scratch.ctypes.data, scratch.nbytes)
    assert managed.execute_async_v3(0) and (scratch == 0xFF).all()  # TensorRT owns the scratch during a launch
    assert len(trt._fake.executions) == 2


def test_timing_cache_is_shared_grown_and_serialized(fake_tensorrt, monkeypatch):
    trt = fake_tensorrt
    log = _recorder(trt)
    config_for_cache = trt.Builder(log).create_builder_config()
    cache = config_for_cache.create_timing_cache(b"")

    def with_cache(c):
        def configure(config):
            assert config.set_timing_cache(c, ignore_mismatch=False)
        return configure

    def relu_model(n):
        return _model([oh.make_node("Relu", ["x"], ["a"]), oh.make_node("Neg", ["a"], ["y"])],
                      [_vi("x", TP.FLOAT, [n])], [_vi("y", TP.FLOAT, [n])])

    empty = bytes(cache.serialize())
    assert _build(trt, relu_model(4), log, configure=with_cache(cache)) is not None
    first = bytes(cache.serialize())
    assert len(first) > len(empty)
    _build(trt, relu_model(4), log, configure=with_cache(cache))
    assert bytes(cache.serialize()) == first  # same layers: no new entries
    _build(trt, relu_model(8), log, configure=with_cache(cache))
    grown = bytes(cache.serialize())
    assert len(grown) > len(first)
    assert bytes(config_for_cache.create_timing_cache(grown).serialize()) == grown  # round trip
    assert config_for_cache.create_timing_cache(b"garbage") is None and log.errors()

    monkeypatch.setattr(trt, "__version__", "11.2.0")  # a cache from another TensorRT is refused unless told not to
    config = trt.Builder(log).create_builder_config()
    assert not config.set_timing_cache(config.create_timing_cache(grown), ignore_mismatch=False)
    assert config.set_timing_cache(config.create_timing_cache(grown), ignore_mismatch=True)


# ------------------------------------------------------------------------------------------ tensorrt.plugin


def _register_add_bias(trt, trtp, *, jit=False, aot=True, extra_scalar=False):
    """``tst::AddBias``: y = x + bias, with NDArray attributes (they survive the parser's INT32 fields)."""

    @trtp.register("tst::AddBias")
    def desc(x: trtp.TensorDesc, bias: npt.NDArray[np.int32], block: npt.NDArray[np.int32]) -> trtp.TensorDesc:
        return x.like()

    if jit:
        @trtp.impl("tst::AddBias")
        def run(x: trtp.Tensor, bias: npt.NDArray[np.int32], outputs: tuple[trtp.Tensor],
                stream: int) -> None:
            raise AssertionError("the fake never calls a JIT impl")

    if aot:
        @trtp.aot_impl("tst::AddBias")
        def compile_(x: trtp.TensorDesc, bias: npt.NDArray[np.int32], block: npt.NDArray[np.int32],
                     outputs: tuple[trtp.TensorDesc], tactic: int
                     ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams,
                                       trtp.SymExprs]:
            n = outputs[0].shape_expr.numel()
            assert x.has_shape and tuple(x.shape) == (4, 100) and x.dtype == trt.float32
            params = trtp.KernelLaunchParams()
            params.grid_x = trtp.cdiv(n, int(block[0]))
            params.block_x = int(block[0])
            args = [trtp.SymInt32(n), trtp.SymInt32(int(bias[0]))] + ([7] if extra_scalar else [])
            return b"add_bias", ".version 8.0\n// ptx\n", params, trtp.SymIntExprs.from_tuple(args)


def _bias_model(aot=None):
    attrs = {"plugin_namespace": "tst", "bias": 3, "block": 128}
    if aot is not None:
        attrs["aot"] = int(aot)
    node = oh.make_node("AddBias", ["x"], ["b"], name="bias0", domain="tst", **attrs)
    return _model([node, oh.make_node("Relu", ["b"], ["y"])], [_vi("x", TP.FLOAT, [4, 100])],
                  [_vi("y", TP.FLOAT, None)], opsets=(("", 17), ("tst", 1)))


def _bias_as_add(model):
    """Session-factory helper: ONNX Runtime runs AddBias as a standard Add."""
    proto = onnx.load_model_from_string(model)
    for node in proto.graph.node:
        if node.op_type == "AddBias":
            bias = next(a.i for a in node.attribute if a.name == "bias")
            proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(bias, np.float32), "bias_c"))
            node.op_type, node.domain = "Add", ""
            node.input.append("bias_c")
            del node.attribute[:]
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_plugin_registry_and_signature_validation(fake_tensorrt):
    trt = fake_tensorrt
    import tensorrt.plugin as trtp

    @trtp.register("tst::Foo")
    def foo(x: trtp.TensorDesc, scale: float, mode: str, table: npt.NDArray[np.float32]) -> trtp.TensorDesc:
        return x.like()

    registry = trt.get_plugin_registry()
    creator = registry.get_creator("Foo", "1", "tst")
    assert creator is not None and creator in registry.all_creators
    assert (creator.name, creator.plugin_version, creator.plugin_namespace) == ("Foo", "1", "tst")
    assert [f.name for f in creator.field_names] == ["scale", "mode", "table"]
    assert registry.get_creator("Foo", "2", "tst") is None and registry.get_creator("Foo", "1") is None
    assert trtp.op.tst.Foo.plugin_id == "tst::Foo"
    with pytest.raises(ValueError, match="already has a defintion"):
        trtp.register("tst::Foo")(foo)

    @trtp.register("tst::Lazy", lazy_register=True)
    def lazy(x: trtp.TensorDesc) -> trtp.TensorDesc:
        return x.like()

    assert registry.get_creator("Lazy", "1", "tst") is None

    def bad(sig_src):
        scope = {"trtp": trtp, "np": np, "npt": npt, "typing": typing}
        exec(sig_src, scope)
        return scope["f"]

    with pytest.raises(ValueError, match="does not have a type annotation"):
        trtp.register("tst::A")(bad("def f(x: trtp.TensorDesc, k) -> trtp.TensorDesc: ..."))
    with pytest.raises(ValueError, match="not a supported serializable type"):
        trtp.register("tst::B")(bad("def f(x: trtp.TensorDesc, k: list) -> trtp.TensorDesc: ..."))
    with pytest.raises(ValueError, match="reserved namespace"):
        trtp.register("trt::C")(bad("def f(x: trtp.TensorDesc) -> trtp.TensorDesc: ..."))
    with pytest.raises(ValueError, match="not allowed as a plugin attribute name"):
        trtp.register("tst::D")(bad("def f(x: trtp.TensorDesc, stream: int) -> trtp.TensorDesc: ..."))
    with pytest.raises(TypeError):  # string annotations: issubclass() in the wheel's validation raises
        trtp.register("tst::E")(bad("from __future__ import annotations\n"
                                    "def f(x: trtp.TensorDesc) -> trtp.TensorDesc: ..."))
    with pytest.raises(ValueError, match="does not match the expected input arg schema"):
        trtp.impl("tst::Foo")(bad("def f(x, outputs, scale, stream): ..."))
    with pytest.raises(ValueError, match="does not match the expected input arg schema"):  # tactic is required
        trtp.aot_impl("tst::Foo")(bad("def f(x, outputs) -> typing.Tuple[str, str, trtp.KernelLaunchParams, "
                                      "trtp.SymExprs]: ..."))
    with pytest.raises(ValueError, match="No return annotation"):
        trtp.aot_impl("tst::Foo")(bad("def f(x, outputs, tactic): ..."))
    with pytest.raises(ValueError, match="is not registered"):
        trtp.impl("tst::Nobody")(bad("def f(x, outputs, stream): ..."))
    trtp.impl("tst::Foo")(bad("def f(x, mode: str, outputs, stream, tactic: int) -> None: ..."))
    assert trtp.op.tst.Foo.impl_attr_names == ["mode"] and trtp.op.tst.Foo.expects_tactic

    fake = trtp.ShapeExpr(5)  # outside a shape callback every ShapeExpr is fake
    assert fake.is_fake and (fake + 1).is_fake
    with pytest.raises(RuntimeError):
        bool(fake)
    with pytest.raises(TypeError):
        2 * fake  # no reflected operators in the wheel
    with pytest.raises(AttributeError):
        trtp.KernelLaunchParams().grid_w = 1


def test_aot_plugin_builds_kernel_into_plan_and_runs_through_session_hook(fake_tensorrt):
    trt = fake_tensorrt
    import tensorrt.plugin as trtp

    _register_add_bias(trt, trtp)
    log = _recorder(trt)
    builder, network, parser, ok = _parse(trt, _bias_model(aot=True), log)
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    assert network.get_output(0).shape == (4, 100)  # the plugin's output shape flowed on through the Relu
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    (entry,) = trt._fake.read_plan(plan)["plugins"]
    assert (entry["node"], entry["impl"], entry["request"], entry["kernel_name"]) == ("bias0", "AOT", "STRICT_AOT",
                                                                                     "add_bias")
    assert entry["launch_params"] == {"grid_x": 4, "grid_y": 1, "grid_z": 1, "block_x": 128, "block_y": 1,
                                      "block_z": 1, "shared_mem": 0}
    assert entry["extra_args"] == [400, 3] and entry["ptx_size"] == len(".version 8.0\n// ptx\n")

    trt._fake.reset()  # an AOT engine needs no plugin definition at runtime
    engine = trt.Runtime(log).deserialize_cuda_engine(plan)
    assert engine is not None
    x = np.random.default_rng(1).standard_normal((4, 100)).astype(np.float32)
    with pytest.raises(RuntimeError, match="set_session_factory"):  # plain ONNX Runtime has no AddBias
        _execute(trt, engine, {"x": x})
    assert trt._fake.set_session_factory(_bias_as_add) is None
    for _ in range(2):
        got = _execute(trt, engine, {"x": x})
    np.testing.assert_allclose(got["y"], np.maximum(x + 3, 0), rtol=1e-6)
    assert trt._fake.executions == [engine.name, engine.name]


def test_plugin_impl_choice_follows_network_flags(fake_tensorrt):
    trt = fake_tensorrt
    import tensorrt.plugin as trtp

    _register_add_bias(trt, trtp, jit=True, aot=True)
    log = _recorder(trt)
    _, _, parser, ok = _parse(trt, _bias_model(), log)  # both impls, no aot attribute, no PREFER_* flag
    assert not ok and parser.get_error(0).desc() == "Could not create the plugin."
    assert any("PREFER_AOT_PYTHON_PLUGINS" in m for m in log.errors())

    flag = trt.NetworkDefinitionCreationFlag
    aot_plan = _build(trt, _bias_model(), log, flags=1 << int(flag.PREFER_AOT_PYTHON_PLUGINS))
    assert trt._fake.read_plan(aot_plan)["plugins"][0]["impl"] == "AOT"
    jit_plan = _build(trt, _bias_model(), log, flags=1 << int(flag.PREFER_JIT_PYTHON_PLUGINS))
    (jit,) = trt._fake.read_plan(jit_plan)["plugins"]
    # only the impl's attributes, as the parser typed them (INT -> INT32)
    assert jit["impl"] == "JIT" and [(f["name"], f["type"]) for f in jit["fields"]] == [("bias", "INT32")]
    _, _, _, ok = _parse(trt, _bias_model(aot=False), log)  # aot=0 asks for JIT whatever the flags
    assert ok

    runtime = trt.Runtime(log)
    assert runtime.deserialize_cuda_engine(jit_plan) is not None
    trt._fake.reset()  # a JIT engine needs its creator registered in this process
    assert runtime.deserialize_cuda_engine(jit_plan) is None
    assert "IPluginCreator not found" in log.errors()[-1]
    assert runtime.deserialize_cuda_engine(aot_plan) is not None


def test_plugin_build_failures(fake_tensorrt):
    trt = fake_tensorrt
    import tensorrt.plugin as trtp

    _register_add_bias(trt, trtp, extra_scalar=True)  # SymIntExprs.from_tuple([.., 7]): 7 is not a SymInt32
    log = _recorder(trt)
    assert _build(trt, _bias_model(aot=True), log) is None
    assert "SymInt32" in log.errors()[-1]
    _, _, parser, ok = _parse(trt, _bias_model(aot=False), log)  # JIT requested, none defined
    assert not ok and "JIT implementation requested" in log.errors()[-1]


def test_scalar_plugin_attributes_follow_numpy(fake_tensorrt):
    """The wheel turns a parser field (a 1-element array) into ``int(array)``: NumPy >= 2.4 refuses that."""
    trt = fake_tensorrt
    import tensorrt.plugin as trtp

    @trtp.register("tst::Scale")
    def desc(x: trtp.TensorDesc, k: int) -> trtp.TensorDesc:
        return x.like()

    @trtp.impl("tst::Scale")
    def run(x, k, outputs, stream):
        pass

    node = oh.make_node("Scale", ["x"], ["y"], plugin_namespace="tst", k=2)
    model = _model([node], [_vi("x", TP.FLOAT, [3])], [_vi("y", TP.FLOAT, [3])])
    try:
        int(np.array([2], np.int32))
        scalar_ok = True
    except TypeError:
        scalar_ok = False
    _, _, parser, ok = _parse(trt, model, trt.Logger(trt.Logger.INTERNAL_ERROR))
    assert ok == scalar_ok
    if not ok:
        assert parser.get_error(0).desc() == "Could not create the plugin."
