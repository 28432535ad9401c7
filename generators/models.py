"""The models every benchmark and test uses: built from local configs with random weights, never downloaded.

`gpt2-small` is the post's model (`GPT2Config()` defaults); `llama-110m` a Llama of its size. The tiny ones are
for CPU tests; `tiny-llama` has RoPE and grouped-query attention so nothing here is GPT-2-only, and the other tiny
Llama-family models each add what their family adds (see their functions), so that the lean step is tested on every
family it supports. Any directory holding a saved config (and optionally weights) works too.
"""

from __future__ import annotations

import os

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# The tiny models get a wide init so their logits are well separated: random GPT-2 weights (std 0.02) give
# near-uniform logits, where kernels that round differently would pick different argmaxes ("ties").
TINY_INIT = 0.3


def _gpt2_small() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config())


def _llama_110m() -> LlamaForCausalLM:
    # gpt-fast's stories110M shape (its ModelArgs for "stories110M"): a Llama 2 of GPT-2 small's width and depth,
    # for timing the Llama family's lean step on a GPU.
    return LlamaForCausalLM(LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                                        num_attention_heads=12, num_key_value_heads=12, vocab_size=32000,
                                        max_position_embeddings=2048, rms_norm_eps=1e-5))


def _tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=256, initializer_range=TINY_INIT,
                   bos_token_id=0, eos_token_id=0)
    )


# The tiny Llama-family models' shared shape: 2 layers, 4 query heads over 2 K/V heads (grouped-query attention).
_TINY_LLAMA_LIKE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=256,
    initializer_range=TINY_INIT,
    bos_token_id=0,
    eos_token_id=0,
)


def _tiny_llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**_TINY_LLAMA_LIKE))


def _tiny_mistral() -> MistralForCausalLM:
    # MistralConfig's own sliding_window (4096, as Mistral-7B-v0.1): present, never binding at these lengths. Four
    # query heads to one K/V head (Mistral-7B: 32 to 8), and a head_dim of 24 apart from hidden_size / heads (as
    # Mistral-Nemo's 128 against 5120 / 32), not a power of two: the attention kernel pads it to 32.
    return MistralForCausalLM(MistralConfig(**{**_TINY_LLAMA_LIKE, "num_key_value_heads": 1}, head_dim=24))


def _tiny_qwen2() -> Qwen2ForCausalLM:
    # Qwen2: biases on q/k/v_proj (not o_proj), drawn here (the init zeroes them, which would test nothing); tied
    # embeddings, as Qwen2-0.5B and -1.5B.
    model = Qwen2ForCausalLM(Qwen2Config(**_TINY_LLAMA_LIKE, tie_word_embeddings=True))
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(std=TINY_INIT)
    return model


def _tiny_qwen3() -> Qwen3ForCausalLM:
    # Qwen3: per-head RMSNorm on q and k before RoPE; head_dim set apart from hidden_size / heads (32, not 16), as
    # Qwen3's configs set it (128); its own rms_norm_eps.
    return Qwen3ForCausalLM(Qwen3Config(**_TINY_LLAMA_LIKE, head_dim=32, rms_norm_eps=1e-5))


def _tiny_phi3() -> Phi3ForCausalLM:
    # Phi-3: one qkv_proj and one gate_up_proj; half of each head rotates (partial_rotary_factor, as Phi-4-mini's
    # 0.75); tied embeddings, as Phi-4-mini.
    # (pad_token_id: Phi3Config's default, 32000, is past this vocabulary.)
    return Phi3ForCausalLM(Phi3Config(**_TINY_LLAMA_LIKE, partial_rotary_factor=0.5, tie_word_embeddings=True,
                                      pad_token_id=None))


MODELS = {"gpt2-small": _gpt2_small, "llama-110m": _llama_110m, "tiny-gpt2": _tiny_gpt2, "tiny-llama": _tiny_llama,
          "tiny-mistral": _tiny_mistral, "tiny-qwen2": _tiny_qwen2, "tiny-qwen3": _tiny_qwen3, "tiny-phi3": _tiny_phi3}


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
