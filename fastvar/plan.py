"""A resolved FastVAR plan: which steps run, what each keeps, where the restore caches come from.

Bottom layer: the manifest reads plans back and the export writes them, so the types live below both."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StepPlan:
    index: int
    h: int
    w: int
    tokens: int
    pruned_fraction: float
    kept: int
    skipped: bool

    @property
    def pruned(self) -> bool:
        return not self.skipped and self.kept < self.tokens


@dataclass(frozen=True)
class PrunePlan:
    """A resolved FastVAR plan: per-step kept counts, the cache step and the pruned block range."""

    spec: str
    steps: tuple[StepPlan, ...]
    cache_scale: int | None
    block_range: tuple[int, int]
    first_step_kv: int | None = None  # KV entries step 0 writes when not its token count (HART: the text)

    @property
    def executed(self) -> tuple[StepPlan, ...]:
        return tuple(s for s in self.steps if not s.skipped)

    @property
    def cache_hw(self) -> tuple[int, int] | None:
        if self.cache_scale is None:
            return None
        s = self.steps[self.cache_scale]
        return s.h, s.w

    def block_pruned(self, block: int) -> bool:
        return self.block_range[0] <= block < self.block_range[1]

    def to_dict(self) -> dict:
        return {
            "spec": self.spec,
            "cache_scale": self.cache_scale,
            "block_range": list(self.block_range),
            "first_step_kv": self.first_step_kv,
            "steps": [asdict(s) for s in self.steps],
        }

    @classmethod
    def from_dict(cls, s: dict) -> PrunePlan:
        """The inverse of ``to_dict`` (a manifest's ``schedule``)."""
        return cls(spec=s["spec"], steps=tuple(StepPlan(**st) for st in s["steps"]), cache_scale=s["cache_scale"],
                   block_range=tuple(s["block_range"]), first_step_kv=s.get("first_step_kv"))
