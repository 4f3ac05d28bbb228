"""Precision lives in the graphs: bf16 graphs, run by ONNX's reference evaluator, agree with the bf16
PyTorch reference (ONNX Runtime's CPU provider has no bf16 kernels; TensorRT 11 is strongly typed)."""

from __future__ import annotations

import onnx
import pytest
from conftest import export_tiny

from fastvar.export.models.factory import build_pair
from fastvar.export.schedules import scale_schedule
from fastvar.family import artifact_geometry
from fastvar.manifest import Artifact
from fastvar.runtime.backends import reference_backend
from fastvar.runtime.backends.torch_ref import TorchBackend
from fastvar.runtime.chain import SamplingSettings, generate
from fastvar.runtime.io import load_text_embeddings
from fastvar.runtime.parity import kept_flips, logit_errors

pytest.importorskip("ml_dtypes", reason="onnx.reference needs ml_dtypes for bfloat16 arithmetic")

# Of the logit scale, outside flipped positions. bf16 carries 8 bits of mantissa (2^-8 = 3.9e-3): the graph
# rounds where the reference fuses (MatMul then Add where PyTorch's addmm rounds once), and the random
# tiny model amplifies single-ulp differences to about the same size as the fp32-vs-bf16 gap itself.
BF16_TOLERANCE = 3e-2


@pytest.fixture(scope="module")
def bf16_artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16") / "a"
    # 256 px (7 steps) with two pruned steps: the bf16 restore caches and kept-token paths are exercised
    export_tiny(root, "12:0.4,16:0.5", res="256", precision="bf16", text_len=8, restore_op="custom")
    return Artifact.load(root)


def test_bf16_graphs_carry_the_precision_policy(bf16_artifact):
    """bf16 where upstream computes in bf16 (block matmuls, attention, K/V); fp32 residual and head."""
    art = bf16_artifact
    g = art.graph("step_05")
    dtypes = {t.name: t.dtype for t in g.inputs + g.outputs}
    assert dtypes["past_k_0"] == dtypes["new_v_3"] == dtypes["ca_k_1"] == dtypes["cache_sa_0"] == "bfloat16"
    assert dtypes["logits"] == dtypes["gss"] == dtypes["cache_ca_0"] == dtypes["cache_ffn_0"] == "float32"
    model = onnx.load(str(art.graph_path("step_05")))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
    bf16, f32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    assert types["block_chunks.0.module.0.sa.mat_qkv.weight.T"] == bf16
    assert types["head.weight.T"] == f32 and types["word_embed.weight.T"] == f32
    ops = {(n.op_type, n.domain) for n in model.graph.node}
    assert ("LayerNormalization", "") in ops and ("FastVARRestore", "fastvar") in ops


def test_bf16_graphs_match_the_bf16_reference_under_onnx_reference(bf16_artifact):
    from fastvar.runtime.backends.onnx_reference import OnnxReferenceBackend

    art = bf16_artifact
    d = art.data
    sched, plan, geom = scale_schedule(d["resolution"], d["aspect"]), art.plan(), artifact_geometry(art)
    text = load_text_embeddings(None, 1, d["model"]["config"]["text_channels"], default_len=8)
    ref_be, got_be = reference_backend(art), OnnxReferenceBackend(art)
    settings = SamplingSettings.uniform(1, 0, 4.0, 0.5)
    ref = generate(ref_be, sched, plan, geom, *text, settings, keep_logits=True)
    got = generate(got_be, sched, plan, geom, *text, settings, force_tokens=ref.tokens, keep_logits=True)
    # The contract compares outside positions whose kept/pruned status flipped: in bf16 a score near the
    # K boundary lands on either side, and a flipped token's output is a different computation.
    tokens = {s["index"]: s["tokens"] for s in d["scales"]}
    flipped, overlaps = kept_flips(ref_be.kept_sets, got_be.kept_sets, tokens)
    print("bf16 kept-set overlap per pruned step:", {k: f"{v:.3f}" for k, v in overlaps.items()})
    assert min(overlaps.values()) >= 0.9
    errors = logit_errors(ref.logits, got.logits, flipped)
    print("bf16 teacher-forced max error / logit scale:", {k: f"{e:.1e}" for k, e in errors.items()})
    assert len(errors) == 7 and max(errors.values()) <= BF16_TOLERANCE
    # The graphs' deviation is bf16 rounding noise, not an error: it stays within twice the distance
    # between the fp32 and bf16 references on the same weights and tokens (a misplaced cast, an overflow
    # or a wrong op lands far outside that band).
    fp32 = TorchBackend(*build_pair("infinity-tiny", random_init=True, precision="fp32"), sched, plan)
    f32 = generate(fp32, sched, plan, geom, *text, settings, force_tokens=ref.tokens, keep_logits=True)
    gap = logit_errors(ref.logits, f32.logits, flipped)
    print("fp32 vs bf16 reference:", {k: f"{e:.1e}" for k, e in gap.items()})
    assert max(errors.values()) <= 2 * max(gap.values())
