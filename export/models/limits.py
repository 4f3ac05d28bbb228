"""Bounds on every dimension a checkpoint or its config.json sets, in one place.

Why: a number read from a small file sizes what is built before any weight is compared with it (a key
``blocks.99999999.x`` or ``"depth": 1e9`` would build that many blocks; ``"ch": 128000`` a decoder of
terabytes). Each bound sits far above the largest released model (named in ``why``), so a real checkpoint
never meets one, and far below what building a model's skeleton on the meta device could not afford; the
strict comparison with the tensors present then decides everything else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """An inclusive integer range, what the number counts and why its upper end is where it is."""

    lo: int
    hi: int
    why: str

    def accepted(self) -> str:
        return f"an integer in {self.lo}..{self.hi} ({self.why})"

    def holds(self, value: int) -> bool:
        return self.lo <= value <= self.hi


DEPTH = Bound(1, 512, "transformer blocks; Infinity-8B has 40, HART-0.7B 24")
WIDTH = Bound(1, 65536, "model width; Infinity-8B's is 3584")
HEADS = Bound(1, 1024, "attention heads; Infinity-8B has 28")
FFN = Bound(1, 262144, "FFN hidden width; Infinity-8B's is 14336")
TEXT_CHANNELS = Bound(1, 65536, "text-encoder channels; Flan-T5-XL gives 2048, Qwen2-1.5B 1536")
TEXT_TOKENS = Bound(1, 8192, "text tokens; Infinity takes up to 512, HART 300")
CODE_CHANNELS = Bound(1, 1024, "bits or code channels per token; Infinity-8B predicts 56, HART's codes have 32")
CODEBOOK = Bound(1, 1 << 20, "codebook entries; HART's has 4096")
CHANNELS = Bound(1, 16384, "decoder channels of one level; the released decoders have at most 640")
LEVELS = Bound(1, 16, "decoder levels; the released decoders have 4 or 5")
RES_BLOCKS = Bound(1, 32, "residual blocks per decoder level; the released decoders have 3")
CHANNEL_MULT = Bound(1, 64, "channel multiplier of a decoder level; HART's largest is 4")
SHARED_CONVS = Bound(2, 64, "shared residual convolutions; HART has 4, and only the partially shared form "
                            "(2 or more) is built")
SCALES = Bound(3, 64, "scales of the schedule; HART has 14")
SIDE = Bound(1, 1024, "tokens per side at one scale; HART's last scale has 64")
DIFF_DEPTH = Bound(1, 128, "diffusion-head blocks; HART's has 6")
DIFF_STEPS = Bound(1, 1000, "diffusion sampling steps; the 1000 training steps are the most there are")
CONFIG_BYTES = 1 << 20  # a config.json (upstream's are about 2 KB)
