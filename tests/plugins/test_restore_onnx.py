"""FastVARRestore's exportable spellings: the custom op, the standard-op form, the ONNX node and its ORT kernel."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastvar.plugins.restore import area_matrix, restore_custom, restore_reference, restore_standard

SIZES = [((24, 24), (40, 40)), ((36, 36), (64, 64)), ((32, 32), (48, 48)), ((24, 32), (40, 48))]
EXPORT_HW = ((24, 32), (40, 48))


def _case(cache_hw, out_hw, batch, k_mode, dtype, seed=0, c=8):
    g = torch.Generator().manual_seed(seed)
    n = out_hw[0] * out_hw[1]
    k = {"all": n, "one": 1, "random": int(torch.randint(2, n, (1,), generator=g))}[k_mode]
    cache = torch.randn(batch, cache_hw[0] * cache_hw[1], c, generator=g).to(dtype)
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(batch)])
    kept = torch.randn(batch, k, c, generator=g).to(dtype)
    return kept, idx, cache


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-6) -> None:
    """|a - b| <= rel * max|b|: the summation-order difference is relative to the data's scale."""
    scale = b.float().abs().max().item()
    err = (a.float() - b.float()).abs().max().item()
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel:g} * {scale:.3g}"


# --------------------------------------------------------------------------------------------- torch side


@pytest.mark.parametrize("n_in,n_out", [(24, 40), (36, 64), (32, 48), (40, 24), (1, 5), (5, 5)])
def test_area_matrix_is_interpolate_area(n_in, n_out):
    # Resizing the identity with area mode gives each output's weights over the inputs.
    eye = torch.eye(n_in).unsqueeze(0)  # (1, n_in "channels", n_in "length")
    expect = F.interpolate(eye, size=n_out, mode="area")[0].T  # (n_out, n_in)
    got = area_matrix(n_in, n_out)
    assert got.shape == (n_out, n_in) and got.dtype == torch.float32
    assert torch.equal((got > 0), (expect > 0)), "window bounds differ"
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-7)
    torch.testing.assert_close(got.sum(1), torch.ones(n_out))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("k_mode", ["all", "one", "random"])
@pytest.mark.parametrize("cache_hw,out_hw", SIZES)
def test_torch_spellings_match_reference(cache_hw, out_hw, k_mode, batch, dtype):
    kept, idx, cache = _case(cache_hw, out_hw, batch, k_mode, dtype, seed=batch * 7 + len(k_mode))
    ref = restore_reference(kept, idx, cache, cache_hw, out_hw)

    custom = restore_custom(kept, idx, cache, cache_hw, out_hw)
    assert custom.dtype == dtype and torch.equal(custom, ref)

    std = restore_standard(kept, idx, cache, cache_hw, out_hw)
    assert std.shape == ref.shape and std.dtype == dtype
    rows = idx.unsqueeze(-1).expand(-1, -1, cache.shape[-1])
    assert torch.equal(std.gather(1, rows), kept), "kept tokens must be copied, not recomputed"
    if dtype == torch.float32:
        _close(std, ref)
    else:  # float32 maths rounded once to the low-precision type: at most one ulp apart
        torch.testing.assert_close(std, ref, rtol=torch.finfo(dtype).eps, atol=0)


def test_custom_op_casts_inputs_like_the_reference():
    kept, idx, cache = _case((24, 24), (40, 40), 2, "random", torch.float32)
    ref = restore_reference(kept.double(), idx.int(), cache, (24, 24), (40, 40))
    assert torch.equal(restore_custom(kept.double(), idx.int(), cache, (24, 24), (40, 40)), ref)
    fake = torch.library.opcheck(torch.ops.fastvar.restore.default, (kept, idx, cache, 24, 24, 40, 40))
    assert all(v == "SUCCESS" for v in fake.values()), fake


