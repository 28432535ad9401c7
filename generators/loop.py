"""The one decode loop: a session (a cache policy's state and the Decoding, its steps bound by an execution mode),
then step 0 (the prefill) and one-token steps until the stop check says every row is done.

The three policies a variant chooses live in caches.py, execution.py and stops.py; this file only puts them
together, keeps the sessions that compiled and captured steps are bound to, and trims the output to the contract.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from . import profiling, stops
from .caches import Cache
from .decoding import Decoding
from .execution import Execution


class Session:
    """A cache policy's state + Decoding for one (model, B, P, N, eos, pad) shape, with its (prefill, step) bound by
    an execution mode. Compiled and captured steps are bound to these tensors, so such sessions are reused across
    calls (as transformers reuses its static cache) and reset in place."""

    def __init__(self, cache: type[Cache], execution: Execution, model: torch.nn.Module, input_ids: torch.Tensor,
                 max_new_tokens: int, eos: int | None, pad: int | None) -> None:
        batch, prompt_len = input_ids.shape
        # A CUDA graph's capture really runs its warm-up steps: the buffers must hold them.
        max_new_tokens = max(max_new_tokens, execution.capture_room)
        self.d = Decoding.allocate(batch, prompt_len, max_new_tokens, eos, pad, input_ids.device)
        self.cache = cache(model, self.d)
        self.prefill, self.step = execution.bind(self, input_ids)

    def reset(self, input_ids: torch.Tensor) -> None:
        # In place: a captured CUDA graph holds these addresses.
        self.cache.reset()
        self.d.reset(input_ids)


_SESSIONS: OrderedDict[tuple, Session] = OrderedDict()
MAX_SESSIONS = 2  # each holds a static KV cache: B * layers * 2 * (P + N) * hidden values


def session(cache: type[Cache], execution: Execution, model: torch.nn.Module, input_ids: torch.Tensor,
            max_new_tokens: int, eos: int | None, pad: int | None) -> Session:
    """A session for this call: a kept one where the execution mode compiles (its step is bound to the buffers),
    else a fresh one with a fresh cache, as in the post."""
    if not execution.compiles:
        return Session(cache, execution, model, input_ids, max_new_tokens, eos, pad)
    key = (id(model), cache, execution, tuple(input_ids.shape), max_new_tokens, eos, pad,
           next(model.parameters()).dtype)
    kept = _SESSIONS.get(key)
    if kept is None:  # id(model) cannot be reused while a session holds the model
        kept = Session(cache, execution, model, input_ids, max_new_tokens, eos, pad)
        _SESSIONS[key] = kept
        while len(_SESSIONS) > MAX_SESSIONS:
            _SESSIONS.popitem(last=False)
    _SESSIONS.move_to_end(key)
    return kept


def release_sessions() -> None:
    """Drop every kept static cache and CUDA graph (e.g. before measuring another variant's memory)."""
    _SESSIONS.clear()


def decode(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *, cache: type[Cache],
           execution: Execution, stop: type[stops.StopCheck], eos: int | None, pad: int | None) -> torch.Tensor:
    """Greedy decoding with the given policies; inputs are already validated."""
    s = session(cache, execution, model, input_ids, max_new_tokens, eos, pad)
    s.reset(input_ids)
    # Without an EOS nothing can stop early: no checks, and no host syncs for them.
    checker = (stop if eos is not None else stops.Never)(s.d.stop)
    prof = profiling.current()
    ran = 0
    for step in range(max_new_tokens):
        prof.at_step(step)
        with prof.range("Model Forward"), checker.step_stream(step):
            s.prefill() if step == 0 else s.step()
        ran += 1
        with prof.range("Check Stop Condition"):
            if checker.should_stop(step):
                break
    checker.close()
    prof.done()
    return finish(s.d, ran, max_new_tokens, eos)


def finish(d: Decoding, ran: int, max_new_tokens: int, eos: int | None) -> torch.Tensor:
    """Trim to the contract's n: the first step at which every row has produced EOS (included), else all.

    Policies that check late ran extra steps; those emitted only padding and are dropped here.
    """
    generated = d.tokens[:, d.prompt_len : d.prompt_len + ran]
    if bool((generated < 0).any()):
        raise RuntimeError(f"internal error: a decode step left positions unwritten in {ran} steps")
    n = ran
    if eos is not None:
        hit = generated == eos
        if bool(hit.any(dim=1).all()):
            n = int(hit.int().argmax(dim=1).max()) + 1  # argmax finds each row's first EOS
        elif ran < max_new_tokens:
            raise RuntimeError(f"internal error: the loop stopped after {ran} steps with rows unfinished")
    return d.tokens[:, : d.prompt_len + n].clone()  # never hand out the (reused) session buffer
