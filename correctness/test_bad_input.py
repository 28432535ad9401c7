"""Bad input is a clear TypeError/ValueError naming the argument, for every generator, before any decoding."""

from __future__ import annotations

import copy

import pytest
import torch

from correctness.scenarios import PROMPT_LEN, contract_model, prompts
from correctness.strategies import VOCAB
from generators import GENERATORS, generate
from generators.validate import check_inputs

ALL = [pytest.param(name, marks=[pytest.mark.gpu] if g.requires_cuda else [], id=name)
       for name, g in GENERATORS.items()]
NEEDS_CUDA = [name for name, g in GENERATORS.items() if g.requires_cuda]


def _with_token(ids: torch.Tensor, token: int) -> torch.Tensor:
    ids = ids.clone()
    ids[0, 0] = token
    return ids


# (case, changes to the call given the valid input_ids, exception, what the message must match)
BAD = [
    ("input_ids_list", lambda ids: {"input_ids": ids.tolist()}, TypeError, "input_ids"),
    ("input_ids_float", lambda ids: {"input_ids": ids.float()}, TypeError, "input_ids"),
    ("input_ids_bool", lambda ids: {"input_ids": ids > 0}, TypeError, "input_ids"),
    ("input_ids_1d", lambda ids: {"input_ids": ids[0]}, ValueError, "input_ids"),
    ("input_ids_3d", lambda ids: {"input_ids": ids[None]}, ValueError, "input_ids"),
    ("empty_batch", lambda ids: {"input_ids": ids[:0]}, ValueError, "input_ids"),
    ("empty_prompt", lambda ids: {"input_ids": ids[:, :0]}, ValueError, "input_ids"),
    ("token_negative", lambda ids: {"input_ids": _with_token(ids, -1)}, ValueError, "input_ids"),
    ("token_vocab", lambda ids: {"input_ids": _with_token(ids, VOCAB)}, ValueError, "input_ids"),
    ("eos_negative", lambda ids: {"eos_token_id": -1}, ValueError, "eos_token_id"),
    ("eos_vocab", lambda ids: {"eos_token_id": VOCAB}, ValueError, "eos_token_id"),
    ("pad_negative", lambda ids: {"eos_token_id": 3, "pad_token_id": -1}, ValueError, "pad_token_id"),
    ("pad_vocab", lambda ids: {"pad_token_id": VOCAB}, ValueError, "pad_token_id"),
    ("eos_str", lambda ids: {"eos_token_id": "3"}, TypeError, "eos_token_id"),
    ("eos_bool", lambda ids: {"eos_token_id": True}, TypeError, "eos_token_id"),
    ("pad_float", lambda ids: {"pad_token_id": 3.0}, TypeError, "pad_token_id"),
    ("max_new_zero", lambda ids: {"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ("max_new_negative", lambda ids: {"max_new_tokens": -4}, ValueError, "max_new_tokens"),
    ("max_new_float", lambda ids: {"max_new_tokens": 4.0}, TypeError, "max_new_tokens"),
    ("max_new_bool", lambda ids: {"max_new_tokens": True}, TypeError, "max_new_tokens"),
    ("past_positions", lambda ids: {"max_new_tokens": 256 - PROMPT_LEN + 1}, ValueError,
     r"max_new_tokens.*256 positions"),
]


@pytest.mark.parametrize(("case", "change", "error", "match"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("name", ALL)
def test_rejects_bad_input(name: str, case: str, change, error: type, match: str, device: torch.device) -> None:
    model = contract_model(device)
    call = {"input_ids": prompts(device), "max_new_tokens": 4, "eos_token_id": None, "pad_token_id": None}
    call.update(change(call["input_ids"]))
    with pytest.raises(error, match=match):
        generate(name, model, **call)


@pytest.mark.parametrize("name", ALL)
def test_rejects_a_model_in_training_mode(name: str, device: torch.device) -> None:
    """Dropout makes every call's tokens differ, and the lean forward ignores it: refuse, don't disagree."""
    model = copy.deepcopy(contract_model(device)).train()
    with pytest.raises(ValueError, match=r"model\.training.*model\.eval\(\)"):
        generate(name, model, prompts(device), 4)
    model.eval()
    model.get_output_embeddings().train()  # one submodule left in training mode is training mode too
    with pytest.raises(ValueError, match=r"model\.training"):
        generate(name, model, prompts(device), 4)


def test_longest_allowed_generation_is_accepted() -> None:
    """The boundary of past_positions: P + max_new_tokens == the model's 256 positions is fine."""
    check_inputs(contract_model("cpu"), prompts("cpu"), 256 - PROMPT_LEN, None, None)


def test_capture_room_must_fit_the_models_positions() -> None:
    """A CUDA-graph generator's warm-up steps run past a short generation's end: they must fit too."""
    model, ids = contract_model("cpu"), torch.zeros(1, 256 - 4, dtype=torch.long)
    check_inputs(model, ids, 1, None, None, capture_room=4)  # P + 4 == 256: fits
    with pytest.raises(ValueError, match=r"CUDA-graph generator runs 4 positions.*prompt_len \+ 4 = 257"):
        check_inputs(model, torch.zeros(1, 256 - 3, dtype=torch.long), 1, None, None, capture_room=4)


@pytest.mark.gpu
@pytest.mark.parametrize("name", [name for name, g in GENERATORS.items() if g.captured])
def test_cuda_graph_generator_checks_its_capture_room(name: str, device: torch.device) -> None:
    """Not a crash in a warm-up step: P + max_new_tokens fits the 256 positions, P + the capture's room does not."""
    with pytest.raises(ValueError, match="CUDA-graph generator"):
        generate(name, contract_model(device), torch.zeros(1, 256 - 2, dtype=torch.long, device=device), 2)


def test_unknown_generator_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'nope'") as info:
        generate("nope", contract_model("cpu"), prompts("cpu"), 4)
    missing = [name for name in GENERATORS if name not in str(info.value)]
    assert not missing, f"the message does not list {missing}: {info.value}"


@pytest.mark.parametrize("name", NEEDS_CUDA)
def test_cuda_only_generator_rejects_a_cpu_model(name: str) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        generate(name, contract_model("cpu"), prompts("cpu"), 4)


@pytest.mark.gpu
@pytest.mark.parametrize("name", GENERATORS)
def test_input_ids_on_another_device(name: str, device: torch.device) -> None:
    with pytest.raises(ValueError, match="input_ids"):
        generate(name, contract_model(device), prompts("cpu"), 4)


def _tiny(config_cls: type, model_cls: type, **overrides: object) -> torch.nn.Module:
    config = config_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, vocab_size=64, max_position_embeddings=64, **overrides)
    return model_cls(config).eval()


def test_lean_forward_rejects_a_model_it_does_not_implement() -> None:
    # Gemma has Llama's layout, but scales its embeddings and norms by (1 + weight): the lean step must refuse it
    # by name, not run it wrong.
    from transformers import GemmaConfig, GemmaForCausalLM

    model = _tiny(GemmaConfig, GemmaForCausalLM, head_dim=16)
    with pytest.raises(ValueError, match="lean step supports gpt2, llama, mistral, qwen2, qwen3, phi3.*'gemma'"):
        generate("lean_eager", model, torch.zeros(1, 3, dtype=torch.long), 4)


def test_lean_forward_rejects_a_rope_type_it_does_not_implement() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = _tiny(LlamaConfig, LlamaForCausalLM)
    model.model.rotary_emb.rope_type = "proportional"  # transformers has it (Gemma 4's); lean.py does not
    with pytest.raises(ValueError, match="does not implement rope type 'proportional'"):
        generate("lean_eager", model, torch.zeros(1, 3, dtype=torch.long), 4)


def test_lean_forward_runs_longrope_up_to_its_original_length() -> None:
    """Phi-3's longrope switches to its long factors past original_max_position_embeddings (32 here): 3 + 29
    positions are exact, 3 + 30 are refused."""
    from transformers import Phi3Config, Phi3ForCausalLM

    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.5] * 8, "long_factor": [4.0] * 8,
            "original_max_position_embeddings": 32}
    # (Phi3Config takes original_max_position_embeddings from its own field, over rope_parameters')
    model = _tiny(Phi3Config, Phi3ForCausalLM, rope_parameters=rope, original_max_position_embeddings=32,
                  pad_token_id=None, bos_token_id=0, eos_token_id=0)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = generate("lean_eager", model, ids, 29)
    assert torch.equal(out, generate("naive", model, ids, 29)) and torch.equal(out, generate("hf_generate", model,
                                                                                             ids, 29))
    with pytest.raises(ValueError, match=r"33-position cache is longer than 32, past which rope type 'longrope'"):
        generate("lean_eager", model, ids, 30)


def test_lean_forward_rejects_grown_dynamic_rope() -> None:
    """Dynamic RoPE grows its frequencies after a forward past max_position_embeddings (64 here) and resets them
    only for a shorter one: a 64-position cache after such a forward would get the grown ones."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = _tiny(LlamaConfig, LlamaForCausalLM, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                   "rope_theta": 10000.0})
    with torch.inference_mode():
        model(torch.zeros(1, 1, dtype=torch.long), position_ids=torch.tensor([[100]]))
    with pytest.raises(ValueError, match="no longer has its original frequencies"):
        generate("lean_eager", model, torch.zeros(1, 3, dtype=torch.long), 61)


def test_lean_forward_rejects_a_cache_longer_than_the_sliding_window() -> None:
    """A window of 8 positions: 3 + 5 fit it, 3 + 6 do not (the window would cut position 0 off)."""
    from transformers import MistralConfig, MistralForCausalLM

    model = _tiny(MistralConfig, MistralForCausalLM, sliding_window=8)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate("lean_eager", model, ids, 5), generate("naive", model, ids, 5))
    with pytest.raises(ValueError, match=r"9-position cache is longer than this model's sliding_window \(8\)"):
        generate("lean_eager", model, ids, 6)