def test_package_import_stays_light():
    code = (
        "import sys, fastvar.plugins.restore as r; r.restore_custom; "
        "bad = [m for m in ('onnx', 'onnxruntime', 'onnxscript', 'onnxruntime_extensions') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------------------------- onnx side


@pytest.fixture(scope="module")
def onnx_mod():
    return pytest.importorskip("onnx", reason="the onnx package is not installed")


@pytest.fixture(scope="module")
def op_mod(onnx_mod):
    pytest.importorskip("onnxscript", reason="the onnxscript package (dynamo exporter) is not installed")
    from fastvar.plugins.restore import onnx_op

    return onnx_op


@pytest.fixture(scope="module")
def ort_mod(onnx_mod):
    pytest.importorskip("onnxruntime", reason="the onnxruntime package is not installed")
    pytest.importorskip("onnxruntime_extensions", reason="the onnxruntime-extensions package is not installed")
    from fastvar.plugins.restore import ort_op

    return ort_op


def _node_model(onnx, op_mod, attrs=None):
    h = onnx.helper
    fl = onnx.TensorProto.FLOAT
    attrs = {"cache_h": 24, "cache_w": 32, "out_h": 40, "out_w": 48} if attrs is None else attrs
    node = h.make_node(op_mod.OP_TYPE, ["kept", "idx", "cache"], ["out"], domain=op_mod.DOMAIN, **attrs)
    graph = h.make_graph(
        [node],
        "g",
        [
            h.make_tensor_value_info("kept", fl, ["B", "K", 8]),
            h.make_tensor_value_info("idx", onnx.TensorProto.INT64, ["B", "K"]),
            h.make_tensor_value_info("cache", fl, ["B", 768, 8]),
        ],
        [h.make_tensor_value_info("out", fl, [None, None, None])],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 20), h.make_opsetid(op_mod.DOMAIN, 1)])


def test_schema_registration_checks_and_infers(onnx_mod, op_mod):
    onnx = onnx_mod
    op_mod.register_schema()
    op_mod.register_schema()  # idempotent
    schema = onnx.defs.get_schema(op_mod.OP_TYPE, 1, op_mod.DOMAIN)
    assert [i.name for i in schema.inputs] == ["kept", "kept_idx", "cache"]
    assert {a: schema.attributes[a].required for a in schema.attributes} == {
        "cache_h": True, "cache_w": True, "out_h": True, "out_w": True,
        "plugin_namespace": False, "plugin_version": False,
    }
    model = _node_model(onnx, op_mod)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type
    assert out.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.shape.dim] == ["B", 40 * 48, 8]

    bad = _node_model(onnx, op_mod, {"cache_h": 24, "cache_w": 32, "out_h": 40})  # out_w missing
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(bad, full_check=True)


class _Restore(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, kept, kept_idx, cache):
        return self.fn(kept, kept_idx, cache, *EXPORT_HW)


def _export(fn, table=None):
    kept, idx, cache = _case(*EXPORT_HW, batch=2, k_mode="random", dtype=torch.float32, seed=11)
    dyn = {"kept": {0: "B", 1: "K"}, "kept_idx": {0: "B", 1: "K"}, "cache": {0: "B"}}
    prog = torch.onnx.export(
        _Restore(fn), (kept, idx, cache), dynamo=True, dynamic_shapes=dyn, custom_translation_table=table,
        verbose=False,
    )
    return prog.model_proto


@pytest.fixture(scope="module")
def plugin_model(op_mod):
    return _export(restore_custom, op_mod.translation_table())


@pytest.fixture(scope="module")
def standard_model(onnx_mod):
    pytest.importorskip("onnxscript", reason="the onnxscript package (dynamo exporter) is not installed")
    return _export(restore_standard)


def _run(ort_mod, model, inputs):
    import onnxruntime

    so = ort_mod.session_options()
    sess = onnxruntime.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs, strict=True)}
    return torch.from_numpy(sess.run(None, feeds)[0])


def test_plugin_export_is_one_node(onnx_mod, op_mod, plugin_model):
    onnx = onnx_mod
    nodes = list(plugin_model.graph.node)
    assert [(n.op_type, n.domain) for n in nodes] == [("FastVARRestore", "fastvar")]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs == {
        "cache_h": 24, "cache_w": 32, "out_h": 40, "out_w": 48,
        "plugin_namespace": b"fastvar", "plugin_version": b"1",
    }
    types = {a.name: a.type for a in nodes[0].attribute}
    assert all(types[k] == onnx.AttributeProto.INT for k in ("cache_h", "cache_w", "out_h", "out_w"))
    assert {o.domain: o.version for o in plugin_model.opset_import}.get("fastvar") == 1
    onnx.checker.check_model(plugin_model, full_check=True)


