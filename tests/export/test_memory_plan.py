"""The device-memory plan: exact weight bytes, hand-checked KV bytes, and the plan's reporting surface."""

import dataclasses
import json

import pytest

from fastvar.export.memory_plan import (
    GIB,
    MemoryPlan,
    PlanDoesNotFit,
    markdown_table,
    memory_plan,
    t5_encoder_params,
    transformer_param_counts,
    transformer_weight_bytes,
)
from fastvar.export.models.infinity_config import preset
from fastvar.export.schedules import prune_plan, scale_schedule

RELEASED_2B = 2_204_697_152


def _plan(cfg, res="1024", spec="none", batch=1, precision="bf16", text_len=512, guidance=True):
    sched = scale_schedule(res)
    return memory_plan(cfg, sched, prune_plan(sched, spec, cfg.depth), batch, precision, text_len, guidance)


def test_2b_weight_bytes_are_exact():
    cfg = preset("infinity-2b")
    fp32, bf16 = transformer_weight_bytes(cfg, "fp32"), transformer_weight_bytes(cfg, "bf16")
    assert fp32 == 4 * RELEASED_2B
    block, other = transformer_param_counts(cfg)
    assert block + other == RELEASED_2B
    # the blocks dominate; the rest (text pool/proj, embeddings, head) stays fp32 under bf16
    assert 0 < other < block
    assert fp32 - bf16 == 2 * block
    assert _plan(cfg, precision="fp32").item("transformer weights").bytes == fp32
    assert _plan(cfg, precision="bf16").item("transformer weights").bytes == bf16


def _tiny8():
    # depth 8 -> default pruned block range [1, 7): pruned and unpruned blocks both present
    return dataclasses.replace(preset("infinity-tiny"), depth=8)


@pytest.mark.parametrize("precision,nbytes", [("fp32", 4), ("bf16", 2)])
def test_kv_bytes_match_hand_count(precision, nbytes):
    cfg = _tiny8()
    assert prune_plan(scale_schedule(1024), "fastvar", 8).block_range == (1, 7)
    rows, c = 2, cfg.width
    # 1024 ladder tokens: 1,4,16,36,64,144,256,400,576,1024,1600,2304,4096; the last executed step is not cached
    full12 = 1 + 4 + 16 + 36 + 64 + 144 + 256 + 400 + 576 + 1024 + 1600 + 2304  # none: steps 0..11
    expect_none = 8 * full12 * rows * c * 2 * nbytes
    # fastvar: 48 and 64 skipped, so 40x40 is last (uncached); 32x32 keeps 1024 - int(1024*0.4) = 615 in blocks 1..6
    unpruned = 1497 + 1024
    pruned = 1497 + 615
    expect_fv = (2 * unpruned + 6 * pruned) * rows * c * 2 * nbytes
    none = _plan(cfg, spec="none", precision=precision).item("KV cache").bytes
    fv = _plan(cfg, spec="fastvar", precision=precision).item("KV cache").bytes
    assert none == expect_none
    assert fv == expect_fv
    assert fv < none


@pytest.mark.parametrize("spec", ["none", "fastvar"])
def test_kv_bytes_equal_the_runtime_allocation(spec):
    import torch

    from fastvar.runtime.kv_cache import KVCache

    cfg = _tiny8()
    cache = KVCache(prune_plan(scale_schedule(1024), spec, 8), 8, 2, cfg.heads, cfg.head_dim, torch.bfloat16)
    assert _plan(cfg, spec=spec).item("KV cache").bytes == cache.nbytes


def test_guidance_off_halves_kv_and_conditioning_rows():
    cfg = _tiny8()
    on = _plan(cfg, spec="fastvar", guidance=True)
    off = _plan(cfg, spec="fastvar", guidance=False)
    assert off.item("KV cache").bytes * 2 == on.item("KV cache").bytes
    assert off.item("FastVAR restore caches").bytes * 2 == on.item("FastVAR restore caches").bytes
    # weights do not depend on rows
    assert off.item("transformer weights").bytes == on.item("transformer weights").bytes


