"""Everything that differs between the transformers versions we run on, in one place.

Supported: transformers 5.17 (the GPU image) up to the newest 5.x. Since 5.4 there is no `cache_position`;
positions come from `position_ids` and StaticCache keeps its fill level in an on-device tensor, which is what
makes one captured decode step replayable. In 5.24 the forward kwarg `past_key_values` became `cache` (and so
did the output attribute).
"""

from __future__ import annotations

import inspect
from functools import cache

import torch
from transformers import DynamicCache, StaticCache


@cache
def _cache_kwarg(model_cls: type) -> str:
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: torch.nn.Module, kv_cache: object) -> dict:
    """`{<the kwarg this transformers calls the KV cache>: kv_cache}` for `model(...)`."""
    return {_cache_kwarg(type(model)): kv_cache}


def returned_cache(output: object) -> object:
    """The KV cache a forward returned (`output.cache` from 5.24 on, `output.past_key_values` before)."""
    kv = getattr(output, "cache", None)
    return kv if kv is not None else output.past_key_values


def new_dynamic_cache(model: torch.nn.Module) -> DynamicCache:
    return DynamicCache(config=model.config)


def new_static_cache(model: torch.nn.Module, max_cache_len: int) -> StaticCache:
    # StaticCache allocates lazily on its first update (the eager prefill), on the prefill's device and dtype.
    return StaticCache(config=model.config, max_cache_len=max_cache_len)
