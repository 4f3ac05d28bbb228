"""Typed, bounded reads of a model's ``config.json``: every value is checked for type and range before it
sizes anything, and a refusal names the key, the value and what is accepted.

JSON gives no guarantees: ``"depth": 1e9`` is a float, ``"depth": null`` a None, ``true`` a bool (which
Python would take for 1), ``NaN`` a float. Integers must be JSON integers, numbers finite, switches booleans.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fastvar.export.models.limits import Bound


class ConfigFields:
    """The values of one config, each read with its type and range; ``defaults`` fill absent keys."""

    def __init__(self, values: Mapping, defaults: Mapping) -> None:
        self.values, self.defaults = values, defaults

    def raw(self, key: str):
        return self.values[key] if key in self.values else self.defaults[key]

    def _refuse(self, key: str, accepted: str) -> ValueError:
        shown = repr(self.raw(key))
        return ValueError(f"{key}={shown[:80]}{'...' if len(shown) > 80 else ''}: accepted: {accepted}")

    def int(self, key: str, bound: Bound) -> int:
        v = self.raw(key)
        if type(v) is not int or not bound.holds(v):
            raise self._refuse(key, bound.accepted())
        return v

    def number(self, key: str, lo: float, hi: float, lo_open: bool = False) -> float:
        """A finite JSON number (an integer is accepted) in [lo, hi], or (lo, hi] with ``lo_open``."""
        v = self.raw(key)
        ok = type(v) in (int, float) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
        if not ok:
            raise self._refuse(key, f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}]")
        return float(v)

    def bool(self, key: str) -> bool:
        v = self.raw(key)
        if type(v) is not bool:
            raise self._refuse(key, "true or false")
        return v

    def ints(self, key: str, each: Bound, length: Bound, increasing: bool = False) -> tuple[int, ...]:
        """A list of bounded integers of bounded length (strictly increasing with ``increasing``)."""
        v = self.raw(key)
        shape = f"a list of {length.lo}..{length.hi} integers, each in {each.lo}..{each.hi} ({each.why})" + (
            ", strictly increasing" if increasing else "")
        if not isinstance(v, list | tuple) or not length.holds(len(v)):
            raise self._refuse(key, shape)
        if any(type(x) is not int or not each.holds(x) for x in v):
            raise self._refuse(key, shape)
        if increasing and any(v[i] >= v[i + 1] for i in range(len(v) - 1)):
            raise self._refuse(key, shape)
        return tuple(v)
