"""The models every benchmark and test uses: built from local configs with random weights, never downloaded.

`gpt2-small` is the post's model (`GPT2Config()` defaults). The tiny ones are for CPU tests; `tiny-llama` has
RoPE and grouped-query attention so nothing here is GPT-2-only. Any directory holding a saved config (and
optionally weights) works too.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# The tiny models get a wide init so their logits are well separated: random GPT-2 weights (std 0.02) give
# near-uniform logits, where kernels that round differently would pick different argmaxes ("ties").
TINY_INIT = 0.3


def _gpt2_small() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config())


def _tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=256, initializer_range=TINY_INIT,
                   bos_token_id=0, eos_token_id=0)
    )


def _tiny_llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,  # grouped-query attention
            vocab_size=512,
            max_position_embeddings=256,
            initializer_range=TINY_INIT,
            bos_token_id=0,
            eos_token_id=0,
        )
    )


MODELS = {"gpt2-small": _gpt2_small, "tiny-gpt2": _tiny_gpt2, "tiny-llama": _tiny_llama}


def build(
    name: str, *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu", seed: int = 0
) -> torch.nn.Module:
    """Build a model by name (see MODELS) or from a local directory, in eval mode on `device`.

    float32 models run with matmul precision "high" (TF32 on CUDA), as in the post.
    """
    torch_dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if torch_dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    torch.manual_seed(seed)
    if name in MODELS:
        model = MODELS[name]()
    elif os.path.isdir(name):
        if any(f.endswith((".safetensors", ".bin")) for f in os.listdir(name)):
            model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True)
        else:
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(name, local_files_only=True))
    else:
        raise ValueError(f"unknown model {name!r}: use one of {sorted(MODELS)} or a local directory")
    if torch_dtype == torch.float32:
        torch.set_float32_matmul_precision("high")
    return model.to(device=device, dtype=torch_dtype).eval()