def test_standard_export_uses_standard_ops_only(onnx_mod, standard_model):
    assert {n.domain for n in standard_model.graph.node} <= {"", "ai.onnx"}
    assert "ScatterElements" in {n.op_type for n in standard_model.graph.node}
    assert {o.domain for o in standard_model.opset_import} <= {"", "ai.onnx"}
    onnx_mod.checker.check_model(standard_model, full_check=True)


def test_for_onnxruntime_rewrites_a_copy(ort_mod, plugin_model):
    before = plugin_model.SerializeToString()
    rt = ort_mod.for_onnxruntime(plugin_model)
    assert plugin_model.SerializeToString() == before
    assert [(n.op_type, n.domain) for n in rt.graph.node] == [("FastVARRestore", "ai.onnx.contrib")]
    assert {o.domain for o in rt.opset_import} == {"", "ai.onnx.contrib"}


@pytest.mark.parametrize("batch,k_mode", [(1, "one"), (3, "random"), (2, "all")])
def test_onnx_variants_run_in_ort_and_agree(ort_mod, plugin_model, standard_model, batch, k_mode):
    # Shapes differ from the export example: B and K are dynamic in both graphs.
    inputs = _case(*EXPORT_HW, batch=batch, k_mode=k_mode, dtype=torch.float32, seed=batch)
    ref = restore_reference(*inputs, *EXPORT_HW)
    plugin = _run(ort_mod, ort_mod.for_onnxruntime(plugin_model), inputs)
    standard = _run(ort_mod, standard_model, inputs)
    assert plugin.shape == standard.shape == ref.shape
    _close(plugin, ref)
    _close(standard, ref)
    _close(plugin, standard)
    assert torch.equal(plugin, ref)  # the NumPy kernel sums in torch's order (see ort_op.area_upsample_np)


@pytest.mark.parametrize("cache_hw,out_hw", SIZES + [((40, 40), (24, 24)), ((7, 3), (2, 11))])
def test_numpy_kernel_is_bit_exact(ort_mod, cache_hw, out_hw):
    kept, idx, cache = _case(cache_hw, out_hw, 3, "random", torch.float32, c=16)
    ref = restore_reference(kept, idx, cache, cache_hw, out_hw)
    got = ort_mod.restore_np(kept.numpy(), idx.numpy(), cache.numpy(), cache_hw, out_hw)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref.numpy())


class _RestoreAdd(torch.nn.Module):
    def forward(self, residual, kept, kept_idx, cache):
        from fastvar.plugins.restore import restore_add_custom

        return restore_add_custom(residual, kept, kept_idx, cache, *EXPORT_HW)


def test_fused_add_exports_one_node_and_runs_in_ort_equal_to_the_reference(onnx_mod, op_mod, ort_mod):
    from fastvar.plugins.restore import restore_add_reference

    onnx = onnx_mod
    kept, idx, cache = _case(*EXPORT_HW, batch=2, k_mode="random", dtype=torch.float32, seed=5)
    g = torch.Generator().manual_seed(6)
    residual = torch.randn(2, EXPORT_HW[1][0] * EXPORT_HW[1][1], kept.shape[2], generator=g)
    want = restore_add_reference(residual, kept, idx, cache, *EXPORT_HW)
    assert torch.equal(_RestoreAdd()(residual, kept, idx, cache), want)
    model = torch.onnx.export(_RestoreAdd(), (residual, kept, idx, cache), dynamo=True, verbose=False,
                              custom_translation_table=op_mod.translation_table()).model_proto
    assert [(n.op_type, n.domain) for n in model.graph.node] == [("FastVARRestoreAdd", "fastvar")]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs["plugin_namespace"] == b"fastvar" and attrs["out_h"] == EXPORT_HW[1][0]
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type
    assert [d.dim_value for d in out.shape.dim] == list(residual.shape) and out.elem_type == onnx.TensorProto.FLOAT
    got = _run(ort_mod, ort_mod.for_onnxruntime(model), (residual, kept, idx, cache))
    assert torch.equal(got, want)  # the NumPy kernel restores in torch's order, then one fp32 add
