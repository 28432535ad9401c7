"""Input checks shared by every generator: bad input is a clear ValueError/TypeError, never an IndexError
from inside torch, a device-side assert, or a silent truncation."""

from __future__ import annotations

import torch


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _token_id(name: str, value: object, vocab: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if not 0 <= value < vocab:
        raise ValueError(f"{name} must be in [0, {vocab}) (the model's vocabulary), got {value}")
    return value


def check_inputs(
    model: torch.nn.Module,
    input_ids: object,
    max_new_tokens: object,
    eos_token_id: object,
    pad_token_id: object,
    *,
    requires_cuda: bool = False,
    capture_room: int = 0,
) -> tuple[torch.Tensor, int | None, int | None]:
    """Validate a generator call. Returns (input_ids as int64, eos_token_id, pad_token_id with its default).

    capture_room: new positions a CUDA-graph variant runs before capturing its step (loop.CAPTURE_ROOM), whatever
    max_new_tokens is; they must fit the model's positions too."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be 2-D [batch, prompt_len], got shape {tuple(input_ids.shape)}")
    batch, prompt_len = input_ids.shape
    if batch < 1 or prompt_len < 1:
        raise ValueError(f"input_ids needs batch >= 1 and prompt_len >= 1, got shape {tuple(input_ids.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")

    if model.training or any(m.training for m in model.modules()):
        # Dropout would make every call's tokens differ, and the lean forward ignores it: variants would disagree.
        raise ValueError("the model is in training mode (model.training is True, or a submodule's is): call "
                         "model.eval() before generating")
    device = _device_of(model)
    if requires_cuda and device.type != "cuda":
        raise ValueError(f"this generator requires a CUDA model; the model is on {device}")
    if input_ids.device != device:
        raise ValueError(f"input_ids is on {input_ids.device} but the model is on {device}")

    vocab = model.get_input_embeddings().num_embeddings
    lo, hi = (int(v) for v in torch.aminmax(input_ids))  # one host sync per call, before any decoding
    if lo < 0 or hi >= vocab:
        raise ValueError(f"input_ids must be token ids in [0, {vocab}), got values in [{lo}, {hi}]")
    eos = _token_id("eos_token_id", eos_token_id, vocab)
    pad = _token_id("pad_token_id", pad_token_id, vocab)

    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"prompt_len + max_new_tokens = {prompt_len} + {max_new_tokens} exceeds the model's "
            f"{limit} positions (config.max_position_embeddings)"
        )
    if limit is not None and prompt_len + capture_room > limit:
        raise ValueError(
            f"a CUDA-graph generator runs {capture_room} positions after the prompt before it captures its step "
            f"(max_new_tokens={max_new_tokens} or not): prompt_len + {capture_room} = {prompt_len + capture_room} "
            f"exceeds the model's {limit} positions (config.max_position_embeddings); use a shorter prompt or a "
            f"generator without a CUDA graph"
        )
    return input_ids.long(), eos, eos if pad is None else pad
