"""Exact-greedy decode loops for Hugging Face causal LMs, from the textbook loop to CUDA-graph steps.

    from generators import GENERATORS, generate
    out = generate("cuda_graph_deferred", model, input_ids, 100, eos_token_id=50256)

Every generator returns the tokens Hugging Face's greedy `generate()` returns: [B, P + n], where n is the
first step at which every row has produced `eos_token_id` (that step included), else `max_new_tokens`; a row
holds `pad_token_id` (default: `eos_token_id`) after its EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import hf, loop
from .loop import release_sessions
from .validate import check_inputs

CACHES = ("none", "dynamic", "static")
EXECUTIONS = ("eager", "compile", "cuda_graph")
STOP_CHECKS = ("every_step", "pingpong", "deferred", "every_k", "never")
FORWARDS = ("hf", "lean")  # the model's own forward, or lean.py's decoding forward over its weights


@dataclass(frozen=True)
class Generator:
    """A decode loop: a cache policy, an execution policy, a stop check and a forward (loop.py, stops.py,
    lean.py)."""

    name: str
    description: str
    cache: str = "static"
    execution: str = "eager"
    stop: str = "every_step"
    k: int = 1  # with stop="every_k": check every k steps
    reference: str | None = None  # "dynamic" / "static": Hugging Face generate() instead of our loop
    forward: str = "hf"

    def __post_init__(self) -> None:
        if (self.cache not in CACHES or self.execution not in EXECUTIONS or self.stop not in STOP_CHECKS
                or self.forward not in FORWARDS):
            raise ValueError(f"{self.name}: unknown policy in {self.cache}/{self.execution}/{self.stop}/{self.forward}")
        if self.execution != "eager" and self.cache != "static":
            raise ValueError(f"{self.name}: compiled and CUDA-graph steps need the static cache")
        if self.forward == "lean" and (self.cache != "static" or self.reference is not None):
            raise ValueError(f"{self.name}: the lean forward brings its own static cache and loop")
        if self.k < 1:
            raise ValueError(f"{self.name}: k must be >= 1, got {self.k}")

    @property
    def requires_cuda(self) -> bool:
        return self.execution == "cuda_graph" or self.stop == "pingpong"

    @torch.inference_mode()
    def __call__(self, model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                 eos_token_id: int | None = None, pad_token_id: int | None = None) -> torch.Tensor:
        input_ids, eos, pad = check_inputs(model, input_ids, max_new_tokens, eos_token_id, pad_token_id,
                                           requires_cuda=self.requires_cuda,
                                           capture_room=loop.CAPTURE_ROOM if self.execution == "cuda_graph" else 0)
        if self.reference is not None:
            cache_impl = "static" if self.reference == "static" else None
            return hf.hf_generate(model, input_ids, max_new_tokens, eos=eos, pad=pad,
                                  cache_implementation=cache_impl)
        return loop.decode(model, input_ids, max_new_tokens, cache_kind=self.cache, execution=self.execution,
                           stop_check=self.stop, k=self.k, eos=eos, pad=pad, forward=self.forward)


def _table(*gens: Generator) -> dict[str, Generator]:
    return {g.name: g for g in gens}


GENERATORS: dict[str, Generator] = _table(
    # The post's loops, in its order.
    Generator("naive", "recompute the whole sequence every step (the post's baseline)", cache="none"),
    Generator("kv_dynamic", "dynamic KV cache, feed only the last token", cache="dynamic"),
    Generator("kv_static", "StaticCache preallocated for P + N positions, eager"),
    Generator("static_compiled", "StaticCache + torch.compile'd decode step", execution="compile"),
    Generator("pipelined", "static_compiled + the post's two-stream ping-pong stop check",
              execution="compile", stop="pingpong"),
    Generator("static_compiled_no_eos", "static_compiled with no stop check (the check's overhead bound)",
              execution="compile", stop="never"),
    # Beyond the post.
    Generator("cuda_graph", "compiled step captured in a CUDA graph, .item() stop check every step",
              execution="cuda_graph"),
    Generator("cuda_graph_deferred", "cuda_graph + stop flag read one step late via pinned copy + event",
              execution="cuda_graph", stop="deferred"),
    Generator("cuda_graph_every_8", "cuda_graph + stop check every 8 steps", execution="cuda_graph",
              stop="every_k", k=8),
    # The lean forward (lean.py): the model's weights, a step written for decoding.
    Generator("lean_eager", "lean forward: own K/V tensors, eager; on CUDA the Triton matmul and attention kernels",
              forward="lean"),
    Generator("lean_graph", "lean forward, fullgraph-compiled step in a CUDA graph, deferred stop check",
              forward="lean", execution="cuda_graph", stop="deferred"),
    # What a user would run today.
    Generator("hf_generate", "reference: Hugging Face generate(), dynamic cache", reference="dynamic"),
    Generator("hf_generate_static", "reference: generate(cache_implementation='static'), compiles itself",
              reference="static"),
)


def generate(name: str, model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
             eos_token_id: int | None = None, pad_token_id: int | None = None) -> torch.Tensor:
    """Run the generator registered as `name` (see GENERATORS)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(GENERATORS)}")
    return GENERATORS[name](model, input_ids, max_new_tokens, eos_token_id=eos_token_id,
                            pad_token_id=pad_token_id)


__all__ = ["GENERATORS", "Generator", "generate", "release_sessions"]