def test_restore_caches_only_with_a_cache_step():
    cfg = _tiny8()
    none = _plan(cfg, spec="none")
    fv = _plan(cfg, spec="fastvar")
    assert "FastVAR restore caches" not in [it.name for it in none.items]
    # cache step = 24x24 (576 tokens), 6 pruned blocks, sa bf16 + ca fp32 + ffn fp32
    assert fv.item("FastVAR restore caches").bytes == 6 * 2 * 576 * cfg.width * (2 + 4 + 4)


def test_2b_fastvar_shrinks_the_peak_score_term():
    cfg = preset("infinity-2b")
    none, fv = _plan(cfg, spec="none"), _plan(cfg, spec="fastvar")
    pn, pf = none.item("peak step activations"), fv.item("peak step activations")
    # none peaks at the 64x64 step reading 6425 past tokens: 2 (scores, probs) x 2 rows x 16 heads x 4096 x 10521
    score_none = 2 * 2 * 16 * 4096 * (6425 + 4096) * 2
    assert "step 12 (64x64)" in pn.note and f"= {score_none / GIB:.2f} GiB" in pn.note
    # fastvar skips 48 and 64: the peak is the 40x40 step in an unpruned block (P = 1497 + 1024)
    score_fv = 2 * 2 * 16 * 1600 * (2521 + 1600) * 2
    assert "step 10 (40x40)" in pf.note and f"= {score_fv / GIB:.2f} GiB" in pf.note
    assert score_fv < score_none and pf.bytes < pn.bytes
    assert fv.total < none.total


def test_check_fits_reports_the_shortfall():
    p = _plan(preset("infinity-2b"), spec="fastvar")
    p.check_fits(80)  # fits on an 80 GB card
    with pytest.raises(PlanDoesNotFit, match="short by") as err:
        p.check_fits(1)
    msg = str(err.value)
    assert f"{(p.total - GIB) / GIB:.2f} GiB" in msg
    assert f"{p.total / GIB:.2f} GiB" in msg and "1.00 GiB" in msg
    assert "transformer weights" in msg
    assert isinstance(err.value, ValueError)


def test_to_dict_roundtrips_through_json():
    p = _plan(_tiny8(), spec="fastvar")
    d = json.loads(json.dumps(p.to_dict()))
    assert d["total"] == p.total
    back = MemoryPlan.from_dict(d)
    assert back == p and back.total == p.total


def test_table_and_markdown():
    a, b = _plan(_tiny8(), spec="none"), _plan(_tiny8(), spec="fastvar")
    t = a.table()
    assert t.splitlines()[-1].startswith("total") and f"{a.total / GIB:.3f}" in t
    md = markdown_table([a, b])
    lines = md.splitlines()
    assert lines[0].count("|") == 4  # item + 2 columns
    restore = next(line for line in lines if line.startswith("| FastVAR restore caches"))
    assert restore.split("|")[2].strip() == "–"
    # an item only one plan has keeps its place in the item order (after the KV cache)
    assert lines.index(restore) == 1 + next(i for i, line in enumerate(lines) if line.startswith("| KV cache"))
    assert f"**{b.total / GIB:.2f}**" in lines[-1]


def test_t5_xl_encoder_size():
    # T5 v1.1 XL encoder, ~1.22B parameters (embeddings 32128 x 2048 untied)
    n = t5_encoder_params(2048, 5120, 24, 32, 64, 32128, 32)
    assert n == 1_223_527_424


def test_rejects_bad_arguments():
    cfg = _tiny8()
    with pytest.raises(ValueError, match="precision"):
        _plan(cfg, precision="int4")
    with pytest.raises(ValueError, match="text_len"):
        _plan(cfg, text_len=513)
