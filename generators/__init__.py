"""Exact-greedy decode loops for Hugging Face causal LMs, from the textbook loop to CUDA-graph steps.

    from generators import GENERATORS, generate
    out = generate("cuda_graph_deferred", model, input_ids, 100, eos_token_id=50256)

Every generator returns the tokens Hugging Face's greedy `generate()` returns: [B, P + n], where n is the
first step at which every row has produced `eos_token_id` (that step included), else `max_new_tokens`; a row
holds `pad_token_id` (default: `eos_token_id`) after its EOS.

A variant is a cache policy (caches.py) x an execution mode (execution.py) x a stop check (stops.py): one line.
For example, lean_eager's step with a stop check every 4 steps (correctness/test_contract.py runs this line):

    from generators import Generator, caches, stops
    Generator("lean_every_4", "lean_eager, stop check every 4 steps", cache=caches.LeanKV, stop=stops.every_k(4))

Add it to GENERATORS below and the main job, the correctness suite and the perf gate all run it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import caches, hf, loop, stops
from .execution import COMPILE, CUDA_GRAPH, EAGER, Execution
from .loop import release_sessions
from .validate import check_inputs


@dataclass(frozen=True)
class Generator:
    """A decode loop of ours: a cache policy, an execution mode and a stop check (classes in caches.py and stops.py,
    modes in execution.py), run by loop.decode."""

    name: str
    description: str
    cache: type[caches.Cache] = caches.StaticKV
    execution: Execution = EAGER
    stop: type[stops.StopCheck] = stops.EveryStep

    def __post_init__(self) -> None:
        def is_policy(value: object, base: type) -> bool:
            return isinstance(value, type) and issubclass(value, base)

        if not (is_policy(self.cache, caches.Cache) and isinstance(self.execution, Execution)
                and is_policy(self.stop, stops.StopCheck)):
            raise ValueError(f"{self.name}: unknown policy in {self.cache}/{self.execution}/{self.stop}")
        if self.execution.compiles and not self.cache.static:
            raise ValueError(f"{self.name}: compiled and CUDA-graph steps need a static cache")

    @property
    def requires_cuda(self) -> bool:
        return self.execution.captured or self.stop.requires_cuda

    @property
    def compiles(self) -> bool:
        """Its step is torch.compile'd (on CPU: ~10-25 s per model and shape)."""
        return self.execution.compiles

    @property
    def captured(self) -> bool:
        """Its step is a CUDA graph replay (timed on the device's time by the perf gate)."""
        return self.execution.captured

    @property
    def runs_on_cpu(self) -> bool:
        """What the CPU grids run: needs no CUDA and compiles nothing."""
        return not self.requires_cuda and not self.compiles

    @torch.inference_mode()
    def __call__(self, model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                 eos_token_id: int | None = None, pad_token_id: int | None = None) -> torch.Tensor:
        input_ids, eos, pad = check_inputs(model, input_ids, max_new_tokens, eos_token_id, pad_token_id,
                                           requires_cuda=self.requires_cuda,
                                           capture_room=self.execution.capture_room)
        return loop.decode(model, input_ids, max_new_tokens, cache=self.cache, execution=self.execution,
                           stop=self.stop, eos=eos, pad=pad)


@dataclass(frozen=True)
class Reference:
    """Hugging Face generate() behind the same contract (hf.py): what a user would run today, and an oracle.
    Not a loop of ours: generate() picks its own steps (with a static cache on CUDA it compiles them itself)."""

    name: str
    description: str
    cache_implementation: str | None = None  # generate()'s: None (its dynamic cache) or "static"

    requires_cuda = False
    compiles = False
    captured = False
    runs_on_cpu = True

    @torch.inference_mode()
    def __call__(self, model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                 eos_token_id: int | None = None, pad_token_id: int | None = None) -> torch.Tensor:
        input_ids, eos, pad = check_inputs(model, input_ids, max_new_tokens, eos_token_id, pad_token_id)
        return hf.hf_generate(model, input_ids, max_new_tokens, eos=eos, pad=pad,
                              cache_implementation=self.cache_implementation)


def _table(*gens: Generator | Reference) -> dict[str, Generator | Reference]:
    return {g.name: g for g in gens}


GENERATORS: dict[str, Generator | Reference] = _table(
    # The post's loops, in its order.
    Generator("naive", "recompute the whole sequence every step (the post's baseline)", cache=caches.Recompute),
    Generator("kv_dynamic", "dynamic KV cache, feed only the last token", cache=caches.DynamicKV),
    Generator("kv_static", "StaticCache preallocated for P + N positions, eager"),
    Generator("static_compiled", "StaticCache + torch.compile'd decode step", execution=COMPILE),
    Generator("pipelined", "static_compiled + the post's two-stream ping-pong stop check", execution=COMPILE,
              stop=stops.PingPong),
    Generator("static_compiled_no_eos", "static_compiled with no stop check (the check's overhead bound)",
              execution=COMPILE, stop=stops.Never),
    # Beyond the post.
    Generator("cuda_graph", "compiled step captured in a CUDA graph, .item() stop check every step",
              execution=CUDA_GRAPH),
    Generator("cuda_graph_deferred", "cuda_graph + stop flag read one step late via pinned copy + event",
              execution=CUDA_GRAPH, stop=stops.Deferred),
    Generator("cuda_graph_every_8", "cuda_graph + stop check every 8 steps", execution=CUDA_GRAPH,
              stop=stops.every_k(8)),
    # The lean forward (lean.py): the model's weights, a step written for decoding.
    Generator("lean_eager", "lean forward: own K/V tensors, eager; on CUDA the Triton matmul and attention kernels",
              cache=caches.LeanKV),
    Generator("lean_graph", "lean forward, fullgraph-compiled step in a CUDA graph, deferred stop check",
              cache=caches.LeanKV, execution=CUDA_GRAPH, stop=stops.Deferred),
    # What a user would run today.
    Reference("hf_generate", "reference: Hugging Face generate(), dynamic cache"),
    Reference("hf_generate_static", "reference: generate(cache_implementation='static'), compiles itself",
              cache_implementation="static"),
)


def generate(name: str, model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
             eos_token_id: int | None = None, pad_token_id: int | None = None) -> torch.Tensor:
    """Run the generator registered as `name` (see GENERATORS)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(GENERATORS)}")
    return GENERATORS[name](model, input_ids, max_new_tokens, eos_token_id=eos_token_id,
                            pad_token_id=pad_token_id)


__all__ = ["COMPILE", "CUDA_GRAPH", "EAGER", "GENERATORS", "Generator", "Reference", "caches", "generate",
           "release_sessions", "stops"]
