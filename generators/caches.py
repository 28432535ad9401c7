"""Cache policies: where a decode loop keeps K and V, and how it runs the prompt (step 0) and each later step.

A policy is a class; the loop makes one per session, over the session's Decoding (tokens [B, P + N]), and calls
`reset()` before each generation, `prefill()` for step 0 and `step()` for every later step.
- Recompute: no cache; every step reruns the whole sequence (the post's baseline).
- DynamicKV: Hugging Face's DynamicCache, grown by each step, which feeds only the last token.
- StaticKV: Hugging Face's StaticCache, preallocated for P + N positions.
- LeanKV: lean.py's forward over the model's own weights, with its own per-layer K/V tensors.
The static ones (`static = True`) also give `one_token`: their step, with no host values in it, as a function and
its arguments, for an execution mode (execution.py) to compile and capture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from . import compat
from .decoding import Decoding, append_pick, append_token
from .lean import LeanModel, hopper


class Cache:
    """Base policy: no state of its own."""

    static = False  # preallocated and reset in place: one_token can be compiled and captured
    compile_dynamic = False  # static only: torch.compile(one_token's function, dynamic=compile_dynamic)
    compile_options: tuple = ()  # static only: inductor options of that compile, as (name, value) pairs
    capture_prefill = False  # static only: under a CUDA graph the prefill is captured too

    def __init__(self, model: torch.nn.Module, d: Decoding) -> None:
        self.model, self.d = model, d

    def reset(self) -> None:
        """Before each generation, before Decoding.reset: no generation reads another's values."""

    def prefill(self) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError


class Recompute(Cache):
    """The textbook loop: run the whole sequence so far, keep the last position. O(N^2) over a generation."""

    def reset(self) -> None:
        self.length = self.d.prompt_len  # tokens written so far

    def prefill(self) -> None:
        self.step()

    def step(self) -> None:
        seq = self.d.tokens[:, : self.length]
        append_token(self.d, self.model(seq, use_cache=False).logits[:, -1])
        self.length += 1


class DynamicKV(Cache):
    """The post's KV-cache loop: the prefill returns a DynamicCache, each later step feeds the last token."""

    def reset(self) -> None:
        self.kv_cache, self.length = None, self.d.prompt_len

    def prefill(self) -> None:
        out = self.model(self.d.tokens[:, : self.d.prompt_len], use_cache=True, logits_to_keep=1)
        append_token(self.d, out.logits[:, -1])
        self.kv_cache, self.length = compat.returned_cache(out), self.length + 1

    def step(self) -> None:
        last = self.d.tokens[:, self.length - 1 : self.length]  # [B, 1]
        out = self.model(last, use_cache=True, logits_to_keep=1, **compat.cache_kwargs(self.model, self.kv_cache))
        append_token(self.d, out.logits[:, -1])
        self.length += 1


def decode_one_token(model: torch.nn.Module, cache_kwargs: dict, d: Decoding) -> None:
    """One static-cache step with no host values in it: the part that is compiled and captured.

    `cache_kwargs` is compat.cache_kwargs(model, kv_cache), resolved outside so dynamo never traces it.
    """
    pos = d.last  # [1]: the position of the last written token
    token = d.tokens.index_select(1, pos)  # [B, 1]
    out = model(token, position_ids=pos[None], use_cache=True, logits_to_keep=1, **cache_kwargs)
    append_token(d, out.logits[:, -1])


class StaticKV(Cache):
    """Hugging Face's StaticCache, allocated once for the session's P + N positions."""

    static = True
    # dynamic=True: batch and cache length are symbolic, so a model compiles once per process (plus once for
    # batch 1, which dynamo specialises) instead of once per grid point; the step is memory-bound and its matmuls
    # go to cuBLAS either way. CUDA-graph variants still capture one fixed shape.
    compile_dynamic = True

    def __init__(self, model: torch.nn.Module, d: Decoding) -> None:
        super().__init__(model, d)
        self.kv_cache = compat.new_static_cache(model, d.tokens.shape[1])
        self.cache_kwargs = compat.cache_kwargs(model, self.kv_cache)

    def reset(self) -> None:
        self.kv_cache.reset()

    def prefill(self) -> None:
        positions = torch.arange(self.d.prompt_len, device=self.d.tokens.device)[None]  # [1, P]
        out = self.model(self.d.tokens[:, : self.d.prompt_len], position_ids=positions, use_cache=True,
                         logits_to_keep=1, **self.cache_kwargs)
        append_token(self.d, out.logits[:, -1])

    @property
    def one_token(self) -> tuple[Callable, tuple]:
        return decode_one_token, (self.model, self.cache_kwargs, self.d)

    def step(self) -> None:
        decode_one_token(self.model, self.cache_kwargs, self.d)


def lean_decode_one_token(lean: LeanModel, caches: list, d: Decoding) -> None:
    """decode_one_token for the lean forward (lean.py): the same step, without Hugging Face's generality."""
    append_pick(d, lean.pick(d.tokens.index_select(1, d.last), d.last, caches))


class LeanKV(Cache):
    """lean.py's forward and its own [B, kv_heads, P + N, head_dim] K/V pair per layer.

    Under a CUDA graph the prefill is captured too: eager, it is a few hundred kernel launches from Python,
    milliseconds of host time against a step's ~0.5-0.8 ms of GPU time: 4-8 ms of a 100-token call on an H200
    (docs/history/2026-11-lean-step.md, "ab0d293, 919dea0, f6234cf")."""

    static = True
    # Static shapes: the lean step is small enough that specialising every size pays, and it compiles in
    # seconds, so a recompile per grid point is cheap.
    compile_dynamic = False
    capture_prefill = True

    lean_options: ClassVar[dict] = {}  # LeanModel's keyword options (perf.lean_probe's variants set them)

    def __init__(self, model: torch.nn.Module, d: Decoding) -> None:
        super().__init__(model, d)
        self.lean = LeanModel(model, **{"pdl": hopper(model.lm_head.weight.device)} | self.lean_options)
        self.caches = self.lean.new_cache(*d.tokens.shape)  # batch, P + N

    @property
    def compile_options(self) -> tuple:
        """With pdl, inductor's kernels wait for and release their neighbours as the lean kernels do."""
        return (("triton.enable_pdl", True),) if self.lean.pdl else ()

    def reset(self) -> None:
        for k, v in self.caches:  # as StaticCache.reset
            k.zero_()
            v.zero_()

    def prefill(self) -> None:
        positions = torch.arange(self.d.prompt_len, device=self.d.tokens.device)
        append_token(self.d, self.lean(self.d.tokens[:, : self.d.prompt_len], positions, self.caches))

    @property
    def one_token(self) -> tuple[Callable, tuple]:
        return lean_decode_one_token, (self.lean, self.caches, self.d)

    def step(self) -> None:
        lean_decode_one_token(self.lean, self.caches, self.d)
