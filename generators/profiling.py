"""NVTX ranges and an nsys capture window, as in the post. Zero cost when off.

    with profiling.enabled(capture=(30, 50)):
        generate("static_compiled", model, input_ids, 100)

then `nsys profile --capture-range=cudaProfilerApi --trace=cuda,nvtx,osrt python ...` records steps 30-49 with
"Model Forward" and "Check Stop Condition" ranges around every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
