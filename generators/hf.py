"""Hugging Face `generate()` behind the same contract: the references every table compares against."""

from __future__ import annotations

import torch
from transformers import GenerationConfig


def hf_generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                eos: int | None, pad: int | None, cache_implementation: str | None = None) -> torch.Tensor:
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        cache_implementation=cache_implementation,
    )
    # generate() fills every field we leave None from model.generation_config, so eos=None would quietly
    # become the model's own EOS (GPT-2: 50256) and stop early. Lend it an empty default config instead.
    saved, model.generation_config = model.generation_config, GenerationConfig()
    try:
        return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
    finally:
        model.generation_config = saved
