"""HART dimensions: the presets, and the same read from (and written to) upstream's HF ``config.json``.

Upstream's config class is ``HARTForT2IConfig`` (``model_type = "hart_transformer_t2i"``); the names of the
fields below are its keys. Only the inference branch the released 1024-px model runs is built: Llama
attention and MLP, no per-block AdaLN (``disable_aln``), no shared AdaLN, no cross-attention, a text
context prefix. A config asking for another branch is refused with the key named (see ``unsupported``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from fastvar.export.models.config_fields import ConfigFields
from fastvar.export.models.limits import (
    CHANNEL_MULT,
    CHANNELS,
    CODE_CHANNELS,
    CODEBOOK,
    DEPTH,
    DIFF_DEPTH,
    DIFF_STEPS,
    HEADS,
    LEVELS,
    SCALES,
    SHARED_CONVS,
    SIDE,
    TEXT_CHANNELS,
    TEXT_TOKENS,
    WIDTH,
)

HF_MODEL_TYPE = "hart_transformer_t2i"
HF_TOKENIZER_TYPE = "hart_autoencoder_with_disc"
PATCH_NUMS_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)


def llama_mlp_hidden(width: int, mlp_ratio: float = 4.0) -> int:
    """Upstream's SwiGLU width: int(C * ratio * 2 / 3 + 255) // 256 * 256 (4096 for C = 1536)."""
    return int((width * mlp_ratio * 2) / 3 + 255) // 256 * 256


@dataclass(frozen=True)
class HARTTokenizerConfig:
    """The multi-scale residual VQ tokenizer (VAR's VQVAE layout); upstream defaults."""

    vocab: int = 4096
    cvae: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    quant_resi: float = 0.5
    share_quant_resi: int = 4

    def __post_init__(self) -> None:
        if any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError(f"GroupNorm(32) needs every level's channels ({self.ch} x {self.ch_mult}) divisible by 32")
        if self.share_quant_resi < 2:
            raise ValueError("only the partially shared residual convolutions (share_quant_resi >= 2) are built")

    @property
    def stride(self) -> int:
        """Pixels per latent cell: 16 for ch_mult of length 5."""
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class HARTConfig:
    """Everything that shapes a HART transformer (plus its diffusion head)."""

    name: str
    depth: int
    width: int
    heads: int
    mlp_ratio: float = 4.0
    context_tokens: int = 300
    context_dim: int = 1536
    patch_nums: tuple[int, ...] = PATCH_NUMS_1024
    vocab: int = 4096
    cvae: int = 32
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attn_l2_norm: bool = False
    use_context_norm: bool = False
    use_timestep_embed: bool = False
    diff_width: int = 1024
    diff_depth: int = 6
    diff_steps: int = 8
    tokenizer: HARTTokenizerConfig = field(default_factory=HARTTokenizerConfig)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {self.head_dim}")
        if len(self.patch_nums) < 3 or self.patch_nums[0] != 1:
            raise ValueError(f"patch_nums must start at 1 and have at least 3 scales, got {self.patch_nums}")
        if (self.vocab, self.cvae) != (self.tokenizer.vocab, self.tokenizer.cvae):
            raise ValueError(f"transformer codebook ({self.vocab}, {self.cvae}) and tokenizer "
                             f"({self.tokenizer.vocab}, {self.tokenizer.cvae}) disagree")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_hidden(self) -> int:
        return llama_mlp_hidden(self.width, self.mlp_ratio)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def final_side(self) -> int:
        return self.patch_nums[-1]

    def step_tokens(self, si: int) -> int:
        """Tokens the transformer sees at step si: the text context at 0, else the scale's grid."""
        return self.context_tokens if si == 0 else self.patch_nums[si] ** 2

    @property
    def image_tokens(self) -> int:
        """Tokens sampled per image: the 1x1 scale (from the last context position) and every grid."""
        return sum(p * p for p in self.patch_nums)

    def with_depth(self, depth: int) -> HARTConfig:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        return dataclasses.replace(self, depth=depth)

    # ---- upstream config.json ------------------------------------------------------------------
    def to_hf_config(self) -> dict:
        """The keys of upstream's ``config.json`` that this model reads (what a saved directory carries)."""
        return {
            "model_type": HF_MODEL_TYPE,
            "architectures": ["HARTForT2I"],
            "depth": self.depth,
            "embed_dim": self.width,
            "num_heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
            "context_token": self.context_tokens,
            "context_dim": self.context_dim,
            "patch_nums": list(self.patch_nums),
            "norm_eps": self.norm_eps,
            "attn_l2_norm": self.attn_l2_norm,
            "use_context_norm": self.use_context_norm,
            "use_timestep_embed": self.use_timestep_embed,
            "diff_width": self.diff_width,
            "diff_depth": self.diff_depth,
            "num_sampling_steps": str(self.diff_steps),
            "attn_type": "llama",
            "mlp_type": "llama",
            "disable_aln": True,
            "shared_aln": False,
            "use_cross_attn": False,
            "sampler": "iddpm",
        }

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(head_dim=self.head_dim, mlp_hidden=self.mlp_hidden, num_scales=self.num_scales)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> HARTConfig:
        """The inverse of ``to_dict`` (an artifact manifest's ``model.config``), strict: every field and
        derived value present, no other key, and the derived values equal to what the fields give."""
        derived = ("head_dim", "mlp_hidden", "num_scales")
        fields = _exact_keys("HART config", d, [f.name for f in dataclasses.fields(cls)] + list(derived))
        tok = _exact_keys("HART tokenizer config", fields.pop("tokenizer"),
                          [f.name for f in dataclasses.fields(HARTTokenizerConfig)])
        tok["ch_mult"] = tuple(tok["ch_mult"])
        given = {k: fields.pop(k) for k in derived}
        cfg = cls(**{**fields, "patch_nums": tuple(fields["patch_nums"]), "tokenizer": HARTTokenizerConfig(**tok)})
        wrong = [f"{k}={v!r} (the fields give {getattr(cfg, k)!r})" for k, v in given.items() if v != getattr(cfg, k)]
        if wrong:
            raise ValueError(f"HART config: derived values disagree with its fields: {', '.join(wrong)}")
        return cfg


