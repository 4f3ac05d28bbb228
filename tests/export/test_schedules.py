import pytest

from fastvar.export.schedules import (
    LADDERS,
    TAILS_2K,
    TEMPLATES,
    default_block_range,
    kept_count,
    parse_aspect,
    prune_plan,
    scale_schedule,
)


@pytest.mark.parametrize("res,n,total", [(256, 7, 521), (512, 10, 2521), (768, 12, 6425), (1024, 13, 10521)])
def test_square_tiers(res, n, total):
    s = scale_schedule(res, "1:1")
    assert len(s.scales) == n
    assert s.total_tokens == total
    assert s.rope_grid == (64, 64)
    assert s.pixels == (s.scales[-1].h * 16, s.scales[-1].w * 16)


def test_every_template_and_tier_has_upstream_lengths_and_ratio():
    assert len(TEMPLATES) == 15 and TEMPLATES[:3] == (1.0, 1.25, 0.8)
    for t in TEMPLATES:
        for res, n in ((256, 7), (512, 10), (768, 12), (1024, 13)):
            s = scale_schedule(res, t)
            assert len(s.scales) == n
            h, w = s.scales[-1].h, s.scales[-1].w
            assert abs(h / w - t) < 0.01  # upstream asserts the same of its table
            assert s.rope_grid == LADDERS[t][-1]


def test_totals_of_other_1m_templates_match_upstream():
    totals = {1.25: 10774, 1.333: 10973, 1.5: 10997, 1.75: 11252, 2.0: 11269, 2.5: 10805, 3.0: 11123}
    for t, total in totals.items():
        assert scale_schedule(1024, t).total_tokens == total
        assert scale_schedule(1024, int(1 / t * 1000) / 1000).total_tokens == total


def test_aspect_picks_nearest_template_and_reports_it():
    assert parse_aspect("1:1") == 1.0
    assert parse_aspect("4:3") == 1.333
    assert parse_aspect("9:16") == 0.571
    assert parse_aspect("16:9") == 1.75
    assert scale_schedule(1024, "16:9").aspect == "1.75"


def test_2k_tier_appends_upstream_tail_and_moves_rope_grid():
    s = scale_schedule(2048, "1:1")
    assert len(s.scales) == 14 and (s.scales[-1].h, s.scales[-1].w) == (84, 84)
    assert s.rope_grid == (84, 84) and s.pixels == (1344, 1344)
    assert (scale_schedule("2K", "1:2").scales[-1].h, scale_schedule("2K", "1:2").scales[-1].w) == (60, 120)
    assert set(TAILS_2K) == {1.0, 0.5, 2.0, 1.333}


def test_unsupported_inputs_list_what_is_supported():
    with pytest.raises(ValueError, match="accepted: 256, 512, 768, 1024, 2048"):
        scale_schedule(999)
    with pytest.raises(ValueError, match="2K tier exists for h/w templates 1, 0.5, 2, 1.333"):
        scale_schedule(2048, "3:1")
    with pytest.raises(ValueError, match="H:W"):
        parse_aspect("square")


def test_kept_counts_use_upstream_rounding():
    assert kept_count(1024, 0.4) == 615  # not int(1024 * 0.6) = 614
    assert kept_count(1600, 0.5) == 800
    assert kept_count(7056, 0.75) == 1764


def test_fastvar_plan_at_1024_matches_upstream():
    plan = prune_plan(scale_schedule(1024), "fastvar", depth=32)
    assert plan.block_range == (3, 28)
    assert plan.cache_scale == 8
    assert len(plan.executed) == 11
    by_side = {s.h: s for s in plan.steps}
    assert by_side[32].kept == 615 and by_side[40].kept == 800
    assert by_side[48].skipped and by_side[64].skipped and by_side[48].kept == 0
    assert all(not s.pruned for s in plan.steps[:9])


def test_fastvar_generalises_by_ladder_position():
    p = prune_plan(scale_schedule(1024, "2:1"), "fastvar", depth=32)
    assert [(s.h, s.w) for s in p.steps if s.pruned] == [(46, 23), (60, 30)]
    assert p.cache_scale == 8
    p512 = prune_plan(scale_schedule(512), "fastvar", depth=32)
    assert [s.kept for s in p512.steps if s.pruned] == [615] and not any(s.skipped for s in p512.steps)
    assert prune_plan(scale_schedule(256), "fastvar", depth=32).cache_scale is None
    p2k = prune_plan(scale_schedule(2048), "fastvar", depth=32)
    assert [s.kept for s in p2k.steps if s.pruned] == [615, 800, 1764]
    assert [s.h for s in p2k.steps if s.skipped] == [48, 64]


def test_block_range_rule():
    assert default_block_range(32) == (3, 28)
    assert default_block_range(40) == (4, 35)
    assert default_block_range(16) == (2, 14)


def test_explicit_spec_and_none():
    s = scale_schedule(1024)
    p = prune_plan(s, "32:0.4,40:0.5,48:1,64:1", depth=32)
    f = prune_plan(s, "fastvar", depth=32)
    assert [st.kept for st in p.steps] == [st.kept for st in f.steps]
    n = prune_plan(s, "none", depth=32)
    assert n.cache_scale is None and len(n.executed) == 13 and all(st.kept == st.tokens for st in n.steps)
    q = prune_plan(s, "24x24:0.25", depth=32)
    assert q.steps[8].kept == 576 - 144 and q.cache_scale == 7


@pytest.mark.parametrize("spec,msg", [
    ("33:0.4", "matches no step"),
    ("32:1.5", r"must be in \[0, 1\]"),
    ("32", "SIDE:FRACTION"),
    ("1:0.5", "first step cannot be pruned"),
])
def test_bad_specs_are_specific(spec, msg):
    with pytest.raises(ValueError, match=msg):
        prune_plan(scale_schedule(1024), spec, depth=32)
