"""HART's tokenizer at inference: the multi-scale residual VQ bookkeeping and the image decoder.

Upstream (hart/modules/models/autoencoder: ``HARTAutoEncoder``, ``HARTHybridQuantizer``,
var_quantize_multiple_res.py ``Phi``/``PhiPartiallyShared``; hart/modules/networks/basic_vae.py
``Decoder``). Per step si < S-1 the sampled token map (B, Cvae, pn, pn) is bicubic-upsampled to the final
grid, passed through Phi (0.5 * h + 0.5 * conv3x3(h), one of 4 convs chosen by the nearest tick to
si / (S - 1)) and added to f_hat; the next step's input is the area-downsampled f_hat. The last step adds
its tokens (discrete + diffusion residual) to f_hat with no resize and no Phi. Decoding is
decoder(post_quant_conv(f_hat)) clamped to [-1, 1]. Parameter names are upstream's, under ``vae.`` in
the tokenizer checkpoint; the encoder, quant_conv and the discriminator are not built.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvar.export.models.hart_config import HARTTokenizerConfig


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a fused 1x1 qkv conv, scale C^-0.5."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        att = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c ** -0.5, dim=2)  # (B, HWq, HWk)
        out = torch.bmm(v, att.transpose(1, 2)).view(b, c, h, w)
        return x + self.proj_out(out)


class Upsample2x(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    def __init__(self, blocks: list[ResnetBlock], attn: list[AttnBlock], upsample: bool, c: int) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        if upsample:
            self.upsample = Upsample2x(c)


class _Mid(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)


class Decoder(nn.Module):
    """VAR / LDM vq-f16 decoder: mid (res, attn, res), then levels coarse to fine (attention at the coarsest)."""

    def __init__(self, cfg: HARTTokenizerConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        c = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.cvae, c, 3, padding=1)
        self.mid = _Mid(c)
        levels: list[_Level] = []
        for lv in reversed(range(n)):
            cout = cfg.ch * cfg.ch_mult[lv]
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(c, cout))
                c = cout
                if lv == n - 1:
                    attn.append(AttnBlock(c))
            levels.insert(0, _Level(blocks, attn, lv != 0, c))
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for lv in reversed(range(len(self.up))):
            level = self.up[lv]
            for j, blk in enumerate(level.block):
                h = blk(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if lv != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    """(1 - r) * h + r * conv3x3(h): the residual refinement after each upsampled token map."""

    def __init__(self, c: int, ratio: float) -> None:
        super().__init__(c, c, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class PhiPartiallyShared(nn.Module):
    """K Phi convs shared over the steps: step at a = si / (S - 1) uses the one with the nearest tick."""

    def __init__(self, count: int, c: int, ratio: float) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(c, ratio) for _ in range(count))
        edge = 1 / 3 / count if count == 4 else 1 / 2 / count
        self.ticks = np.linspace(edge, 1 - edge, count)

    def index(self, at: float) -> int:
        return int(np.argmin(np.abs(self.ticks - at)))

    def __getitem__(self, at: float) -> Phi:
        return self.qresi_ls[self.index(at)]


class _Quantize(nn.Module):
    def __init__(self, cfg: HARTTokenizerConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab, cfg.cvae)
        self.quant_resi = PhiPartiallyShared(cfg.share_quant_resi, cfg.cvae, cfg.quant_resi)


class HARTTokenizer(nn.Module):
    """Codes -> image: ``state_dict()`` keys equal upstream's ``vae.*`` decode-side keys (prefix stripped)."""

    def __init__(self, cfg: HARTTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.decoder = Decoder(cfg)
        self.post_quant_conv = nn.Conv2d(cfg.cvae, cfg.cvae, 3, padding=1)
        self.quantize = _Quantize(cfg)

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantize.embedding.weight

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, l) indices -> (B, l, Cvae) codebook rows."""
        return self.quantize.embedding(idx)

    @staticmethod
    def tokens_to_map(h: torch.Tensor, side: int) -> torch.Tensor:
        """(B, side*side, Cvae) row-major tokens -> (B, Cvae, side, side)."""
        return h.transpose(1, 2).reshape(h.shape[0], h.shape[2], side, side)

    def next_input(self, si: int, f_hat: torch.Tensor, h: torch.Tensor,
                   patch_nums: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Add step si's token map h (B, Cvae, pn, pn) into f_hat; return f_hat and the next step's input.

        The next input is returned as tokens (B, pn_{si+1}^2, Cvae), what ``word_embed`` takes. At the
        last step h is already at the final size and is added as it is (no Phi, no next input: f_hat)."""
        num = len(patch_nums)
        final = patch_nums[-1]
        if si == num - 1:
            f_hat = f_hat + h
            return f_hat, f_hat.flatten(2).transpose(1, 2)
        up = F.interpolate(h.float(), size=(final, final), mode="bicubic")
        f_hat = f_hat + self.quantize.quant_resi[si / (num - 1)](up)
        side = patch_nums[si + 1]
        nxt = F.interpolate(f_hat, size=(side, side), mode="area")
        return f_hat, nxt.flatten(2).transpose(1, 2)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cvae, H, W) -> image (B, 3, 16H, 16W) in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat.float())).clamp(-1, 1)

    def to_image(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Upstream's output: the decoded image mapped to [0, 1]."""
        return (self.decode(f_hat) + 1) * 0.5
