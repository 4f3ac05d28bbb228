"""The generation loop, one for every backend and model family: noise, steps, sampling, feedback, decode.

A backend runs the graphs; a loop object (``runtime.loop``, from the model family) says what a token is,
how it is drawn and what it feeds back; this loop owns the order, teacher forcing, what is kept and the
timings, so neither backends nor families can drift apart in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from fastvar.export.models.bsq_vae import to_uint8_image
from fastvar.export.schedules import PrunePlan, ScaleSchedule, StepPlan
from fastvar.runtime.clock import CudaClock, HostClock, clock_for
from fastvar.runtime.loop import Geometry, HARTGeometry
from fastvar.runtime.memory_probe import PhasePeaks
from fastvar.runtime.nonfinite import NonFiniteRows, RowFlags, failure_lines, non_finite_rows
from fastvar.runtime.step_call import StepCall
from fastvar.sampling import SamplingSettings

__all__ = ["Backend", "Geometry", "HARTGeometry", "GenerationResult", "NonFiniteRows", "SamplingSettings", "generate",
           "scale_key"]


class Backend(Protocol):
    """What the chain asks of every backend (``runtime.backends``: the graph backend over ONNX Runtime,
    TensorRT, ONNX-reference or torch-graph sessions, and the torch references). HART's loop also calls
    ``diffusion``, ``next_input`` and ``codebook`` (``runtime.backends.hart_calls``)."""

    device: torch.device

    def start(self, text: torch.Tensor, lengths: torch.Tensor, cfg_active: bool) -> None: ...

    def step(self, st: StepPlan, call: StepCall) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def end_loop(self) -> None: ...

    def decode(self, state: torch.Tensor) -> torch.Tensor: ...


@dataclass
class GenerationResult:
    images: np.ndarray  # (n, H, W, 3) uint8 RGB: the rows in ``rows`` (every row of the batch unless one failed)
    tokens: dict[str, np.ndarray] = field(default_factory=dict)  # scale_XX -> bits (B,h,w,bits) / indices (B,h,w)
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # scale_XX -> (B, h*w, V) float32
    timings: dict = field(default_factory=dict)
    rows: tuple[int, ...] = ()  # the batch row of each image
    failed: dict[int, str] = field(default_factory=dict)  # batch row -> where it first went non-finite

    @property
    def batch(self) -> int:
        return len(self.rows) + len(self.failed)


def scale_key(index: int) -> str:
    return f"scale_{index:02d}"


def _check_forced_keys(force_tokens: dict, plan: PrunePlan) -> None:
    """Teacher forcing replaces the scales it names; a name that matches no scale of the schedule is a mistake
    (a scale this run's plan skips is not: tokens saved by a ``none`` run force a ``fastvar`` run)."""
    expected = [scale_key(st.index) for st in plan.steps]
    if not force_tokens:
        raise ValueError(f"--force-tokens: the archive holds no arrays; expected keys: {', '.join(expected)}")
    unknown = sorted(set(force_tokens) - set(expected))
    if unknown:
        raise ValueError(f"--force-tokens: {', '.join(unknown)} match no scale of this schedule; expected keys: "
                         f"{', '.join(expected)}")


@torch.inference_mode()
def generate(backend: Backend, sched: ScaleSchedule, plan: PrunePlan, geom: Geometry | HARTGeometry, text: torch.Tensor,
             lengths: torch.Tensor, settings: SamplingSettings, force_tokens: dict[str, np.ndarray] | None = None,
             keep_logits: bool = False, clock: HostClock | CudaClock | None = None,
             allow_failed_rows: bool = False, memory: PhasePeaks | None = None) -> GenerationResult:
    """Generate a batch of images; text (B, Lt, D) padded, lengths (B,), one row of ``settings`` per image.

    ``clock`` times the loop, each step and the decoder (default: CUDA events on the backend's stream on a
    GPU, host time on a CPU); the timings are read after the image, so timing adds no wait between steps.

    A row whose logits (HART: or diffusion residual, or either family's decoder input or output) hold a NaN
    or infinity fails: flagged on the device, read once after the loop. By default that raises
    ``NonFiniteRows`` (a caller needing every row: validation, benchmarks); with ``allow_failed_rows`` the
    result leaves the failed rows' images out and names them in ``failed`` (tokens and logits keep every
    row: they are the evidence), and a batch whose every row failed is not decoded.

    ``memory`` (benchmarks, tests) records the resident peak of the conditioning, of each step and of the
    decoder, each on its own."""
    batch = text.shape[0]
    if settings.batch != batch:
        raise ValueError(f"the sampling settings have {settings.batch} rows, the text {batch}")
    if force_tokens is not None:
        _check_forced_keys(force_tokens, plan)
    loop = geom.loop(sched, settings)
    cfg = settings.cfg
    clock = clock or clock_for(backend)
    noise = loop.draw(settings.seeds)  # inputs fixed by the seeds: drawn before the timed loop
    t_start = clock.mark()
    if memory is not None:
        memory.start()
    backend.start(text, lengths, cfg_active=loop.guided(cfg))
    marks = [clock.mark()]  # the end of the conditioning, then of each step
    if memory is not None:
        memory.mark("conditioning")
    last_exec = plan.executed[-1].index
    tokens: dict[str, torch.Tensor] = {}
    logits_kept: dict[str, torch.Tensor] = {}
    flags = RowFlags(batch)
    for st in plan.executed:
        logits, sampled = loop.step(backend, st, noise, cfg, write_kv=st.index != last_exec)
        where = f"scale {st.index} ({st.h}x{st.w} tokens)"
        flags.check(f"the logits of {where}", logits)  # what is sampled from: after CFG (and τ)
        key = scale_key(st.index)
        drawn = loop.sample(logits, sampled, st, noise)
        if force_tokens is not None and key in force_tokens:
            drawn = loop.forced(np.asarray(force_tokens[key]), key, st, batch).to(logits.device)
        tokens[key] = drawn  # stays on the device: no host sync between steps
        if keep_logits:
            logits_kept[key] = logits.float().clone()
        for what, values in loop.advance(backend, st, drawn, noise, cfg).items():
            flags.check(f"{what} at {where}", values)
        marks.append(clock.mark())
        if memory is not None:
            memory.mark(f"step {st.index}")
    t_dec = marks[-1]
    flags.check("the decoder's input (the state after the last step)", loop.state)
    del noise, logits, sampled, drawn
    loop.end_loop()
    backend.end_loop()  # the decoder needs none of the loop's state: its peak is not added to theirs
    failed = flags.read()  # the one host sync of the checks: after the loop, before the decoder
    if failed and not allow_failed_rows:
        raise NonFiniteRows(failure_lines(failed, settings.seeds))
    images = np.empty((0, 0, 0, 3), np.uint8)
    if len(failed) < batch:
        if failed:  # the failed rows decode zeros: nothing non-finite reaches the decoder
            loop.state[sorted(failed)] = 0
        image = loop.decode(backend)
        bad_image = non_finite_rows(image)
        images = to_uint8_image(image)
        failed |= {row: "the decoded image" for row in bad_image.nonzero().flatten().tolist() if row not in failed}
        if failed and not allow_failed_rows:
            raise NonFiniteRows(failure_lines(failed, settings.seeds))
    t_end = clock.mark()
    if memory is not None:
        memory.mark("decode")
    clock.wait()
    rows = tuple(r for r in range(batch) if r not in failed)
    result = GenerationResult(images=images[list(rows)] if len(images) else images, rows=rows, failed=failed)
    result.tokens = {k: t.cpu().numpy() for k, t in tokens.items()}
    result.logits = {k: t.cpu().numpy() for k, t in logits_kept.items()}
    steps_t = [{"index": st.index, "seconds": clock.seconds(a, b)}
               for st, a, b in zip(plan.executed, marks[:-1], marks[1:], strict=True)]
    result.timings = {"loop_s": clock.seconds(t_start, t_dec), "decode_s": clock.seconds(t_dec, t_end),
                      "steps": steps_t}
    return result
