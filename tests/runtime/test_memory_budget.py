"""The run's memory plan (runtime.memory_budget) and a graph's working memory (fastvar.graph_memory), on inputs
small enough to count by hand; the plan against real runs is in test_run_memory.py."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastvar.graph_memory import GraphMemoryError, graph_memory, stream_last
from fastvar.runtime.memory_budget import (
    GIB,
    KERNEL_SLACK,
    RUNTIME_HOST,
    RUNTIME_PER_NODE,
    DoesNotFit,
    Figures,
    available_host_memory,
    cgroup_headroom,
    check_run_memory,
    plan_run,
)

KIB = 1024


def _graph(a_dims=(256,)) -> onnx.ModelProto:
    """x -> Relu -> a -> Reshape (shares a) -> b; w*w folded at load -> w2; b + w2 -> c; concat(c, c) -> d."""
    f32 = TensorProto.FLOAT
    w = numpy_helper.from_array(np.ones(256, np.float32), "w")
    shape = numpy_helper.from_array(np.array([256], np.int64), "shape")
    nodes = [helper.make_node("Mul", ["w", "w"], ["w2"], name="fold"),
             helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Reshape", ["a", "shape"], ["b"], name="view"),
             helper.make_node("Add", ["b", "w2"], ["c"], name="add"),
             helper.make_node("Concat", ["c", "c"], ["d"], axis=0, name="cat")]
    vi = [helper.make_tensor_value_info(n, f32, list(a_dims) if n == "a" else [256]) for n in ("w2", "a", "b", "c")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f32, [256])],
                          [helper.make_tensor_value_info("d", f32, [512])], [w, shape], value_info=vi)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def test_working_memory_is_the_most_bytes_alive_at_once_in_node_order():
    mem = graph_memory(_graph())
    # relu: a (1 KiB); add: a + c (a is read by add through its reshape); cat: c + d (a freed after add)
    assert mem.working == 3 * KIB and mem.peak_node == "cat"
    # the session keeps w, the shape and the folded w*w for its life
    assert mem.resident == KIB + 8 + KIB


def test_outputs_bound_to_memory_owned_elsewhere_are_not_counted():
    assert graph_memory(_graph(), bound=lambda n: n == "d").working == 2 * KIB


def test_a_dynamic_shape_is_refused_naming_the_tensor():
    with pytest.raises(GraphMemoryError, match="g: tensor 'a' has a dynamic dimension 'n'"):
        graph_memory(_graph(a_dims=("n",)), "g")
    m = _graph()
    del m.graph.value_info[1]  # "a": no declared shape
    with pytest.raises(GraphMemoryError, match="'a' has no declared type and shape"):
        graph_memory(m, "g")


def _fig(**kw) -> Figures:
    base = dict(label="m", weights=8 * GIB, constants=GIB // 4, kv=2 * GIB, caches=GIB // 2, conditioning=GIB // 16,
                loop_working=GIB, loop_note="step", decode_working=5 * GIB, decode_note="decoder", sessions=3,
                nodes=1000, image=12 * 2**20, largest_tensor=GIB // 8, largest_engine=GIB // 2)
    return Figures(**{**base, **kw})


def test_the_peak_is_what_the_run_holds_plus_the_larger_phase_not_their_sum():
    host, gpu = plan_run(_fig(), "onnxruntime", "cpu")
    assert gpu is None
    run = RUNTIME_HOST["cpu"] + 1000 * RUNTIME_PER_NODE + 8 * GIB + GIB // 4
    loop = 2 * GIB + GIB // 2 + GIB // 16 + GIB + int(KERNEL_SLACK * GIB)
    decode = 5 * GIB + 3 * 12 * 2**20
    assert (host.phase_bytes("run"), host.phase_bytes("loop"), host.phase_bytes("decode")) == (run, loop, decode)
    assert host.peak == run + max(loop, decode) and host.peak_phase == "decode"
    small = plan_run(_fig(decode_working=GIB), "onnxruntime", "cpu")[0]
    assert small.peak == run + loop and small.peak_phase == "loop"


def test_instances_share_the_weights_and_hold_their_own_state():
    one = plan_run(_fig(), "onnxruntime", "cpu")[0]
    three = plan_run(_fig(), "onnxruntime", "cpu", instances=3)[0]
    assert three.phase_bytes("run") == one.phase_bytes("run")
    assert three.phase_bytes("loop") == 3 * one.phase_bytes("loop")
    assert three.peak == one.phase_bytes("run") + 3 * one.phase_bytes("decode")
    assert "3 instances" in three.label


def test_on_a_gpu_the_host_holds_the_runtime_and_what_loading_stages():
    host, gpu = plan_run(_fig(), "tensorrt", "cuda")
    assert [it.name for it in host.items] == ["runtime", "load staging"]
    assert host.item("load staging").bytes == GIB // 8 + GIB // 2  # one tensor and one engine file
    assert gpu.phase_bytes("run") == 8 * GIB + GIB // 4
    assert "kernel temporaries" not in [it.name for it in gpu.items]  # measured for ONNX Runtime's CPU kernels only
    ort_host, ort_gpu = plan_run(_fig(), "onnxruntime", "cuda")
    assert ort_host.item("load staging").bytes == GIB // 8 and ort_gpu.item("kernel temporaries").bytes > 0


@pytest.mark.parametrize(("backend", "device"), [("tensorrt", "cpu"), ("onnx", "cpu")])
def test_a_backend_without_a_plan_on_that_device_is_refused(backend, device):
    with pytest.raises(ValueError, match="accepted: onnxruntime on cpu/cuda, tensorrt on cuda"):
        plan_run(_fig(), backend, device)


def test_a_plan_that_does_not_fit_names_the_shortfall_and_the_largest_items():
    host, _ = plan_run(_fig(), "onnxruntime", "cpu")
    with pytest.raises(DoesNotFit) as err:
        check_run_memory(host, None, max_memory_gib=10)
    msg = str(err.value)
    assert f"needs {host.peak / GIB:.2f} GiB of host memory" in msg
    assert "10.00 GiB is available (--max-memory 10)" in msg
    assert f"short by {(host.peak - 10 * GIB) / GIB:.2f} GiB" in msg and "weights 8.00 GiB" in msg
    lines = check_run_memory(host, None, max_memory_gib=64)
    assert lines == [f"host memory: planned peak {host.peak / GIB:.2f} GiB (decode), 64.00 GiB available "
                     "(--max-memory 64)"]


def _tree(tmp_path, cgroup: str, files: dict[str, str], meminfo_kib: int | None = 20 * 2**20):
    proc, root = tmp_path / "proc", tmp_path / "cg"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    if meminfo_kib is not None:
        (proc / "meminfo").write_text(f"MemTotal: 99 kB\nMemAvailable: {meminfo_kib} kB\n")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return proc, root


def test_cgroup_v1_takes_the_tightest_limit_of_the_group_and_its_ancestors(tmp_path):
    g = 2**30
    proc, root = _tree(tmp_path, "4:memory:/a/b\n3:cpu:/x\n", {
        "memory/a/b/memory.limit_in_bytes": str(8 * g), "memory/a/b/memory.usage_in_bytes": str(3 * g),
        "memory/a/b/memory.stat": f"cache 5\ntotal_inactive_file {g}\n",
        "memory/a/memory.limit_in_bytes": str(5 * g), "memory/a/memory.usage_in_bytes": str(4 * g),
        "memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": str(4 * g),
    })
    free, where = cgroup_headroom(proc, root)
    assert free == g and "memory/a " in where + " "  # /a: 5 GiB limit less 4 in use; /a/b: 8 less (3 - 1)
    assert available_host_memory(proc, root)[0] == g  # smaller than MemAvailable (20 GiB)


def test_cgroup_v2_counts_inactive_file_pages_as_reclaimable_and_max_as_no_limit(tmp_path):
    g = 2**30
    proc, root = _tree(tmp_path, "0::/svc\n", {"svc/memory.max": str(6 * g), "svc/memory.current": str(5 * g),
                                               "svc/memory.stat": f"anon 1\ninactive_file {2 * g}\n"})
    assert cgroup_headroom(proc, root)[0] == 3 * g
    proc, root = _tree(tmp_path / "nolimit", "0::/svc\n", {"svc/memory.max": "max", "svc/memory.current": "5"})
    assert cgroup_headroom(proc, root) is None
    free, where = available_host_memory(proc, root)
    assert free == 20 * g and "MemAvailable" in where


def test_without_proc_the_available_memory_is_unknown_and_not_checked(tmp_path):
    proc, root = _tree(tmp_path, "", {}, meminfo_kib=None)
    assert available_host_memory(proc, root) is None


def _blocks(n_blocks: int, size: int) -> onnx.ModelProto:
    """x flows through blocks; block i adds sigmoid(c_i), a value computed from a state input alone (as a
    pruned block upsamples its restore cache), written in the natural block-by-block order."""
    f32 = TensorProto.FLOAT
    nodes, prev = [], "x"
    for i in range(n_blocks):
        nodes += [helper.make_node("Sigmoid", [f"c{i}"], [f"t{i}"], name=f"state{i}"),
                  helper.make_node("Add", [prev, f"t{i}"], [f"x{i}"], name=f"block{i}")]
        prev = f"x{i}"
    ins = [helper.make_tensor_value_info(n, f32, [size]) for n in ["x", *(f"c{i}" for i in range(n_blocks))]]
    vi = [helper.make_tensor_value_info(f"{p}{i}", f32, [size]) for i in range(n_blocks) for p in "tx"][:-1]
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info(prev, f32, [size])], value_info=vi)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def test_state_first_order_holds_every_state_value_until_its_block():
    model = _blocks(6, 1024)
    first = stream_last(model, {"x"})
    assert [n.name for n in first.graph.node] == [*(f"state{i}" for i in range(6)), *(f"block{i}" for i in range(6))]
    assert graph_memory(model).working == 3 * 4096  # block by block: a state value, the sum in and out
    assert graph_memory(first).working == 7 * 4096  # six state values held, then a sum
    assert stream_last(model, {"y"}) is model  # a graph without the stream input is left as it is


def test_onnxruntime_holds_at_most_the_state_first_plan_and_less_given_the_state_first_file():
    """ONNX Runtime itself, without an arena, on the graph as written: it runs every state node first (the
    plan's upper bound, met exactly here); given the state-first file it runs block by block instead."""
    import onnxruntime as ort

    from fastvar.runtime.memory_probe import process_memory, reset_peak

    size = 8 * 2**20  # 32 MiB per tensor
    model = _blocks(6, size)
    feeds = {f"c{i}": np.full(size, 0.5, np.float32) for i in range(6)} | {"x": np.ones(size, np.float32)}
    measured = {}
    for what, m in (("as written", model), ("state first", stream_last(model, {"x"}))):
        so = ort.SessionOptions()
        so.enable_cpu_mem_arena = False
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        s.run(None, feeds)
        before = process_memory().rss
        if not reset_peak():
            pytest.skip("this kernel does not let a process reset its resident peak (/proc/self/clear_refs)")
        out = s.run(None, feeds)
        measured[what] = process_memory().peak - before
        del out
    plan = graph_memory(stream_last(model, {"x"})).working
    returned = size * 4  # Python's run hands the output back as a new array
    mib = {k: v // 2**20 for k, v in measured.items()}
    assert all(m <= plan + returned + 4 * 2**20 for m in measured.values()), (plan // 2**20, mib)
    assert measured["as written"] >= plan, mib
    assert measured["state first"] <= measured["as written"] - 3 * size * 4, mib
