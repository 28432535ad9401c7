"""Execution modes: how a session runs its cache's steps. Each owns what it does to them, once, when the session
is made (`bind`):
- EAGER: the cache's own prefill and step, as Python calls them.
- COMPILE: the static cache's one-token step torch.compile'd (fullgraph, after gpt-fast); the prefill eager.
- CUDA_GRAPH: that compiled step captured in a CUDA graph, replayed once a step; the prefill too, where the cache
  allows it (caches.LeanKV).
A compiled or captured step is bound to the session's tensors, so those sessions are kept for the next call of the
same shape (loop.session).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

CAPTURE_WARMUP = 3
# Token columns capture() writes after the prompt: the prefill's, then its warm-up steps' (the captured step
# itself only records). A session for fewer new tokens still allocates this many.
CAPTURE_ROOM = 1 + CAPTURE_WARMUP

Steps = tuple[Callable[[], None], Callable[[], None]]  # (prefill, step)


class Execution:
    """Base mode: the cache's own steps, eager."""

    compiles = False  # the step is torch.compile'd: the cache must be static, and its session is kept
    captured = False  # the step is a CUDA graph replay: needs CUDA
    capture_room = 0  # token columns the mode writes after the prompt before it is done binding

    def bind(self, session: object, input_ids: torch.Tensor) -> Steps:
        """(prefill, step) for `session` (loop.Session: its cache, Decoding and reset)."""
        return session.cache.prefill, session.cache.step

    def __repr__(self) -> str:
        return type(self).__name__


class Eager(Execution):
    """Every step as Python calls it: hundreds of kernel launches from the host per step."""


class Compile(Execution):
    """The one-token step torch.compile'd with fullgraph=True; the prefill stays eager."""

    compiles = True

    def bind(self, session: object, input_ids: torch.Tensor) -> Steps:
        fn, args = session.cache.one_token
        step = compiled(fn, dynamic=session.cache.compile_dynamic, options=session.cache.compile_options)
        return session.cache.prefill, lambda: step(*args)


class CudaGraph(Compile):
    """The compiled step captured in a CUDA graph: one replay a step, no per-kernel launch cost."""

    captured = True
    capture_room = CAPTURE_ROOM

    def bind(self, session: object, input_ids: torch.Tensor) -> Steps:
        prefill, step = super().bind(session, input_ids)
        # Replays advance `col`, the cache fill level and `finished` on device.
        session.reset(input_ids)
        prefill()
        step = capture(step).replay
        if session.cache.capture_prefill:  # the prompt is read from d.tokens, which reset() refills in place
            session.reset(input_ids)
            prefill = capture(prefill).replay
        return prefill, step


EAGER, COMPILE, CUDA_GRAPH = Eager(), Compile(), CudaGraph()


@functools.cache
def compiled(step: Callable, dynamic: bool, options: tuple = ()) -> Callable:
    """`step` torch.compile'd, one compiled function per step function and inductor options ((name, value) pairs):
    every variant that compiles it so shares dynamo's cache of compiled graphs."""
    # fullgraph: a graph break would silently put Python back in the hot loop. The recompile limit: one
    # process compiles a step for many shapes (the main job's and perf's grids, the correctness shapes).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(step, fullgraph=True, dynamic=dynamic, options=dict(options) or None)


def capture(step: Callable[[], None], steps: int = 1) -> torch.cuda.CUDAGraph:
    """Warm `step` up (compile, autotune, lazy allocation) on a side stream, as the CUDA graphs docs ask, then
    capture `steps` calls of it in one graph. The warm-up runs and advances the state by CAPTURE_WARMUP steps; the
    capture only records."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(CAPTURE_WARMUP):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            step()
    return graph
