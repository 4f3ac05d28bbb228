"""Infinity dimensions: the presets of upstream's inference scripts, and the same read off a checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VAEConfig:
    """BSQ VAE decoder geometry. ``level_channels[i]`` is the output width of up-level i (0 = finest)."""

    codebook_dim: int = 32
    level_channels: tuple[int, ...] = (128, 256, 512, 512, 512)
    num_res_blocks: int = 2
    upsample_levels: tuple[int, ...] = (1, 2, 3, 4)

    @property
    def stride(self) -> int:
        """Pixels per latent cell (16 for the d32 VAE, 8 for the 8B's 14-bit VAE)."""
        return 2 ** len(self.upsample_levels)

    @classmethod
    def from_base(cls, codebook_dim: int, base_ch: int, ch_mult: tuple[int, ...], num_res_blocks: int = 2):
        n = len(ch_mult)
        return cls(
            codebook_dim=codebook_dim,
            level_channels=tuple(base_ch * m for m in ch_mult),
            num_res_blocks=num_res_blocks,
            upsample_levels=tuple(range(1, n)),
        )


@dataclass(frozen=True)
class InfinityConfig:
    """Everything that shapes an Infinity transformer; defaults are the released models' flags."""

    name: str
    depth: int
    width: int
    heads: int
    mlp_hidden: int
    vae: VAEConfig = field(default_factory=VAEConfig)
    spatial_patchify: bool = False
    block_chunks: int = 8
    text_channels: int = 2048
    text_maxlen: int = 512
    pool_heads: int = 16
    norm_eps: float = 1e-6
    num_levels: int = 15

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {self.head_dim}")
        if self.depth % self.block_chunks:
            raise ValueError(f"depth {self.depth} is not divisible by block_chunks {self.block_chunks}")
        if self.width % self.pool_heads:
            raise ValueError(f"width {self.width} is not divisible by the text pool's {self.pool_heads} heads")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def bits(self) -> int:
        """Bits per token seen by the transformer (d): the VAE's code width, times 4 when patchified."""
        return self.vae.codebook_dim * (4 if self.spatial_patchify else 1)

    @property
    def vocab(self) -> int:
        """Head outputs per token: one logit pair per bit."""
        return 2 * self.bits

    @property
    def blocks_per_chunk(self) -> int:
        return self.depth // self.block_chunks

    def block_prefix(self, i: int) -> str:
        """Upstream's state-dict prefix of block i (``block_chunks.{c}.module.{j}.``)."""
        if self.block_chunks == 1:
            return f"blocks.{i}."
        return f"block_chunks.{i // self.blocks_per_chunk}.module.{i % self.blocks_per_chunk}."

    def with_depth(self, depth: int) -> InfinityConfig:
        """The same widths with another depth (benchmarks: real width and heads, fewer blocks)."""
        if depth < 1:
            raise ValueError(f"--depth must be >= 1, got {depth}")
        chunks = self.block_chunks
        while depth % chunks:
            chunks -= 1
        return dataclasses.replace(self, depth=depth, block_chunks=chunks)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["vae"]["level_channels"] = list(self.vae.level_channels)
        d["vae"]["upsample_levels"] = list(self.vae.upsample_levels)
        d.update(head_dim=self.head_dim, bits=self.bits, vocab=self.vocab)
        return d


def mlp_hidden_for(width: int, mlp_ratio: float = 4.0) -> int:
    """Upstream's FFN width: round(C * ratio / 256) * 256."""
    return round(width * mlp_ratio / 256) * 256


_D32 = VAEConfig.from_base(32, 128, (1, 2, 4, 4, 4))
_D14_PATCHIFY = VAEConfig.from_base(14, 128, (1, 2, 4, 4))
# Smallest VAE that keeps upstream's layout (GroupNorm needs channels in multiples of 32).
_TINY_VAE = VAEConfig.from_base(32, 32, (1, 1, 2, 2, 2))

PRESETS: dict[str, InfinityConfig] = {
    "infinity-2b": InfinityConfig("infinity-2b", depth=32, width=2048, heads=16, mlp_hidden=8192, vae=_D32),
    "infinity-8b": InfinityConfig(
        "infinity-8b", depth=40, width=3584, heads=28, mlp_hidden=14336, vae=_D14_PATCHIFY, spatial_patchify=True
    ),
    "infinity-125m": InfinityConfig(
        "infinity-125m", depth=12, width=768, heads=8, mlp_hidden=3072, vae=_D32, block_chunks=4
    ),
    "infinity-tiny": InfinityConfig(
        "infinity-tiny", depth=4, width=64, heads=2, mlp_hidden=256, vae=_TINY_VAE, block_chunks=2
    ),
}
ALIASES = {"infinity": "infinity-2b"}


def preset(name: str) -> InfinityConfig:
    """Look up a preset by name; the error lists what exists."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        known = ", ".join(sorted([*PRESETS, *ALIASES]))
        raise ValueError(f"unknown model {name!r}; known Infinity models: {known}")
    return PRESETS[key]
