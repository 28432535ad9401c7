"""The one CUDA event timer: GPU time of queued work, which a host clock only sees through a synchronize."""

from __future__ import annotations

from collections.abc import Callable

import torch


def cuda_seconds(work: Callable[[], object]) -> float:
    """Seconds between two events recorded on the current stream around the work `work()` queues there; waits for
    that work to finish."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    work()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3
