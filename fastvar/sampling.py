"""What a generation samples with, row by row: the one object every entry point fills and the chain reads.

Each row (image) has its own seed, guidance scale and temperature, so a server can batch requests from
different clients and each image stays what its own seed makes it: a row's noise is drawn from its seed
alone, whatever else is in the batch. Each model family declares its upstream defaults
as a ``SamplingDefaults`` (``ModelFamily.sampling``); ``for_batch`` fills what a caller leaves out from them.

Today's graphs take one ``cfg_scale`` and one ``inv_tau`` per call (scalar inputs), so a batch whose rows
ask for different guidance or temperature is refused with a message (``shared``); the seeds are per row on
every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes a signed 64-bit value


@dataclass(frozen=True)
class SamplingDefaults:
    """Upstream's inference defaults for a family, and the guidance value that means "no guidance"."""

    cfg: float
    unguided_cfg: float
    tau: float | None  # None: the family samples without a temperature
    more_smooth: bool | None = None  # HART's feedback default; None: the family has no such choice


@dataclass(frozen=True)
class RowSampling:
    """One image's sampling: its noise seed, guidance scale and temperature (None: the family has none)."""

    seed: int
    cfg: float
    tau: float | None

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.cfg, (int, float)) or not math.isfinite(self.cfg):
            raise ValueError(f"cfg must be a finite number, got {self.cfg}")
        if self.tau is not None and (not isinstance(self.tau, (int, float)) or not math.isfinite(self.tau)
                                     or self.tau <= 0):
            raise ValueError(f"tau must be a finite number > 0, got {self.tau}")


@dataclass(frozen=True)
class SamplingSettings:
    """Every row's sampling, and HART's feedback mode (``more_smooth``: the Gumbel-soft codebook mixture,
    upstream's sample.py default, or the sampled codebook rows; Infinity ignores it)."""

    rows: tuple[RowSampling, ...]
    more_smooth: bool = True

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("sampling settings need at least one row")

    @classmethod
    def for_batch(cls, defaults: SamplingDefaults, batch: int, seed: int = 0, cfg: float | None = None,
                  tau: float | None = None, more_smooth: bool | None = None, guided: bool = True) -> SamplingSettings:
        """``batch`` rows with seeds ``seed``, ``seed + 1``, ...; ``cfg``, ``tau`` and ``more_smooth`` from the
        family's ``defaults`` where not given (``guided=False``: the value that turns guidance off). A
        setting the family does not use (a temperature for HART, a feedback mode for Infinity) is refused
        rather than silently ignored."""
        if tau is not None and defaults.tau is None:
            raise ValueError("this model family samples without a temperature: leave --tau out")
        if more_smooth is not None and defaults.more_smooth is None:
            raise ValueError("this model family has no feedback choice (--more-smooth is HART's): leave it out")
        if cfg is None:
            cfg = defaults.cfg if guided else defaults.unguided_cfg
        tau = defaults.tau if tau is None else tau
        more_smooth = defaults.more_smooth if more_smooth is None else more_smooth
        return cls.uniform(batch, seed, cfg, tau, more_smooth is not False)

    @classmethod
    def uniform(cls, batch: int, seed: int, cfg: float, tau: float | None,
                more_smooth: bool = True) -> SamplingSettings:
        """``batch`` rows with seeds ``seed``, ``seed + 1``, ... and one cfg and tau."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_LIMIT - batch:
            raise ValueError(f"seed must be an integer in [0, 2**63 - batch], got {seed!r}")
        return cls(tuple(RowSampling(seed + i, cfg, tau) for i in range(batch)), more_smooth)

    @property
    def batch(self) -> int:
        return len(self.rows)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.seed for r in self.rows)

    def shared(self, field: str):
        """The one value of ``field`` (``cfg`` or ``tau``) every row asks for: a graph takes one per call."""
        values = {getattr(r, field) for r in self.rows}
        if len(values) != 1:
            raise ValueError(f"the rows ask for different {field} values ({', '.join(map(str, sorted(values)))}); "
                             f"the step graphs take one {field} per call: run them as separate batches")
        return values.pop()

    @property
    def cfg(self) -> float:
        return self.shared("cfg")

    @property
    def tau(self) -> float | None:
        return self.shared("tau")
