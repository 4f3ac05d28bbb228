"""HART in bf16 (issue 19): the graphs carry the precision policy, pass TensorRT's static check, and under ONNX's
reference evaluator (fp32 accumulation, as GPU GEMMs) agree with the bf16 PyTorch reference within the bf16
tolerance and within twice the fp32-vs-bf16 distance; the torch backend runs a release folder in bf16."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from fastvar.cli import build_cmd, export_cmd, run_cmd
from fastvar.export.artifact import ExportOptions, plan_memory
from fastvar.export.models.factory import build_pair
from fastvar.export.models.hart_checkpoint import save_hart_folder, save_tokenizer_folder
from fastvar.family import artifact_geometry, artifact_schedule
from fastvar.manifest import Artifact
from fastvar.runtime.backends import reference_backend
from fastvar.runtime.backends.hart_torch import HARTTorchBackend
from fastvar.runtime.chain import SamplingSettings, generate
from fastvar.runtime.parity import kept_flips, logit_errors

pytest.importorskip("ml_dtypes", reason="onnx.reference needs ml_dtypes for bfloat16 arithmetic")

# As for Infinity (tests/runtime/test_precision.py): of the logit scale, outside flipped positions.
BF16_TOLERANCE = 3e-2


@pytest.fixture(scope="module")
def bf16_hart(tmp_path_factory):
    """The issue's command: hart-tiny at 1024 with FastVAR in bf16, for TensorRT (custom restore node)."""
    root = tmp_path_factory.mktemp("hart_bf16") / "a"
    r = CliRunner().invoke(export_cmd, ["--model", "hart-tiny", "--random-init", "--res", "1024", "--schedule",
                                        "fastvar", "--precision", "bf16", "--backend", "onnx", "--out", str(root)])
    assert r.exit_code == 0, r.output
    return Artifact.load(root)


def test_bf16_hart_graphs_carry_the_precision_policy(bf16_hart):
    """bf16 where the blocks compute (matmuls, attention, K/V, restore caches); fp32 stream, head, text
    projection, diffusion head and tokenizer graphs."""
    art = bf16_hart
    assert art.manifest.precision == "bf16"
    g = art.graph("step_12")
    dtypes = {t.name: t.dtype for t in g.inputs + g.outputs}
    assert dtypes["past_k_0"] == dtypes["past_v_1"] == dtypes["new_k_1"] == "bfloat16"
    assert dtypes["cache_attn_0"] == dtypes["cache_mlp_1"] == "bfloat16"
    assert dtypes["logits"] == dtypes["x_in"] == dtypes["head_scale"] == "float32"
    assert {t.dtype for t in art.graph("step_11").outputs if t.name.startswith("cache_")} == {"bfloat16"}
    assert {t.dtype for t in art.graph("step_13").outputs if t.name == "hidden"} == {"float32"}
    model = onnx.load(str(art.graph_path("step_12")))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
    bf16, f32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    assert types["blocks.0.attn.qkv_proj.weight.T"] == types["blocks.1.ffn.down_proj.weight.T"] == bf16
    assert types["blocks.0.ln_wo_grad.weight"] == bf16  # block weights are stored once, in bf16
    assert types["head.weight.T"] == types["word_embed.weight.T"] == f32
    assert ("FastVARRestore", "fastvar") in {(n.op_type, n.domain) for n in model.graph.node}
    for name in ("condition", "diffusion", "next_input_03", "decoder"):  # fp32 end to end
        m = onnx.load(str(art.graph_path(name)))
        elem = {vi.type.tensor_type.elem_type for vi in [*m.graph.input, *m.graph.output]}
        assert bf16 not in elem, name


def test_bf16_hart_graphs_pass_the_tensorrt_check(bf16_hart):
    r = CliRunner().invoke(build_cmd, [str(bf16_hart.root), "--check-only"])
    assert r.exit_code == 0 and "32 graphs pass the TensorRT compatibility check" in r.output, r.output


