"""Hugging Face `generate()` behind the same contract: the references every table compares against."""

from __future__ import annotations

import torch
from transformers import GenerationConfig


def hf_generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                eos: int | None, pad: int | None, cache_implementation: str | None = None) -> torch.Tensor:
    # A fresh GenerationConfig, so the model's own defaults (GPT-2's config names EOS 50256) never add an
    # early stop or a logits processor the contract does not have.
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        cache_implementation=cache_implementation,
    )
    return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
