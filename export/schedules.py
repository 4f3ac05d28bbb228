"""Scale schedules (upstream's aspect templates and tiers, plus a zero-shot 2K tier) and FastVAR plans.

Pure functions of (resolution, aspect, depth, schedule spec): the manifest records their results, and
every backend reads them from there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from fastvar.plan import PrunePlan, StepPlan  # noqa: F401 (the plan types, re-exported where plans are made)

# Upstream's 13-step (h, w) ladders per h/w ratio (infinity/utils/dynamic_resolution.py); the inverse
# ratios are the same ladders transposed, keyed by int(1/r*1000)/1000 as upstream keys them.
_LADDERS: dict[float, list[tuple[int, int]]] = {
    1.000: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40),
            (48, 48), (64, 64)],
    1.250: [(1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36),
            (55, 44), (70, 56)],
    1.333: [(1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36),
            (60, 45), (72, 54)],
    1.500: [(1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32),
            (63, 42), (78, 52)],
    1.750: [(1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32),
            (70, 40), (84, 48)],
    2.000: [(1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30),
            (74, 37), (90, 45)],
    2.500: [(1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26),
            (80, 32), (100, 40)],
    3.000: [(1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24),
            (90, 30), (111, 37)],
}


def _full_ladders() -> dict[float, list[tuple[int, int]]]:
    out: dict[float, list[tuple[int, int]]] = {}
    for ratio, hws in _LADDERS.items():
        out[ratio] = hws
        if ratio != 1.0:
            out[int(1 / ratio * 1000) / 1000] = [(w, h) for h, w in hws]
    return out


LADDERS = _full_ladders()
# Upstream's template order: 1.0, 1.25, 0.8, 1.333, 0.75, ... (argmin picks the first of equal distances).
TEMPLATES: tuple[float, ...] = tuple(LADDERS)

TIERS: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
# Zero-shot 2K: the 1M ladder plus one more step, as upstream FastVAR's (commented-out) tails list them.
TAILS_2K: dict[float, tuple[int, int]] = {1.0: (84, 84), 0.5: (60, 120), 2.0: (120, 60), 1.333: (84, 63)}
RES_TO_TIER = {256: "0.06M", 512: "0.25M", 768: "0.60M", 1024: "1M", 2048: "2K"}
VAE_STRIDE = 16
ROPE_MAX_SIDE = 128  # upstream's RoPE grid is 2048 // 16 cells per side


@dataclass(frozen=True)
class Scale:
    index: int
    h: int
    w: int

    @property
    def tokens(self) -> int:
        return self.h * self.w


@dataclass(frozen=True)
class ScaleSchedule:
    """The steps of one generation: template, tier, (h, w) per step, and the RoPE grid they map onto."""

    template: float
    tier: str
    scales: tuple[Scale, ...]
    rope_grid: tuple[int, int]

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.scales)

    @property
    def pixels(self) -> tuple[int, int]:
        last = self.scales[-1]
        return last.h * VAE_STRIDE, last.w * VAE_STRIDE

    @property
    def aspect(self) -> str:
        return f"{self.template:g}"


def parse_tier(res: str | int) -> str:
    """Map ``--res`` (256/512/768/1024/2048, or a tier name such as 1M, 2K) to a tier name."""
    text = str(res).strip()
    upper = text.upper()
    if upper in ("2K", "2048"):
        return "2K"
    for tier in TIERS:
        if upper == tier.upper():
            return tier
    if text.isdigit() and int(text) in RES_TO_TIER:
        return RES_TO_TIER[int(text)]
    accepted = ", ".join([*(str(r) for r in RES_TO_TIER), *TIERS, "2K"])
    raise ValueError(f"unsupported resolution {res!r}; accepted: {accepted}")


def parse_aspect(aspect: str | float) -> float:
    """``'H:W'`` (or a float h/w) to the nearest upstream template, as upstream's argmin picks it."""
    if isinstance(aspect, (int, float)):
        ratio = float(aspect)
    else:
        text = aspect.strip()
        try:
            if ":" in text:
                h, w = (float(p) for p in text.split(":"))
                ratio = h / w
            else:
                ratio = float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"aspect {aspect!r} is not H:W (e.g. 1:1, 4:3, 9:16) or a number h/w") from None
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"aspect {aspect!r} must be a positive ratio h/w")
    return min(TEMPLATES, key=lambda t: abs(ratio - t))


