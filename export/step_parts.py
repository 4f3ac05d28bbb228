"""A step graph as a sequence of parts: the input embedding, one part per block, the head.

A step graph of either family is the same few computations at every block: blocks of one *form* (same
pruning, same KV lengths, same restore inputs and outputs, same attention chunking) differ only in
the names of their inputs, outputs and weights. So the export traces each form once per scale and
stamps it per block (``fastvar.export.stamp``), while the torch module of the graph (what the goldens
are recorded on) runs the very same parts in order. Tensors that flow from part to part and are not
graph inputs or outputs (the residual stream, HART's RoPE tables) carry names in the ``STREAM``
namespace, which no graph interface uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:  # graphs.py builds its step graphs from parts, so it imports this module, not the reverse
    from fastvar.export.graphs import GraphDef, TensorSpec

STREAM = "stream."  # names of tensors passed between parts inside one graph

PartCall = Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def stream_name(what: str) -> str:
    return STREAM + what


@dataclass(frozen=True)
class Part:
    """One stage of a step graph.

    ``key`` identifies the computation: two parts with equal keys compute the same function of their
    inputs, outputs and weights taken position by position, whatever those are named. ``call`` maps the
    model (its weights substituted) and the named inputs to the named outputs.
    """

    label: str  # unique within the graph: prefixes the stamped nodes and values
    key: tuple
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    weights: tuple[str, ...]  # the model's parameter and buffer names this part may read
    call: PartCall

    def definition(self, graph: str) -> GraphDef:
        """The part as a graph of its own, for tracing (weights as inputs, like the whole graph's)."""
        from fastvar.export.graphs import GraphDef

        return GraphDef(f"{graph}:{self.label}", "part", list(self.inputs), list(self.outputs), list(self.weights))

    def module(self, model: nn.Module) -> nn.Module:
        from fastvar.export.graphs import CallModel, Traced

        in_names = [s.name for s in self.inputs]
        out_names = [s.name for s in self.outputs]
        call = self.call

        def run(m: nn.Module, data: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            out = call(m, dict(zip(in_names, data, strict=True)))
            return tuple(out[n] for n in out_names)

        return Traced(CallModel(model), ["m." + w for w in self.weights], len(in_names), run)


def run_parts(parts: list[Part], input_names: list[str],
              output_names: list[str]) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
    """The whole graph as one call: every part in order over one table of named tensors."""

    def call(m: nn.Module, data: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        values = dict(zip(input_names, data, strict=True))
        for p in parts:
            out = p.call(m, {s.name: values[s.name] for s in p.inputs})
            values.update((s.name, out[s.name]) for s in p.outputs)
        return tuple(values[n] for n in output_names)

    return call


def block_weights(model: nn.Module, prefix: str) -> tuple[str, ...]:
    """Full names of one block's parameters and buffers, in the block's own order (the same order for every
    block, which is what lets one traced block stand for another)."""
    blk = model.get_submodule(prefix.rstrip("."))
    names = [n for n, _ in blk.named_parameters()] + [n for n, _ in blk.named_buffers()]
    return tuple(prefix + n for n in names)


def outside_blocks(model: nn.Module, block_prefixes: list[str]) -> tuple[str, ...]:
    """Every weight that belongs to no block: what the embedding and head parts may read."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return tuple(n for n in names if not any(n.startswith(p) for p in block_prefixes))