def _exact_keys(what: str, d: dict, names: list[str]) -> dict:
    """A copy of ``d`` holding exactly ``names``; the error names what is missing and what is extra."""
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected a mapping, got {type(d).__name__}")
    missing, extra = [n for n in names if n not in d], sorted(set(d) - set(names))
    if missing or extra:
        raise ValueError(f"{what}: " + "; ".join(p for p in (f"missing {', '.join(missing)}" if missing else "",
                                                             f"unknown {', '.join(extra)}" if extra else "") if p))
    return dict(d)


# What this reference builds for each upstream switch; anything else is another network.
_REQUIRED = {"attn_type": "llama", "mlp_type": "llama", "disable_aln": True, "shared_aln": False,
             "use_cross_attn": False, "sampler": "iddpm"}
# Upstream's HARTForT2IConfig defaults for keys a config.json may omit.
_HF_DEFAULTS = {"attn_type": "gpt2", "mlp_type": "gpt2", "disable_aln": False, "shared_aln": False,
                "use_cross_attn": False, "sampler": "iddpm", "mlp_ratio": 4.0, "norm_eps": 1e-6,
                "attn_l2_norm": False, "use_context_norm": False, "use_timestep_embed": False,
                "diff_width": 1024, "diff_depth": 6, "num_sampling_steps": "8", "context_token": 77,
                "context_dim": 768, "depth": 16, "embed_dim": 1024, "num_heads": 16,
                "patch_nums": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)}


def _is(value, built) -> bool:
    """Equal and of the same JSON type (Python takes ``true`` for 1 and ``1`` for ``true``)."""
    return type(value) is type(built) and value == built


def unsupported(hf: dict) -> list[str]:
    """The switches of an upstream config that select a branch this reference does not build."""
    out = [f"{k}={hf.get(k, _HF_DEFAULTS[k])!r} (built: {v!r})" for k, v in _REQUIRED.items()
           if not _is(hf.get(k, _HF_DEFAULTS[k]), v)]
    context = hf.get("context_token", _HF_DEFAULTS["context_token"])
    if type(context) is int and context <= 0:
        out.append("context_token <= 0 (class-conditional HART; built: text-to-image)")
    if not _is(hf.get("diffusion_head_repeats", 1), 1):
        out.append(f"diffusion_head_repeats={hf['diffusion_head_repeats']!r} (built: 1)")
    return out


def parse_sampling_steps(value: str | int) -> int:
    """Upstream passes ``num_sampling_steps`` to its respacing as a string; one section ("8") is built."""
    text = value.strip() if isinstance(value, str) else str(value) if type(value) is int else ""
    if not re.fullmatch(r"[0-9]{1,4}", text) or not DIFF_STEPS.holds(int(text)):
        raise ValueError(f"num_sampling_steps={str(value)[:40]!r}: accepted: a single step count such as '8', "
                         f"{DIFF_STEPS.accepted()}")
    return int(text)


