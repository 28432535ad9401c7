"""What the decode loop reports each step to: NVTX ranges and an nsys capture window, as in the post, or
torch.profiler over a window of decode steps (trace.py reads what it records). Zero cost when off.

    with profiling.enabled(capture=(30, 50)):
        generate("static_compiled", model, input_ids, 100)

then `nsys profile --capture-range=cudaProfilerApi --trace=cuda,nvtx,osrt python ...` records steps 30-49 with
"Model Forward" and "Check Stop Condition" ranges around every step. `profiling.tracing((30, 50), ...)` records the
same steps of one generation with torch.profiler instead, each in a "decode step i" range (docs/profiling.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

_NULL = contextlib.nullcontext()


class Profiler:
    """What the decode loop calls each step. The base class does nothing (profiling off)."""

    def range(self, name: str) -> contextlib.AbstractContextManager:
        return _NULL

    def at_step(self, step: int) -> None:
        pass

    def done(self) -> None:
        pass


class NvtxProfiler(Profiler):
    def __init__(self, capture: tuple[int, int] | None) -> None:
        try:
            import nvtx
        except ImportError as e:  # pragma: no cover - nvtx is a declared dependency
            raise ImportError("profiling needs the nvtx package: pip install nvtx") from e
        if capture is not None and not 0 <= capture[0] < capture[1]:
            raise ValueError(f"capture must be (start, stop) with 0 <= start < stop, got {capture}")
        self._nvtx = nvtx
        self._capture = capture
        self._capturing = False

    def range(self, name: str) -> contextlib.AbstractContextManager:
        return self._nvtx.annotate(name)

    def at_step(self, step: int) -> None:
        # cudaProfilerStart/Stop bound what `nsys --capture-range=cudaProfilerApi` records.
        if self._capture is None or not torch.cuda.is_available():
            return
        if step == self._capture[0]:
            torch.cuda.profiler.start()
            self._capturing = True
        elif step == self._capture[1]:
            self.done()

    def done(self) -> None:
        if self._capturing:
            torch.cuda.profiler.stop()
            self._capturing = False


class TraceProfiler(Profiler):
    """torch.profiler over decode steps [start, stop) of one generation, each step in a "decode step i" range.

    The profiler moves only at the window's edges, so the steps inside pay for nothing but their range and the
    profiler's own per-op recording: it warms up (CUPTI's set-up) at step start - 1, starts recording at step
    start and stops at step stop. After step stop - 1's range closes, the device is synchronised, so every kernel
    the window launched has run and is in the trace, and that wait lies outside the window.
    """

    def __init__(self, window: tuple[int, int], cuda: bool, on_trace_ready: Callable[[object], None]) -> None:
        start, stop = window
        if not 1 <= start < stop:  # step 0 is the prefill, and the warm-up step comes before `start`
            raise ValueError(f"trace window must be (start, stop) decode steps with 1 <= start < stop, got {window}")
        self.start, self.stop, self.cuda = start, stop, cuda
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profile = torch.profiler.profile(activities=activities, on_trace_ready=on_trace_ready,
                                              schedule=_edges)  # profile.step() is called at the edges only
        self._step_range: contextlib.AbstractContextManager | None = None
        self._steps_seen = 0

    def at_step(self, step: int) -> None:
        if step == 0 and self._steps_seen:
            raise RuntimeError("a TraceProfiler follows the steps of one generation; trace each in its own tracing()")
        self._steps_seen += 1
        self._end_range(settle=step == self.stop)
        if step in (self.start - 1, self.start, self.stop):
            self.profile.step()
        if self.start <= step < self.stop:
            self._step_range = torch.profiler.record_function(f"decode step {step}")
            self._step_range.__enter__()

    def done(self) -> None:
        self._end_range(settle=True)  # a generation that stopped (EOS) inside the window

    def _end_range(self, settle: bool) -> None:
        if self._step_range is None:
            return
        self._step_range.__exit__(None, None, None)
        self._step_range = None
        if settle and self.cuda:
            torch.cuda.synchronize()


def _edges(count: int) -> torch.profiler.ProfilerAction:
    """TraceProfiler's schedule by the profiler's step count, advanced at decode steps start - 1 (1), start (2) and
    stop (3): the trace goes to on_trace_ready when RECORD_AND_SAVE ends."""
    actions = torch.profiler.ProfilerAction
    return {1: actions.WARMUP, 2: actions.RECORD_AND_SAVE}.get(count, actions.NONE)


_active: Profiler = Profiler()


def current() -> Profiler:
    return _active


@contextlib.contextmanager
def enabled(capture: tuple[int, int] | None = None) -> Iterator[Profiler]:
    """Turn on NVTX ranges (and a capture window over decode steps [start, stop)) for the calls inside."""
    global _active
    previous, _active = _active, NvtxProfiler(capture)
    try:
        yield _active
    finally:
        _active.done()
        _active = previous


@contextlib.contextmanager
def tracing(window: tuple[int, int], cuda: bool, on_trace_ready: Callable[[object], None]) -> Iterator[TraceProfiler]:
    """Record decode steps [start, stop) of the one generation run inside with torch.profiler (CUDA activities too
    when `cuda`); `on_trace_ready(prof)` gets the profiler once the window closes (export_chrome_trace it there)."""
    global _active
    tracer = TraceProfiler(window, cuda, on_trace_ready)
    previous, _active = _active, tracer
    try:
        with tracer.profile:
            yield tracer
            tracer.done()
    finally:
        _active = previous
