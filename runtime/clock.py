"""Clocks for the chain's timings: host time on a CPU, CUDA events on a GPU.

A GPU step only queues work, so host time stamps would time the queueing; an event recorded on the stream
the work runs on marks when the work itself got there. The chain reads every interval after one wait at
the end, so timing adds no synchronisation between steps.
"""

from __future__ import annotations

import time

import torch


class HostClock:
    """``time.perf_counter`` marks (the work is done when the call returns)."""

    def mark(self) -> float:
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start

    def wait(self) -> None:
        """Nothing is queued on a CPU."""


class CudaClock:
    """CUDA events recorded on ``stream`` (the current stream when None)."""

    def __init__(self, device: torch.device, stream: torch.cuda.Stream | None = None) -> None:
        self.device, self.stream = device, stream

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(self.stream or torch.cuda.current_stream(self.device))
        return event

    def seconds(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    def wait(self) -> None:
        torch.cuda.synchronize(self.device)


def clock_for(backend) -> HostClock | CudaClock:
    """The clock that times ``backend``: events on its stream (or the current one) when it runs on a GPU."""
    device = torch.device(getattr(backend, "device", "cpu"))
    if device.type == "cuda":
        return CudaClock(device, getattr(backend, "stream", None))
    return HostClock()