def scale_schedule(res: str | int = 1024, aspect: str | float = "1:1") -> ScaleSchedule:
    """The scale schedule of a resolution tier and aspect."""
    tier = parse_tier(res)
    template = parse_aspect(aspect)
    ladder = LADDERS[template]
    if tier == "2K":
        if template not in TAILS_2K:
            ok = ", ".join(f"{t:g}" for t in TAILS_2K)
            raise ValueError(
                f"the zero-shot 2K tier exists for h/w templates {ok} only (upstream FastVAR's tails); "
                f"aspect {aspect!r} maps to template {template:g}"
            )
        hws = [*ladder, TAILS_2K[template]]
    else:
        hws = ladder[: TIERS[tier]]
    scales = tuple(Scale(i, h, w) for i, (h, w) in enumerate(hws))
    # RoPE positions are normalised onto the final grid of the 1M ladder (upstream), or onto the 2K
    # tail where that exists (upstream's commented-out 2K code appends it before taking the last grid).
    rope_grid = hws[-1] if tier == "2K" else ladder[-1]
    return ScaleSchedule(template=template, tier=tier, scales=scales, rope_grid=rope_grid)


# ---- FastVAR plans -------------------------------------------------------------------------------

# Upstream's 1:1 1024 schedule keyed by position in the 13-step ladder (32:0.4, 40:0.5, 48:skip,
# 64:skip), plus the frozen 2K tail step (84:0.75). The same positions apply to every template and tier.
FASTVAR_LADDER_FRACTIONS: dict[int, float] = {9: 0.4, 10: 0.5, 11: 1.0, 12: 1.0, 13: 0.75}




def kept_count(tokens: int, fraction: float) -> int:
    """Upstream's rounding: r = int(L * fraction) pruned, K = L - r kept (615 at 32x32 and 0.4)."""
    return tokens - int(tokens * fraction)


def default_block_range(depth: int) -> tuple[int, int]:
    """Blocks 3..27 of 32 upstream; for other depths the same share, rounded: [round(3D/32), D - round(4D/32))."""
    return round(3 * depth / 32), depth - round(4 * depth / 32)


def _parse_spec(spec: str, sched: ScaleSchedule) -> dict[int, float]:
    fractions: dict[int, float] = {}
    sides = sorted({max(s.h, s.w) for s in sched.scales})
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" not in part:
            raise ValueError(f"schedule entry {part!r} is not SIDE:FRACTION (e.g. 32:0.4) or HxW:FRACTION")
        key, frac_text = part.rsplit(":", 1)
        if not re.fullmatch(r"\s*\d+\s*(x\s*\d+\s*)?", key.lower()):
            raise ValueError(f"schedule entry {part!r}: {key!r} is not a side (e.g. 32) or HxW (e.g. 24x40)")
        try:
            frac = float(frac_text)
        except ValueError:
            raise ValueError(f"schedule entry {part!r}: fraction {frac_text!r} is not a number") from None
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"schedule entry {part!r}: the pruned fraction must be in [0, 1] (1 skips the step)")
        key = key.strip().lower()
        if "x" in key:
            h, w = (int(v) for v in key.split("x"))
            hits = [s.index for s in sched.scales if (s.h, s.w) == (h, w)]
        else:
            side = int(key)
            hits = [s.index for s in sched.scales if max(s.h, s.w) == side]
        if not hits:
            raise ValueError(
                f"schedule entry {part!r} matches no step of this schedule; its steps' longer sides are "
                f"{', '.join(map(str, sides))} (or name a step as HxW)"
            )
        for i in hits:
            fractions[i] = frac
    if not fractions:
        raise ValueError(f"schedule {spec!r} names no step; give fastvar, none or SIDE:FRACTION,... (e.g. 32:0.4)")
    return fractions


