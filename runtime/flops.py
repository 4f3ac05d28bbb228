"""Multiply-adds of one generation, counted from the schedule: the compute ceiling of a pruning schedule.

``step_macs`` takes either family's config. Both counts are per executed step and block, for every row
(CFG doubles them); a pruned sub-layer runs on its K kept tokens and a pruned block's past holds only
kept tokens (``kv_layout.past_lengths``, the lengths the graphs are exported with). The selection,
gathers, restorations, norms, RoPE, softmax and other elementwise work are left out (memory-bound, a few
% of the total), which is why this is a ceiling for the speedup and not a prediction.

Infinity: self-attention projections and the attention itself over the past plus the new tokens,
cross-attention to the text (query and output projections and the attention; the text's K/V projections
belong to the conditioning and are not counted), the FFN, the word embedding of the scale's input, and
the head.

HART (``hart_step_macs``; no cross-attention, the text is a prefix of the sequence):

* step 0 runs the ``context_tokens`` (300) text tokens through every block and caches their K/V; every
  later step attends to them (``PrunePlan.first_step_kv``). Its input projection is the text's
  ``context_embed`` (context_dim -> width, the condition graph, on every row: the unconditional rows
  are zero text, computed all the same); its head sees the last text position only (the 1x1 scale).
* steps > 0: the input projection ``word_embed`` of x_in (Cvae -> width) on the B images' tokens (the
  CFG rows are copies), and the head on every token of the scale (a pruned step restores all of them
  before the head).
* per block: the qkv projection (3 C^2 per query token), attention scores and values over past + new
  keys (2 C per query and key), the output projection (C^2), and the SwiGLU MLP (gate, up and down:
  3 C * mlp_hidden). Queries are the step's tokens, or its kept tokens in a pruned block.
* the last step adds the diffusion head on all of the final scale's tokens, never pruned: its
  condition (``word_embed`` of the sampled codebook vectors, B images' tokens), then ``diff_steps``
  denoiser calls on every CFG row (both halves run, as the backends run them): input projection
  (Cvae -> W), timestep MLP (256 -> W -> W), condition projection (C -> W), per residual block the
  AdaLN modulation (W -> 3W) and the MLP (2 W^2), and the final layer (W -> 2W modulation, W -> 2 Cvae).
* left out besides the elementwise work: the head's AdaLN (one row per image, once), the level
  embedding (a table row), the FastVAR restore's area upsampling of the 36x36 caches, and the
  tokenizer's ``next_input`` (the Φ 3x3 convolution and the resampling matrices on B rows of Cvae
  channels: under 0.01 % of hart-0.7b's count).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastvar.export.kv_layout import past_lengths
from fastvar.export.models.hart_config import HARTConfig
from fastvar.export.models.hart_diffusion import TIME_FREQ_DIM
from fastvar.export.models.infinity_config import InfinityConfig
from fastvar.export.schedules import PrunePlan


@dataclass
class StepMacs:
    index: int
    macs: int


def step_macs(cfg: InfinityConfig | HARTConfig, plan: PrunePlan, rows: int, batch: int,
              text_len: int | None = None) -> list[StepMacs]:
    """Per executed step, counted by the config's model family; ``rows`` = 2 * batch with CFG. ``text_len`` is
    Infinity's text bucket (HART's text is always its ``context_tokens``)."""
    from fastvar.family import for_config

    return for_config(cfg).step_macs(cfg, plan, rows, batch, text_len)


def total_macs(cfg: InfinityConfig | HARTConfig, plan: PrunePlan, rows: int, batch: int,
               text_len: int | None = None) -> int:
    return sum(s.macs for s in step_macs(cfg, plan, rows, batch, text_len))


def infinity_step_macs(cfg: InfinityConfig, plan: PrunePlan, rows: int, batch: int, text_len: int) -> list[StepMacs]:
    c, hidden, depth = cfg.width, cfg.mlp_hidden, cfg.depth
    out = []
    for st in plan.executed:
        past = past_lengths(plan, depth, st.index)
        total = 0
        for i in range(depth):
            q = st.kept if st.pruned and plan.block_pruned(i) else st.tokens
            sa = q * c * 3 * c + q * (past[i] + q) * c * 2 + q * c * c
            ca = q * c * c * 2 + q * text_len * c * 2
            ffn = q * c * hidden * 2
            total += rows * (sa + ca + ffn)
        total += st.tokens * cfg.bits * c * rows  # word embedding of the scale's input
        total += rows * st.tokens * c * cfg.vocab  # head (both CFG halves, then mixed)
        out.append(StepMacs(st.index, total))
    return out


def hart_step_macs(cfg: HARTConfig, plan: PrunePlan, rows: int, batch: int) -> list[StepMacs]:
    c, hidden, depth = cfg.width, cfg.mlp_hidden, cfg.depth
    last = plan.executed[-1].index
    out = []
    for st in plan.executed:
        past = past_lengths(plan, depth, st.index)
        n = cfg.step_tokens(st.index)  # step 0: the text context, not the 1x1 scale it samples
        total = 0
        for i in range(depth):
            q = st.kept if st.pruned and plan.block_pruned(i) else n
            attn = q * c * 3 * c + q * (past[i] + q) * c * 2 + q * c * c
            mlp = q * c * hidden * 3
            total += rows * (attn + mlp)
        if st.index == 0:
            total += rows * n * cfg.context_dim * c  # context_embed (the condition graph)
            total += rows * 1 * c * cfg.vocab  # head on the last text position
        else:
            total += batch * n * cfg.cvae * c  # word_embed of x_in
            total += rows * n * c * cfg.vocab  # head on every token
        if st.index == last:
            total += hart_diffusion_macs(cfg, rows, batch, n)
        out.append(StepMacs(st.index, total))
    return out


def hart_diffusion_macs(cfg: HARTConfig, rows: int, batch: int, tokens: int) -> int:
    """The last step's diffusion head on ``tokens`` per image: its condition, then ``diff_steps`` calls of
    the denoiser on every row (``rows`` = 2 * batch with CFG)."""
    c, w, cv = cfg.width, cfg.diff_width, cfg.cvae
    condition = batch * tokens * cv * c  # word_embed of the sampled codebook vectors
    per_call = (cv * w  # input_proj
                + TIME_FREQ_DIM * w + w * w  # time_embed MLP
                + c * w  # cond_embed
                + cfg.diff_depth * (w * 3 * w + 2 * w * w)  # res blocks: AdaLN modulation + MLP
                + w * 2 * w + w * 2 * cv)  # final layer: modulation + linear
    return condition + cfg.diff_steps * rows * tokens * per_call
