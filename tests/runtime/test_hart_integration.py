"""HART end to end (issue 7): export, the one generation loop on ONNX Runtime and torch, teacher-forced parity,
the diffusion head graph, fastvar-validate, and --ckpt DIR in upstream layout. One hart-tiny export is shared."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support import hart_generate

from fastvar.cli import export_cmd, run_cmd
from fastvar.export.artifact import ExportOptions, export, plan_memory
from fastvar.export.models.factory import build_pair
from fastvar.export.models.hart_checkpoint import (
    build_random_hart,
    build_random_tokenizer,
    save_hart_folder,
    save_tokenizer_folder,
)
from fastvar.export.models.hart_config import preset
from fastvar.export.models.hart_sampling import draw_noise
from fastvar.export.schedules import hart_prune_plan, hart_schedule
from fastvar.family import artifact_geometry, artifact_schedule
from fastvar.manifest import Artifact
from fastvar.runtime.backends import open_backend
from fastvar.runtime.backends.hart_torch import HARTTorchBackend
from fastvar.runtime.chain import HARTGeometry, SamplingSettings, generate
from fastvar.runtime.io import load_text_embeddings
from fastvar.runtime.parity import logit_errors
from fastvar.validate.run import validate

EXPORT_ARGS = ["--model", "hart-tiny", "--random-init", "--res", "1024", "--schedule", "fastvar",
               "--backend", "onnxruntime"]


@pytest.fixture(scope="module")
def hart_artifact(tmp_path_factory):
    """hart-tiny at 1024 with FastVAR, exported once (about 55 s on 2 cores)."""
    root = tmp_path_factory.mktemp("hart") / "art"
    export(ExportOptions(model="hart-tiny", random_init=True, res="1024", schedule="fastvar", out=str(root)),
           log=lambda _: None)
    return root


@pytest.fixture(scope="module")
def backends(hart_artifact):
    art = Artifact.load(hart_artifact)
    return art, open_backend(art, "torch"), open_backend(art, "onnxruntime")


def test_the_issue_command_gives_14_steps_keeping_1152_and_1024(hart_artifact):
    r = CliRunner().invoke(export_cmd, [*EXPORT_ARGS, "--out", str(hart_artifact)], catch_exceptions=False)
    assert r.exit_code == 0 and "up to date" in r.output, r.output  # the command is the fixture's export
    m = json.loads((hart_artifact / "manifest.json").read_text())
    assert m["model"]["family"] == "hart" and m["text_len"] == 300 and m["complete"]
    assert [s["h"] for s in m["scales"]] == [1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64]
    assert [(s["index"], s["kept"]) for s in m["scales"] if s["kept"] != s["tokens"]] == [(12, 1152), (13, 1024)]
    assert m["cache_scale"] == 11 and m["schedule"]["first_step_kv"] == 300
    names = set(m["graphs"])
    assert {f"step_{i:02d}" for i in range(14)} | {f"next_input_{i:02d}" for i in range(13)} <= names
    assert {"condition", "diffusion", "decoder", "step_12_validate", "step_13_validate"} <= names
    step1 = {t["name"]: t["shape"] for t in m["graphs"]["step_01"]["inputs"]}
    assert step1["past_k_0"] == [300, 2, 2, 32] and step1["x_in"] == [1, 4, 8]  # step 0 cached the 300 text tokens
    step13 = {t["name"]: t["shape"] for t in m["graphs"]["step_13"]["outputs"]}
    assert step13["hidden"] == [2, 4096, 64] and step13["kept_attn_0"] == [2, 1024] and "new_k_0" not in step13
    diff = {t["name"]: t["shape"] for t in m["graphs"]["diffusion"]["inputs"]}
    assert diff["noise"] == [8, 4096, 8]
    assert m["codebook"] == "tokenizer.quantize.embedding.weight"


@pytest.mark.parametrize("seed", [0, 3])
def test_teacher_forced_logits_of_onnxruntime_match_torch(backends, seed):
    art, ref_be, ort_be = backends
    sched, plan = artifact_schedule(art), art.plan()
    geom = artifact_geometry(art)
    text, lengths = load_text_embeddings(None, 1, 1536)
    settings = SamplingSettings.uniform(1, seed, 4.5, None, more_smooth=False)
    ref = generate(ref_be, sched, plan, geom, text, lengths, settings, keep_logits=True)
    forced = generate(ort_be, sched, plan, geom, text, lengths, settings, force_tokens=ref.tokens,
                      keep_logits=True)
    assert ref.tokens["scale_13"].shape == (1, 64, 64) and ref.tokens["scale_13"].dtype == np.int32
    assert ref.logits["scale_00"].shape == (1, 1, 64) and ref.logits["scale_13"].shape == (1, 4096, 64)
    errors = logit_errors(ref.logits, forced.logits)
    assert max(errors.values()) < 1e-4, errors
    assert all((forced.tokens[k] == v).all() for k, v in ref.tokens.items())


@torch.no_grad()
def test_diffusion_graph_matches_torch_given_the_same_noise(backends):
    """Several draws: the residuals agree to float noise almost everywhere; the few elements the iDDPM's
    division by sqrt(alpha_bar ~ 0) amplifies stay within the documented 5e-2 of the scale."""
    art, ref_be, ort_be = backends
    cfg = ref_be.model.cfg
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        ref_be.cond = ref_be.model.condition(torch.randn(1, 300, 1536, generator=g), torch.ones(1, 300, dtype=bool))
        hidden = torch.randn(2, 4096, cfg.width, generator=g)
        discrete = torch.randn(1, 4096, cfg.cvae, generator=g)
        noise = torch.randn(8, 4096, cfg.cvae, generator=g)
        ref_be.hidden, ort_be.hidden = hidden, hidden
        want = ref_be.diffusion(discrete, noise, 4.5 * 12 / 13).numpy()
        got = ort_be.diffusion(discrete, noise, 4.5 * 12 / 13).numpy()
        err = np.abs(got - want) / np.abs(want).max()
        print(f"seed {seed}: mean {err.mean():.1e}, within 1e-4 {np.mean(err < 1e-4):.5f}, max {err.max():.1e}")
        assert np.mean(err) < 2e-5 and np.mean(err < 1e-4) > 0.99 and err.max() < 5e-2, (seed, err.max())


def test_fastvar_validate_passes(hart_artifact):
    code, report = validate(str(hart_artifact), log=lambda _: None)
    assert code == 0, report["failures"]
    names = {g["name"] for g in report["graphs"]}
    assert {"diffusion", "next_input_00", "step_13_validate", "decoder"} <= names
    assert max(report["end_to_end"]["teacher_forced_logit_error"].values()) < 1e-4
    assert report["end_to_end"]["kept_overlap"] == {12: 1.0, 13: 1.0}


def test_run_writes_indices_and_logits_and_forcing_reproduces_them(hart_artifact, tmp_path):
    tokens, logits = tmp_path / "t.npz", tmp_path / "l.npz"
    args = [str(hart_artifact), "--seed", "1", "--no-more-smooth", "--out", str(tmp_path / "a.png")]
    r = CliRunner().invoke(run_cmd, [*args, "--save-tokens", str(tokens), "--save-logits", str(logits)])
    assert r.exit_code == 0, r.output
    with np.load(tokens) as z:
        assert z["scale_12"].shape == (1, 48, 48) and z["scale_12"].dtype == np.int32
        bad = {k: z[k] for k in z.files}
    bad["scale_05"] = bad["scale_05"] + 1000
    np.savez(tmp_path / "bad.npz", **bad)
    r = CliRunner().invoke(run_cmd, [*args, "--force-tokens", str(tmp_path / "bad.npz")])
    assert r.exit_code == 2 and "scale_05 holds indices outside [0, 64)" in r.output
    r = CliRunner().invoke(run_cmd, [*args, "--cfg", "0"])
    assert r.exit_code == 2 and "give a --cfg other than 0" in r.output
    r = CliRunner().invoke(run_cmd, [str(hart_artifact), "--backend", "tensorrt"])
    assert r.exit_code == 2 and "has no TensorRT engines: run fastvar-build" in r.output


def test_overflowing_cfg_is_an_error_naming_the_first_bad_scale(hart_artifact, tmp_path):
    """HART's weight ramps from 0 at the first scale: --cfg 1e38 overflows the logits a few scales in; the run
    names that scale, writes no PNG and exits 2 (it used to write a meaningless image and exit 0)."""
    r = CliRunner().invoke(run_cmd, [str(hart_artifact), "--cfg", "1e38", "--seed", "2",
                                     "--out", str(tmp_path / "a.png")])
    assert r.exit_code == 2, r.output
    assert ("error: image 0 (seed 2): NaN or infinity first in the logits of scale 3 (4x4 tokens); no image is "
            "written for it") in r.output
    assert not (tmp_path / "a.png").exists()


def test_chain_with_the_torch_backend_is_the_reference_generation():
    """The one loop (HART family, torch backend) reproduces hart_generate step by step (Gumbel-soft feedback on);
    a 4-scale hart-tiny keeps it cheap."""
    cfg = dataclasses.replace(preset("hart-tiny"), patch_nums=(1, 2, 4, 8))
    model, tok = build_random_hart(cfg, 0), build_random_tokenizer(cfg.tokenizer, 1)
    sched = hart_schedule(cfg.patch_nums)
    plan = hart_prune_plan(sched, "none", cfg.depth, cfg.context_tokens)
    text = torch.randn(1, 12, 1536, generator=torch.Generator().manual_seed(4))
    geom = HARTGeometry(cfg.patch_nums, cfg.vocab, cfg.cvae, cfg.diff_steps)
    res = generate(HARTTorchBackend(model, tok, plan), sched, plan, geom, text, torch.tensor([12]),
                   SamplingSettings.uniform(1, 9, 4.5, None), keep_logits=True)
    ctx = torch.zeros(1, 300, 1536)
    ctx[:, :12] = text
    mask = torch.arange(300)[None] < 12
    ref = hart_generate.generate(model, tok, ctx, mask, draw_noise(9, cfg, 1), cfg=4.5, fastvar=False,
                                 keep_logits=True)
    for si, pn in enumerate(cfg.patch_nums):
        assert np.array_equal(res.tokens[f"scale_{si:02d}"], ref.indices[si].view(1, pn, pn).numpy())
        assert torch.allclose(torch.from_numpy(res.logits[f"scale_{si:02d}"]), ref.logits[si], atol=1e-5, rtol=1e-5)
    want = ((ref.image * 255).permute(0, 2, 3, 1).to(torch.uint8)).numpy()
    assert np.array_equal(res.images, want)


def test_ckpt_dir_in_upstream_layout_loads_strictly_for_export_and_run(tmp_path):
    model, tok = build_pair("hart-tiny", random_init=True, seed=5)
    save_hart_folder(model, tmp_path / "rel" / "llm", ema=model)
    save_tokenizer_folder(tok, tmp_path / "rel" / "tokenizer")
    loaded, ltok = build_pair("hart-tiny", ckpt=str(tmp_path / "rel"))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(ltok.codebook, tok.codebook)
    mem = plan_memory(ExportOptions(model="hart-tiny", ckpt=str(tmp_path / "rel"), res="1024"))
    assert mem.item("KV cache").bytes > 0
    with pytest.raises(ValueError, match="lacks tokenizer/"):
        (tmp_path / "half" / "llm").mkdir(parents=True)
        build_pair("hart-tiny", ckpt=str(tmp_path / "half"))
    with pytest.raises(ValueError, match="not --vae"):
        build_pair("hart-tiny", ckpt=str(tmp_path / "rel"), vae="x")
    with pytest.raises(ValueError, match="exclude each other"):
        build_pair("hart-tiny", ckpt=str(tmp_path / "rel"), random_init=True)


@pytest.mark.parametrize("args,message", [
    (["--res", "512"], "HART runs at its checkpoint's resolution only"),
    (["--aspect", "16:9"], "HART runs square images only"),
    (["--text-len", "77"], "HART takes exactly 300 text tokens"),
    (["--backend", "tensorrt"], "--backend tensorrt needs TensorRT, which does not import here"),
    (["--schedule", "27:0.5"], "restores from the 36x36 step"),
])
def test_bad_hart_exports_are_refused_specifically(tmp_path, args, message):
    r = CliRunner().invoke(export_cmd, ["--model", "hart-tiny", "--random-init", *args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and message in r.output, r.output


def test_plan_and_explicit_schedules(tmp_path):
    r = CliRunner().invoke(export_cmd, ["--model", "hart-0.7b", "--random-init", "--plan"])
    assert r.exit_code == 0 and "KV cache" in r.output, r.output
    peak = {spec: plan_memory(ExportOptions(model="hart-0.7b", random_init=True, schedule=spec))
            .item("peak step activations").bytes for spec in ("fastvar", "none")}
    assert 0 < peak["fastvar"] < peak["none"] / 4  # the 64x64 step attends with 1024 of its 4096 queries
    sched = hart_schedule(preset("hart-tiny").patch_nums)
    plan = hart_prune_plan(sched, "48:0.25", 2, 300)
    assert [(s.index, s.kept) for s in plan.steps if s.pruned] == [(12, 2304 - 576)] and plan.cache_scale == 11
    assert not any(s.pruned for s in hart_prune_plan(sched, "none", 2, 300).steps)


@pytest.mark.parametrize("restore_op,node", [("custom", "FastVARRestore"), ("custom-add", "FastVARRestoreAdd")])
def test_custom_restore_node_step_reproduces_the_golden_outputs(hart_artifact, backends, restore_op, node):
    """``--restore-op custom`` / ``custom-add``: the 64x64 step with FastVARRestore(Add) nodes (ONNX Runtime runs
    them as PyOps) gives the reference's outputs on the golden inputs of a real generation, with the same kept
    sets; the fused node leaves no separate residual Add behind."""
    import onnx
    import onnxruntime as ort

    from fastvar.export.artifact import restore_spelling
    from fastvar.export.graphs import Shapes
    from fastvar.export.hart_graphs import HARTStepGraph
    from fastvar.export.onnx_export import export_graph
    from fastvar.export.weight_store import read_store
    from fastvar.plugins.restore.onnx_op import register_schema, translation_table
    from fastvar.plugins.restore.ort_op import for_onnxruntime, session_options
    from fastvar.validate.goldens import GOLDENS, read_npz, write_goldens

    art, ref_be, _ = backends
    if not (hart_artifact / GOLDENS / "step_13.inputs.npz").is_file():
        write_goldens(art, log=lambda _: None)
    register_schema()
    plan = art.plan()
    graph = HARTStepGraph(ref_be.model, plan, plan.steps[13], Shapes(1, 300, True), **restore_spelling(restore_op))
    data, d = export_graph(graph.module(), graph.definition(), dict(ref_be.model.named_parameters()) |
                           dict(ref_be.model.named_buffers()), translation_table())
    model = onnx.load_from_string(data)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(node) == 4 and len({"FastVARRestore", "FastVARRestoreAdd"} & set(ops)) == 1  # 2 blocks x 2
    plain = sum(o == "Add" for o in ops)
    if restore_op == "custom-add":  # the four residual adds of the pruned sub-layers are inside the nodes
        assert plain == plain_adds(ref_be.model, plan, restore_spelling("custom")) - 4
    sess = ort.InferenceSession(for_onnxruntime(model).SerializeToString(), session_options(),
                                providers=["CPUExecutionProvider"])
    feeds = read_npz(hart_artifact / GOLDENS / "step_13.inputs.npz")
    store = {k: v.numpy() for k, v in read_store(art.weight_path()).items()}
    feeds.update({w: store[w] for w in d.weights})
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    want = read_npz(hart_artifact / GOLDENS / "step_13.outputs.npz")
    for name, ref in want.items():
        if name.startswith("kept_"):
            assert all(set(a) == set(b) for a, b in zip(got[name], ref, strict=True)), name
        else:
            assert np.abs(got[name] - ref).max() <= 1e-4 * np.abs(ref).max(), name


def plain_adds(model, plan, restore) -> int:
    """Add nodes of the 64x64 step graph exported with ``restore`` (the count the fused spelling must lower)."""
    import onnx

    from fastvar.export.graphs import Shapes
    from fastvar.export.hart_graphs import HARTStepGraph
    from fastvar.export.onnx_export import export_graph
    from fastvar.plugins.restore.onnx_op import translation_table

    graph = HARTStepGraph(model, plan, plan.steps[13], Shapes(1, 300, True), **restore)
    data, _ = export_graph(graph.module(), graph.definition(), dict(model.named_parameters()) |
                           dict(model.named_buffers()), translation_table())
    return sum(n.op_type == "Add" for n in onnx.load_from_string(data).graph.node)