def from_hf_config(hf: dict, tokenizer: HARTTokenizerConfig | None = None, name: str = "hart-ckpt") -> HARTConfig:
    """Build the config from upstream's ``config.json`` contents (missing keys take upstream's defaults); every
    value is type- and range-checked first (a ``ValueError`` naming the key)."""
    f = ConfigFields(hf, _HF_DEFAULTS)
    tok = tokenizer or HARTTokenizerConfig()
    return HARTConfig(
        name=name, depth=f.int("depth", DEPTH), width=f.int("embed_dim", WIDTH), heads=f.int("num_heads", HEADS),
        mlp_ratio=f.number("mlp_ratio", 0, 64, lo_open=True), context_tokens=f.int("context_token", TEXT_TOKENS),
        context_dim=f.int("context_dim", TEXT_CHANNELS),
        patch_nums=f.ints("patch_nums", SIDE, SCALES, increasing=True), vocab=tok.vocab, cvae=tok.cvae,
        norm_eps=f.number("norm_eps", 0, 1, lo_open=True), attn_l2_norm=f.bool("attn_l2_norm"),
        use_context_norm=f.bool("use_context_norm"), use_timestep_embed=f.bool("use_timestep_embed"),
        diff_width=f.int("diff_width", WIDTH), diff_depth=f.int("diff_depth", DIFF_DEPTH),
        diff_steps=parse_sampling_steps(f.raw("num_sampling_steps")), tokenizer=tok,
    )


_T = HARTTokenizerConfig()
# Upstream's HARTAutoEncoderConfig keys and defaults (ours), for keys a tokenizer config.json may omit.
_TOKENIZER_DEFAULTS = {"vocab_size": _T.vocab, "z_channels": _T.cvae, "ch": _T.ch, "ch_mult": _T.ch_mult,
                       "quant_resi": _T.quant_resi, "share_quant_resi": _T.share_quant_resi, "quant_conv_ks": 3}


# Upstream's quantizers that share VAR's residual codebook lookup (the release folder names "var_hybrid").
_QUANTIZERS = ("var", "var_hybrid")


def tokenizer_from_hf_config(hf: dict) -> HARTTokenizerConfig:
    """The tokenizer geometry from upstream's tokenizer ``config.json`` (HARTAutoEncoderConfig keys), every
    value type- and range-checked first (a ``ValueError`` naming the key)."""
    f = ConfigFields(hf, _TOKENIZER_DEFAULTS)
    if not _is(f.raw("quant_conv_ks"), 3):
        raise ValueError(f"quant_conv_ks={hf['quant_conv_ks']!r}: only 3x3 quant convolutions are built")
    if "quantizer_type" in hf and not any(_is(hf["quantizer_type"], q) for q in _QUANTIZERS):
        raise ValueError(f"quantizer_type={str(hf['quantizer_type'])[:40]!r}: accepted: "
                         f"{' or '.join(map(repr, _QUANTIZERS))} (the residual VQ whose codebook decoding reads)")
    ch, ch_mult = f.int("ch", CHANNELS), f.ints("ch_mult", CHANNEL_MULT, LEVELS)
    if ch * max(ch_mult) > CHANNELS.hi:
        raise ValueError(f"ch={ch} with ch_mult={list(ch_mult)} gives {ch * max(ch_mult)} channels; accepted: "
                         f"at most {CHANNELS.hi} ({CHANNELS.why})")
    return HARTTokenizerConfig(
        vocab=f.int("vocab_size", CODEBOOK), cvae=f.int("z_channels", CODE_CHANNELS), ch=ch, ch_mult=ch_mult,
        quant_resi=f.number("quant_resi", -1, 1), share_quant_resi=f.int("share_quant_resi", SHARED_CONVS),
    )


def tokenizer_to_hf_config(tok: HARTTokenizerConfig, patch_nums: tuple[int, ...] = PATCH_NUMS_1024) -> dict:
    return {"model_type": HF_TOKENIZER_TYPE, "vocab_size": tok.vocab, "z_channels": tok.cvae, "ch": tok.ch,
            "ch_mult": list(tok.ch_mult), "quant_resi": tok.quant_resi, "share_quant_resi": tok.share_quant_resi,
            "quant_conv_ks": 3, "using_znorm": False, "quantizer_type": "var_hybrid",
            "v_patch_nums": list(patch_nums)}


# Smallest tokenizer with upstream's layout (GroupNorm needs channels in multiples of 32).
_TINY_TOKENIZER = HARTTokenizerConfig(vocab=64, cvae=8, ch=32, ch_mult=(1, 1, 2, 2, 4))

PRESETS: dict[str, HARTConfig] = {
    # Released mit-han-lab/hart-0.7b-1024px as far as the code and parameter count tell (heads and the
    # three optional switches are not readable offline; a checkpoint's config.json overrides them).
    "hart-0.7b": HARTConfig("hart-0.7b", depth=24, width=1536, heads=24),
    # Same architecture, CPU-test size: real context length, text width and 14-scale schedule.
    "hart-tiny": HARTConfig("hart-tiny", depth=2, width=64, heads=2, vocab=64, cvae=8, diff_width=64,
                            diff_depth=2, tokenizer=_TINY_TOKENIZER),
}
ALIASES = {"hart": "hart-0.7b"}


def preset(name: str) -> HARTConfig:
    """Look up a preset by name; the error lists what exists."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        known = ", ".join(sorted([*PRESETS, *ALIASES]))
        raise ValueError(f"unknown model {name!r}; known HART models: {known}")
    return PRESETS[key]
