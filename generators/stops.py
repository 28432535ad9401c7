"""Stop checks: how a decode loop learns that every row has produced EOS.

The loop queues step i, then asks its StopCheck `should_stop(i)`. The policies differ only in when the host
waits for the GPU:
- EveryStep: `.item()` on the stop flag after every step (the post's loop; the GPU idles while the host waits).
- PingPong: the post's two streams; step i runs on stream i % 2 and the host reads step i-1's flag from pinned
  memory only after step i is queued.
- Deferred: one stream; the flag is copied to pinned memory with an event, and read one step late.
- EveryK: `.item()` every k steps (`every_k(8)`: the policy for one k).
- Never: no check; the loop runs max_new_tokens steps.
Policies that look late let the loop run past the stop step; rows that finished only emit padding then, and the
loop trims the extra steps (see loop.finish), so the output is the same for all of them.
A variant names its policy by class (`stop=stops.Deferred`); the loop makes one per generation, for its flag.
"""

from __future__ import annotations

import contextlib
import functools

import torch

_NULL = contextlib.nullcontext()


class StopCheck:
    """Base policy: every step runs on the current stream."""

    requires_cuda = False  # True: the policy needs CUDA streams (a variant using it refuses a CPU model)

    def __init__(self, stop_flag: torch.Tensor) -> None:
        self.stop_flag = stop_flag  # [] bool, on the model's device: every row has produced EOS

    def step_stream(self, step: int) -> contextlib.AbstractContextManager:
        return _NULL

    def should_stop(self, step: int) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Called once after the loop: the caller's stream must see all the work."""


class EveryStep(StopCheck):
    def should_stop(self, step: int) -> bool:
        return bool(self.stop_flag.item())  # host waits for the step to finish


class EveryK(StopCheck):
    k = 1  # check every k steps; every_k(k) makes the policy for another k

    def should_stop(self, step: int) -> bool:
        return (step + 1) % self.k == 0 and bool(self.stop_flag.item())


@functools.cache
def every_k(k: int) -> type[EveryK]:
    """EveryK with its k, for a registry line: `stop=stops.every_k(8)`. The same k gives the same class."""
    if k < 1:
        raise ValueError(f"every_k: k must be >= 1, got {k}")
    return type(f"EveryK{k}", (EveryK,), {"k": k})


class Never(StopCheck):
    def should_stop(self, step: int) -> bool:
        return False


def _pinned_flags(device: torch.device) -> torch.Tensor:
    # Two host flags, so step i's copy never overwrites the flag of step i-1 that the host is about to read.
    return torch.zeros(2, dtype=torch.bool, pin_memory=device.type == "cuda")


class Deferred(StopCheck):
    """Read the stop flag one step late through pinned memory and an event, on one stream."""

    def __init__(self, stop_flag: torch.Tensor) -> None:
        super().__init__(stop_flag)
        self.flags = _pinned_flags(stop_flag.device)
        cuda = stop_flag.device.type == "cuda"
        self.events = [torch.cuda.Event() if cuda else None for _ in range(2)]

    def should_stop(self, step: int) -> bool:
        slot = step % 2
        self.flags[slot].copy_(self.stop_flag, non_blocking=True)
        if self.events[slot] is not None:
            self.events[slot].record()
        if step == 0:
            return False
        prev = 1 - slot
        if self.events[prev] is not None:
            self.events[prev].synchronize()  # step `step` is already queued: the GPU stays busy meanwhile
        return bool(self.flags[prev])


class PingPong(StopCheck):
    """The post's two-stream interleaving: step i on stream i % 2, the host reads step i-1's flag."""

    requires_cuda = True

    def __init__(self, stop_flag: torch.Tensor) -> None:
        super().__init__(stop_flag)
        if stop_flag.device.type != "cuda":
            raise ValueError("the two-stream ping-pong stop check needs CUDA")
        self.caller = torch.cuda.current_stream()
        self.streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        self.flags = _pinned_flags(stop_flag.device)
        self.events = [torch.cuda.Event(), torch.cuda.Event()]

    def step_stream(self, step: int) -> contextlib.AbstractContextManager:
        stream = self.streams[step % 2]
        # Step i reads what step i-1 wrote (tokens, cache, finished): order it explicitly after that stream.
        stream.wait_stream(self.caller if step == 0 else self.streams[(step - 1) % 2])
        return torch.cuda.stream(stream)

    def should_stop(self, step: int) -> bool:
        slot = step % 2
        with torch.cuda.stream(self.streams[slot]):
            self.flags[slot].copy_(self.stop_flag, non_blocking=True)
            self.events[slot].record()
        if step == 0:
            return False
        self.events[1 - slot].synchronize()
        return bool(self.flags[1 - slot])

    def close(self) -> None:
        for stream in self.streams:
            self.caller.wait_stream(stream)

