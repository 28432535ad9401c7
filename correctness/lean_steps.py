"""A few lean decode steps by hand, for the tests that compare two LeanModel options on the same prompts."""

from __future__ import annotations

import torch

from generators.caches import lean_decode_one_token
from generators.decoding import Decoding, append_token
from generators.lean import LeanModel


def run(lean: LeanModel, ids: torch.Tensor, steps: int, compiled: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The prefill of ids [B, P], then `steps` decode steps (eager, or fullgraph-compiled: a compiled step must write
    the caches in place, as the CUDA graph replays them): the tokens [B, P + 1 + steps] and every K and V cache."""
    (batch, prompt), device = ids.shape, ids.device
    d = Decoding.allocate(batch, prompt, steps + 1, None, None, device)
    d.reset(ids)
    caches = lean.new_cache(batch, prompt + steps + 1)
    step = torch.compile(lean_decode_one_token, fullgraph=True) if compiled else lean_decode_one_token
    with torch.inference_mode():
        append_token(d, lean(d.tokens[:, :prompt], torch.arange(prompt, device=device), caches))
        for _ in range(steps):
            step(lean, caches, d)
    return d.tokens, [t for kv in caches for t in kv]
