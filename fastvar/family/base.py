"""The model-family interface: what the pipeline asks of a family, and nothing it asks elsewhere.

A family owns its presets and model builder (random weights or upstream checkpoints), its scale schedule
and FastVAR plan, its graph list and memory plan, the object the generation loop drives, its text width
and encoder, its default sampling settings, its PyTorch reference backend and how its
step graphs are fed. Export, runtime, validation, the benchmark and the CLI call these methods; none of them
asks which family it holds. Heavy modules are imported inside the methods, so listing families is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastvar.sampling import SamplingDefaults


@dataclass(frozen=True)
class ResolvedExport:
    """A family's answer to export options: the schedule, its FastVAR plan and the text bucket."""

    sched: Any  # ScaleSchedule
    plan: Any  # PrunePlan
    text_len: int


class ModelFamily:
    """One model family. Subclasses fill every method; the registry holds one instance each."""

    name: str  # the manifest's ``model.family`` and the prefix of its model names
    text_encoder: str  # the encoder whose last hidden states condition the model
    sampling: SamplingDefaults
    loop_graph_kinds: tuple[str, ...]  # graph kinds inside the loop (benchmarks: the rest is the runtime's own)
    codebook_key: str | None = None  # a store tensor the loop itself reads (HART embeds sampled indices with it)

    def owns(self, model: str) -> bool:
        """Whether a model name (preset, alias or ``NAME`` given with ``--ckpt``) is of this family."""
        return model.startswith(self.name)

    # ---- model ---------------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        """Every preset and alias name (the CLI's choices)."""
        raise NotImplementedError

    def preset(self, model: str):
        raise NotImplementedError

    def build_pair(self, model: str, ckpt: str | None, vae: str | None, random_init: bool, depth: int | None,
                   seed: int, precision: str) -> tuple:
        """(transformer, decoder) from the preset with random weights, or loaded strictly from upstream's files."""
        raise NotImplementedError

    def checkpoint_files(self, ckpt: str | None, vae: str | None) -> dict[str, str]:
        """The files a checkpoint-built model comes from, by manifest key (their identity is recorded)."""
        raise NotImplementedError

    def skeleton(self, cfg, precision: str):
        """The transformer on the meta device: enough to describe every graph without any weight."""
        raise NotImplementedError

    def skeleton_decoder(self, cfg):
        """The decoder side (VAE or tokenizer) on the meta device."""
        raise NotImplementedError

    def config_class(self) -> type:
        """The type of this family's model config (``for_config`` tells a config's family by it)."""
        raise NotImplementedError

    def config_from_dict(self, d: dict):
        """The model config a manifest records (``model.config``)."""
        raise NotImplementedError

    # ---- schedule and export -------------------------------------------------------------------
    def resolve_export(self, cfg, opts) -> ResolvedExport:
        """The schedule and plan of export options, refusing what this family cannot export."""
        raise NotImplementedError

    def check_resolution(self, resolution: str, aspect: str) -> None:
        """Refuse, before any weight is read, a resolution or aspect the family has no schedule for. By
        default nothing: a schedule that depends on the checkpoint is checked once it is loaded."""

    def graphs(self, model, decoder, sched, plan, shapes, restore_fns: dict, budget: int | None) -> list:
        """Every graph of an artifact, in export order (``decoder`` may be a meta skeleton)."""
        raise NotImplementedError

    def memory_plan(self, cfg, skeleton, decoder, sched, plan, shapes, precision: str):
        raise NotImplementedError

    def extra_weights(self, decoder) -> dict:
        """Tensors the store holds beyond the graphs' weights, by key (``codebook_key``'s tensor)."""
        return {}

    def check_bench(self, model: str, text_len: int | None, resolutions, aspect: str) -> int:
        """The text bucket a benchmark exports with, after refusing options this family does not take."""
        raise NotImplementedError

    # ---- runtime ---------------------------------------------------------------------------------
    def text_width(self, cfg: dict) -> int:
        """Channels of the text states the condition graph takes (from a manifest's ``model.config``)."""
        raise NotImplementedError

    def schedule(self, cfg: dict, resolution: str, aspect: str):
        """The scale schedule of a resolution and aspect (for a model with manifest config ``cfg``)."""
        raise NotImplementedError

    def geometry(self, cfg: dict):
        """The generation loop's per-family object factory (``runtime.loop``)."""
        raise NotImplementedError

    def reference_backend(self, model, decoder, sched, plan):
        """The PyTorch reference backend over a built model."""
        raise NotImplementedError

    def step_feeds(self, graph: str, inputs: dict, cond: dict, kv, caches: dict, index: int, call, device,
                   values_device) -> dict:
        """Every non-weight input of one step graph, for the graph backends."""
        raise NotImplementedError

    def step_macs(self, cfg, plan, rows: int, batch: int, text_len: int | None) -> list:
        """Multiply-adds of each executed step (``runtime.flops``), for the benchmark's achieved rate."""
        raise NotImplementedError

    def describe(self, cfg, sched, plan) -> str:
        """One log line: the model, the image and what the schedule runs."""
        raise NotImplementedError
