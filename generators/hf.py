"""Hugging Face `generate()` behind the same contract: the references every table compares against."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

_META = ("transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash")


def greedy_settings(model: torch.nn.Module, max_new_tokens: int, eos: int | None, pad: int | None,
                    cache_implementation: str | None) -> dict:
    """The keyword arguments that make `model.generate()` plain greedy decoding under our contract.

    generate() fills every setting it is not given from `model.generation_config`, so eos=None would quietly
    become the model's own EOS (GPT-2: 50256) and a repetition_penalty there would change the tokens. Keyword
    arguments override even with None, so every setting the model's config makes goes back to generate()'s
    default here, and the model itself is never touched (swapping its generation_config was not thread-safe).
    """
    blank = GenerationConfig()
    defaults = blank._get_default_generation_params()
    own = {key: defaults.get(key) for key, value in model.generation_config.to_dict().items()
           if value is not None and key not in _META and hasattr(blank, key)}
    return own | {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens, "eos_token_id": eos,
                  "pad_token_id": pad, "cache_implementation": cache_implementation}


def hf_generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                eos: int | None, pad: int | None, cache_implementation: str | None = None) -> torch.Tensor:
    settings = greedy_settings(model, max_new_tokens, eos, pad, cache_implementation)
    return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **settings)