def test_bf16_hart_graphs_match_the_bf16_reference_under_onnx_reference(bf16_hart):
    from fastvar.runtime.backends.onnx_reference import OnnxReferenceBackend

    art = bf16_hart
    sched, plan, geom = artifact_schedule(art), art.plan(), artifact_geometry(art)
    text = torch.randn(1, 9, 1536, generator=torch.Generator().manual_seed(4))
    lengths = torch.tensor([9])
    settings = SamplingSettings.uniform(1, 0, 4.5, None, more_smooth=False)
    ref_be, got_be = reference_backend(art), OnnxReferenceBackend(art)
    assert ref_be.model.blocks[0].attn.qkv_proj.weight.dtype == torch.bfloat16
    ref = generate(ref_be, sched, plan, geom, text, lengths, settings, keep_logits=True)
    got = generate(got_be, sched, plan, geom, text, lengths, settings, force_tokens=ref.tokens, keep_logits=True)
    tokens = {s["index"]: s["tokens"] for s in art.data["scales"]}
    flipped, overlaps = kept_flips(ref_be.kept_sets, got_be.kept_sets, tokens)
    print("bf16 kept-set overlap per pruned step:", {k: f"{v:.3f}" for k, v in overlaps.items()})
    assert set(overlaps) == {12, 13} and min(overlaps.values()) >= 0.9
    errors = logit_errors(ref.logits, got.logits, flipped)
    print("bf16 teacher-forced max error / logit scale:", {k: f"{e:.1e}" for k, e in errors.items()})
    assert len(errors) == 14 and max(errors.values()) <= BF16_TOLERANCE
    # bounded by the fp32-vs-bf16 distance on the same weights and tokens: rounding noise, not a wrong cast
    fp32 = HARTTorchBackend(*build_pair("hart-tiny", random_init=True, precision="fp32"), plan)
    f32 = generate(fp32, sched, plan, geom, text, lengths, settings, force_tokens=ref.tokens, keep_logits=True)
    gap = logit_errors(ref.logits, f32.logits, flipped)
    print("fp32 vs bf16 reference:", {k: f"{e:.1e}" for k, e in gap.items()})
    assert 0 < max(gap.values()) and max(errors.values()) <= 2 * max(gap.values())
    assert np.isfinite(got.images.astype(np.float32)).all() and got.images.shape == ref.images.shape


def test_torch_backend_runs_a_hart_release_folder_in_bf16(tmp_path):
    model, tok = build_pair("hart-tiny", random_init=True, seed=5)
    save_hart_folder(model, tmp_path / "rel" / "llm", ema=model)
    save_tokenizer_folder(tok, tmp_path / "rel" / "tokenizer")
    logits = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.png"
        r = CliRunner().invoke(run_cmd, ["--model", "hart-tiny", "--ckpt", str(tmp_path / "rel"), "--precision",
                                         precision, "--backend", "torch", "--seed", "1", "--out", str(out),
                                         "--save-logits", str(tmp_path / f"{precision}.npz")])
        assert r.exit_code == 0 and out.stat().st_size > 0, r.output
        logits[precision] = dict(np.load(tmp_path / f"{precision}.npz"))
    # step 0 sees the same text in both: its logits differ by bf16 rounding only
    a, b = logits["fp32"]["scale_00"], logits["bf16"]["scale_00"]
    assert 0 < np.abs(a - b).max() <= 5e-2 * np.abs(a).max()


def test_bf16_memory_plan_halves_the_block_weights_and_kv():
    plans = {p: plan_memory(ExportOptions(model="hart-0.7b", random_init=True, precision=p)) for p in ("fp32", "bf16")}
    f32, b16 = plans["fp32"], plans["bf16"]
    assert b16.precision == "bf16" and json.loads(b16.to_json())["precision"] == "bf16"
    assert b16.item("KV cache").bytes * 2 == f32.item("KV cache").bytes
    assert b16.item("restore caches").bytes * 2 == f32.item("restore caches").bytes
    model = build_pair("hart-tiny", random_init=True)[0]  # the split of weights the plan counts, on a small model
    blocks = sum(p.numel() for p in model.blocks.parameters())
    assert blocks > 0
    saved = f32.item("transformer weights").bytes - b16.item("transformer weights").bytes
    assert saved > 0.4 * f32.item("transformer weights").bytes  # the blocks hold most of HART's weights
    assert b16.item("tokenizer weights").bytes == f32.item("tokenizer weights").bytes
    assert b16.item("f_hat").bytes == f32.item("f_hat").bytes