def prune_plan(sched: ScaleSchedule, spec: str = "fastvar", depth: int = 32,
               block_range: tuple[int, int] | None = None) -> PrunePlan:
    """Resolve ``fastvar`` / ``none`` / an explicit spec against a scale schedule."""
    spec = spec.strip()
    if spec == "none":
        fractions: dict[int, float] = {}
    elif spec == "fastvar":
        fractions = {i: f for i, f in FASTVAR_LADDER_FRACTIONS.items() if i < len(sched.scales)}
    else:
        try:
            fractions = _parse_spec(spec, sched)
        except ValueError as err:
            raise ValueError(f"{err}. Accepted schedules: fastvar, none, or a spec such as "
                             "32:0.4,40:0.5,48:1,64:1") from None
    if 0 in fractions and fractions[0] > 0:
        raise ValueError("the first step cannot be pruned or skipped: every later step reads its KV cache")
    steps = []
    for s in sched.scales:
        f = fractions.get(s.index, 0.0)
        skipped = f >= 1.0
        kept = 0 if skipped else kept_count(s.tokens, f)
        steps.append(StepPlan(s.index, s.h, s.w, s.tokens, f, kept, skipped))
    partial = [st.index for st in steps if st.pruned]
    cache_scale = None
    if partial:
        before = [st.index for st in steps[: partial[0]] if not st.skipped and not st.pruned]
        if not before:
            raise ValueError("no unpruned step runs before the first pruned step, so nothing can serve as cache")
        cache_scale = before[-1]
    rng = default_block_range(depth) if block_range is None else tuple(block_range)
    if not (0 <= rng[0] <= rng[1] <= depth):
        raise ValueError(f"pruned block range {rng} does not fit depth {depth}")
    return PrunePlan(spec=spec, steps=tuple(steps), cache_scale=cache_scale, block_range=(rng[0], rng[1]))


# ---- HART --------------------------------------------------------------------------------------

def hart_schedule(patch_nums: tuple[int, ...], res: str | int = 1024, aspect: str | float = "1:1") -> ScaleSchedule:
    """HART's square schedule: its checkpoint's ``patch_nums`` (1024 px, 1:1 only, as released)."""
    tier = parse_tier(res)
    if tier != "1M":
        raise ValueError(f"HART runs at its checkpoint's resolution only: --res 1024 (got {res!r})")
    if parse_aspect(aspect) != 1.0:
        raise ValueError(f"HART runs square images only: --aspect 1:1 (got {aspect!r})")
    scales = tuple(Scale(i, p, p) for i, p in enumerate(patch_nums))
    return ScaleSchedule(template=1.0, tier=tier, scales=scales, rope_grid=(patch_nums[-1], patch_nums[-1]))


def hart_prune_plan(sched: ScaleSchedule, spec: str, depth: int, context_tokens: int) -> PrunePlan:
    """``fastvar`` (upstream FastVAR's HART plan: 48 -> 0.5, 64 -> 0.75, every block, cache at 36x36),
    ``none``, or SIDE:FRACTION entries; step 0 writes the text context's KV entries."""
    from fastvar.export.models import hart_fastvar

    spec = spec.strip()
    if spec == "none":
        sides: dict[int, float] = {}
    elif spec == "fastvar":
        sides = dict(hart_fastvar.PRUNE_FRACTIONS)
    else:
        try:
            by_index = _parse_spec(spec, sched)
        except ValueError as err:
            raise ValueError(f"{err}. Accepted HART schedules: fastvar, none, or a spec such as "
                             "48:0.5,64:0.75") from None
        sides = {sched.scales[i].h: f for i, f in by_index.items()}
    patch_nums = tuple(s.h for s in sched.scales)
    steps_plan = hart_fastvar.plan(patch_nums, sides)
    steps = []
    for s in sched.scales:
        p = steps_plan.get(s.index)
        frac = sides.get(s.h, 0.0) if p is not None else 0.0
        steps.append(StepPlan(s.index, s.h, s.w, s.tokens, frac, s.tokens if p is None else p.kept, False))
    cache_scale = None
    if steps_plan:
        cache_scale = next(s.index for s in sched.scales[1:] if hart_fastvar.is_cache_step(s.h))
    return PrunePlan(spec=spec, steps=tuple(steps), cache_scale=cache_scale, block_range=(0, depth),
                     first_step_kv=context_tokens)
