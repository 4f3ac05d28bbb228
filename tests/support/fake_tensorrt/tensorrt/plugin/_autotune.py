"""``AutoTuneCombination`` (plugin/_autotune.py of the wheel).

A type string is "T0,T1,..." with one entry per I/O; "A|B" makes positions vary together (dependent, all such
lists must have the same length), "A*B" makes one position vary on its own. "FP32"/"FP16" name FLOAT/HALF; other
types use their DataType name. Layouts work the same way with TensorFormat names (default "LINEAR").
"""

from __future__ import annotations

import copy

import tensorrt as trt

from ._export import public_api


def _str_to_data_type(dtype: str):
    if dtype == "FP32":
        return trt.DataType.FLOAT
    if dtype == "FP16":
        return trt.DataType.HALF
    return getattr(trt.DataType, dtype)


def _expand(io_variants):
    """Every combination one side (types or layouts) of an AutoTuneCombination allows."""
    width = 0
    for v in io_variants:
        options = v.split("|")
        if len(options) > 1:
            if "*" in v:
                raise ValueError(f"Type/Format '{v}' contains both '|' and '*'")
            if width > 1 and width != len(options):
                raise ValueError(f"Type/Format combinations {io_variants} contain illegal dependent lengths")
        width = max(width, len(options))
    combos = [[None] * len(io_variants) for _ in range(width)]
    for j, v in enumerate(io_variants):
        options = v.split("|")
        for k, combo in enumerate(combos):
            combo[j] = options[k] if len(options) > 1 else v.split("*")[0]
    for j, v in enumerate(io_variants):
        if "*" in v:
            extra = []
            for option in v.split("*")[1:]:
                for c in combos:
                    new = copy.deepcopy(c)
                    new[j] = option
                    extra.append(new)
            combos.extend(extra)
    return combos


class _TypeFormatCombination:
    def __init__(self, num=0):
        self.types = [None] * num
        self.layouts = [None] * num
        self.tactics = []

    def __hash__(self):
        return hash((tuple(self.types), tuple(self.layouts)))

    def __eq__(self, other):
        return isinstance(other, _TypeFormatCombination) and (self.types, self.layouts) == (other.types,
                                                                                             other.layouts)

    def __str__(self):
        return "{" + str(self.types) + ", " + str(self.layouts) + "}"


@public_api()
class AutoTuneCombination:
    """Type/format combinations a plugin supports, and its custom tactics (positive ints)."""

    def __init__(self, io_types: str = None, layouts: str = None, tactics=None):
        if io_types is not None:
            self.io_types = [s.strip() for s in io_types.split(",")]
            self.layouts = [s.strip() for s in (layouts or "LINEAR").split(",")]
            if len(self.layouts) > 1:
                assert len(self.io_types) == len(self.layouts)
            if len(self.io_types) > len(self.layouts):
                assert len(self.layouts) == 1
                self.layouts = self.layouts * len(self.io_types)
        else:
            self.io_types, self.layouts = [], []
        self.combinations = []
        self._tactics = tactics

    def pos(self, pos, io_types: str, layouts: str = "LINEAR") -> None:
        """Types and layouts for the I/O indices ``pos`` (inputs first, then outputs)."""
        pos = list(pos)  # an int fails here as in the wheel (its docstring's ``c.pos(0, ...)`` raises TypeError)
        if max(pos) >= len(self.io_types):
            grow = max(pos) + 1 - len(self.io_types)
            self.io_types.extend([None] * grow)
            self.layouts.extend([None] * grow)
        for p in pos:
            if self.io_types[p] is not None:
                raise ValueError(f"Type(s) for position {p} already specified")
            if self.layouts[p] is not None:
                raise ValueError(f"Layout(s) for position {p} already specified")
            self.io_types[p], self.layouts[p] = io_types, layouts

    def tactics(self, tactics) -> None:
        self._tactics = tactics

    def _get_combinations(self):
        self.combinations = []
        for types in _expand(self.io_types):
            for layouts in _expand(self.layouts):
                c = _TypeFormatCombination(len(self.io_types))
                c.types = [_str_to_data_type(t) for t in types]
                c.layouts = [getattr(trt.TensorFormat, f) for f in layouts]
                c.tactics = self._tactics
                self.combinations.append(c)
        return self.combinations
