"""The BSQ VAE decoder of Infinity (upstream flux_vqgan layout) and the bits -> codes bookkeeping."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvar.export.models.infinity_config import VAEConfig


class Conv(nn.Module):
    """Upstream wraps every conv, so keys read ``….conv.weight``."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Normalize(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        if c % 32 == 0:
            groups = 32
        elif c % 24 == 0:
            groups = 24
        else:
            raise ValueError(f"GroupNorm needs channels divisible by 32 or 24, got {c}")
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = Normalize(cin)
        self.conv1 = Conv(cin, cout, 3)
        self.norm2 = Normalize(cout)
        self.conv2 = Conv(cout, cout, 3)
        if cin != cout:
            self.nin_shortcut = Conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = Conv(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        chans = cfg.level_channels
        block_in = chans[-1]
        self.conv_in = Conv(cfg.codebook_dim, block_in, 3)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        ups: list[nn.Module] = []
        for level in reversed(range(len(chans))):
            up = nn.Module()
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, chans[level]))
                block_in = chans[level]
            up.block = nn.ModuleList(blocks)
            if level in cfg.upsample_levels:
                up.upsample = Upsample(block_in)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = Normalize(block_in)
        self.conv_out = Conv(block_in, 3, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for level in reversed(range(len(self.up))):
            for blk in self.up[level].block:
                h = blk(h)
            if hasattr(self.up[level], "upsample"):
                h = self.up[level].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class BSQVAEDecoder(nn.Module):
    """The decoder half of upstream's AutoEncoder; ``state_dict()`` keys read ``decoder.…``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.decoder = Decoder(cfg)

    def decode(self, summed_codes: torch.Tensor) -> torch.Tensor:
        """(B, d, H, W) summed codes -> image in [-1, 1], (B, 3, H*stride, W*stride)."""
        return self.decoder(summed_codes.float()).clamp(-1, 1)


def bits_to_codes(bits: torch.Tensor, codebook_dim: int, patchify: bool) -> torch.Tensor:
    """(B, h, w, bits) in {0, 1} -> codes (B, d, 1, H, W): ±1/sqrt(d), L2-normalised as upstream does.

    With spatial patchify (8B) the 4·d bits of a token are unshuffled onto a 2x finer grid first.
    """
    if patchify:
        bits = F.pixel_shuffle(bits.permute(0, 3, 1, 2).float(), 2).permute(0, 2, 3, 1)
    scale = 1 / np.sqrt(codebook_dim)
    codes = bits.float() * scale * 2 - scale
    codes = F.normalize(codes, dim=-1)
    return codes.permute(0, 3, 1, 2).unsqueeze(2)


def upsample_codes(codes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upstream's z_interplote_up: trilinear on (B, d, 1, h, w) (bilinear in h, w, align_corners=False)."""
    return F.interpolate(codes, size=(1, *size), mode="trilinear")


def next_input(summed: torch.Tensor, vae_hw: tuple[int, int], patchify: bool) -> torch.Tensor:
    """The next step's input tokens (B, h*w, bits) from the summed codes, as upstream forms them."""
    x = F.interpolate(summed, size=(1, *vae_hw), mode="trilinear").squeeze(-3)
    if patchify:
        x = F.pixel_unshuffle(x, 2)
    return x.reshape(*x.shape[:2], -1).permute(0, 2, 1)


def to_uint8_image(img: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, 3, H, W) -> uint8 RGB (B, H, W, 3), truncating as upstream's ``.to(torch.uint8)``."""
    img = (img + 1) / 2
    return img.permute(0, 2, 3, 1).mul(255).to(torch.uint8).cpu().numpy()
