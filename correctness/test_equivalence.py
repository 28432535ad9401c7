"""The differential property: every registered generator emits the oracles' greedy tokens.

Two oracles, the textbook loop (`naive`) and Hugging Face generate() (`hf_generate`); every variant must match
both, so the naive and hf_generate cases also prove that the oracles agree. Equality is exact, up to the
rationed near-ties of ties.py. Where the two oracles emit the same tokens (nearly always), the variant is compared
once, so its steps and near-ties count once against the ration. On CPU, generators that need CUDA are skipped
(gpu marker) and so are our compiled ones (they would compile for every drawn shape); on a GPU, every generator
that compiles draws its shape from three fixed ones. The lean step's generators draw from every Llama-family model
it implements (LEAN_FAMILIES), and test_lean_step_on_every_family runs each of those models, in every dtype, once.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import example, find, given
from hypothesis import strategies as st

from correctness.contract import assert_contract
from correctness.strategies import (
    COMPILED_SHAPES,
    FAMILIES,
    LEAN_FAMILIES,
    VOCAB,
    Example,
    dtypes_for,
    examples,
    oracle,
)
from correctness.ties import TieLedger, assert_same_tokens
from generators import GENERATORS, Generator, Reference, caches, generate
from generators.models import TINY_INIT

ORACLES = ("naive", "hf_generate")

# Bugs found on a GPU, replayed on every run and device: the ci profile is derandomized, so it never reads the
# Hypothesis example database where a GPU run saved them. device "" stands for the device under test.
GPU_FINDS = {
    # 1 new token: a CUDA-graph variant's capture warm-up steps ran past the session's token buffer and KV cache
    # (loop.CAPTURE_ROOM; test_contract's test_generation_shorter_than_the_capture_warm_up tries 1-3).
    "capture_room": Example("tiny-gpt2", 0, torch.float32, "", ((7, 3, 9, 1), (500, 2, 2, 64), (7, 3, 9, 1)), 1),
    # Two copies of one prompt tied at gap 1.5e-5 (H200, lean_eager, tiny-llama): one near-tie counted once per
    # copy filled float32's cap of one tied row per example (perf/evidence/lean_prefill_graph/1_bias_fold).
    "repeated_prompt_tie": Example("tiny-llama", 2, torch.float32, "", ((1, 1), (1, 1)), 20),
}
# The finds a generator that compiles per shape replays (each new shape costs it a compile on a GPU, ~10 s).
COMPILED_FINDS = ("capture_room",)


def is_lean(g: Generator | Reference) -> bool:
    return isinstance(g, Generator) and g.cache is caches.LeanKV


def marks(g: Generator | Reference) -> list[pytest.MarkDecorator]:
    if g.requires_cuda:
        return [pytest.mark.gpu]
    return [pytest.mark.per_shape_compile] if g.compiles else []


def compiles(g: Generator | Reference, device: torch.device) -> bool:
    """Whether a new shape costs a compile: our compiled steps, and generate() with a static cache on CUDA."""
    return g.compiles or (isinstance(g, Reference) and g.cache_implementation == "static" and device.type == "cuda")


def assert_matches_oracles(name: str, example: Example, ledger: TieLedger) -> None:
    out = example.run(name)
    ids, eos, pad = example.input_ids, example.eos_token_id, example.pad_token_id
    assert_contract(out, ids, example.max_new_tokens, eos, pad, name)
    compared: list[torch.Tensor] = []
    for oracle_name in ORACLES:
        expected = oracle(oracle_name, example)
        assert_contract(expected, ids, example.max_new_tokens, eos, pad, oracle_name)
        if any(torch.equal(expected, seen) for seen in compared):
            continue  # the oracles agree token for token: a second comparison would count each step and tie twice
        compared.append(expected)
        assert_same_tokens(expected, out, model=example.model, prompt_len=example.prompt_len, eos=eos, pad=pad,
                           label=f"{name} vs {oracle_name}", ledger=ledger)


def test_agreeing_oracles_are_compared_once() -> None:
    """Where naive and hf_generate emit the same tokens, a variant's steps go into the tie ledger once, not once
    per oracle (which would make one near-tie two against the ration)."""
    example = Example("tiny-gpt2", 0, torch.float32, "cpu", ((1, 2, 3), (4, 5, 6)), 6)
    assert torch.equal(oracle("naive", example), oracle("hf_generate", example))
    ledger = TieLedger()
    assert_matches_oracles("kv_static", example, ledger)
    assert ledger.steps == {torch.float32: 2 * 6} and ledger.ties == {torch.float32: []}


def test_bfloat16_is_drawn_on_cpu_too() -> None:
    """The main job offers --dtype bfloat16 on CPU, so the suite tests it there (within ties.py's bf16 ration)."""
    assert find(examples("cpu"), lambda e: e.dtype == torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("name", [pytest.param(n, marks=marks(g), id=n) for n, g in GENERATORS.items()])
@given(data=st.data())
@example(data="capture_room")
@example(data="repeated_prompt_tie")
def test_generator_matches_oracles(name: str, device: torch.device, tie_ledger: TieLedger,
                                   data: st.DataObject | str) -> None:
    g = GENERATORS[name]
    compiled = compiles(g, device)
    if isinstance(data, str):  # an explicit @example: a GPU find by name
        if compiled and data not in COMPILED_FINDS:
            return
        example = dataclasses.replace(GPU_FINDS[data], device=str(device))
    else:
        example = data.draw(examples(device, COMPILED_SHAPES if compiled else None,
                                     LEAN_FAMILIES if is_lean(g) else FAMILIES), label="example")
    assert_matches_oracles(name, example, tie_ledger)


LEAN = [pytest.param(n, marks=marks(g), id=n) for n, g in GENERATORS.items() if is_lean(g)]


@pytest.mark.parametrize("family", LEAN_FAMILIES)
@pytest.mark.parametrize("name", LEAN)
def test_lean_step_on_every_family(name: str, family: str, device: torch.device, tie_ledger: TieLedger) -> None:
    """Each model the lean step implements, in each dtype, on one fixed example in one of the compiled shapes:
    three rows, one of which stops at an EOS that the others never emit (Hypothesis above spreads its examples
    over the families; this makes sure none is left out)."""
    batch, prompt_len, max_new_tokens = COMPILED_SHAPES[1]
    gen = torch.Generator().manual_seed(LEAN_FAMILIES.index(family))
    prompts = tuple(map(tuple, torch.randint(0, VOCAB, (batch, prompt_len), generator=gen).tolist()))
    for dtype in dtypes_for(device):
        free = Example(family, 0, dtype, str(device), prompts, max_new_tokens)
        rows = oracle("naive", free)[:, prompt_len:].tolist()
        eos = next((t for t in rows[0] if all(t not in row for row in rows[1:])), None)
        assert_matches_oracles(name, free.with_eos("one_row", eos), tie_ledger)


# The RoPE types lean.py implements besides the default (lean.STATIC_ROPE, and dynamic of LENGTH_DEPENDENT_ROPE), each
# with its own parameters. llama3's and yarn's original_max_position_embeddings lie inside the generated length, so
# their scaled bands are all used. (longrope: test_bad_input, at its limit.)
ROPES = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},  # scales cos/sin too
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},  # the original frequencies within max_position_embeddings
}


@pytest.mark.parametrize("rope", ROPES)
def test_lean_step_with_a_scaled_rope(rope: str, device: torch.device, tie_ledger: TieLedger) -> None:
    """lean_eager on a tiny Llama with each other RoPE type: the cos/sin table is the model's own rotary module's,
    so it must match naive and generate() as the default does."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
                         initializer_range=TINY_INIT, bos_token_id=0, eos_token_id=0,
                         rope_parameters={"rope_theta": 10000.0, **ROPES[rope]})
    model = LlamaForCausalLM(config).to(device).eval()
    assert model.model.rotary_emb.rope_type == rope
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(0)).to(device)
    out = generate("lean_eager", model, ids, 24)
    for oracle_name in ORACLES:
        assert_same_tokens(generate(oracle_name, model, ids, 24), out, model=model, prompt_len=9, eos=None, pad=None,
                           label=f"lean_eager vs {oracle_name}, rope {rope}", ledger=tie_ledger)
