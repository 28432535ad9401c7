"""The contract of generators/__init__.py, case by case, for every registered generator.

Generators that need CUDA are marked gpu (skipped on CPU, with the reason); compiled ones are marked slow (on
CPU a new shape compiles for ~10-25 s; every case here shares one shape, so it compiles once per process).
"""

from __future__ import annotations

import copy

import pytest
import torch

from correctness.contract import assert_contract
from correctness.scenarios import BATCH, CASES, MAX_NEW_TOKENS, PROMPT_LEN, case, contract_model, emitted
from correctness.strategies import FAMILIES, LEAN_FAMILIES
from correctness.ties import TieLedger, assert_same_tokens
from generators import COMPILE, GENERATORS, Generator, caches, generate, stops


def marks(g: Generator) -> list[pytest.MarkDecorator]:
    return [pytest.mark.gpu] * g.requires_cuda + [pytest.mark.slow] * g.compiles


ALL = [pytest.param(name, marks=marks(g), id=name) for name, g in GENERATORS.items()]


@pytest.mark.parametrize("case_name", CASES)
@pytest.mark.parametrize("name", ALL)
def test_contract_and_naive_tokens(name: str, case_name: str, device: torch.device) -> None:
    model = contract_model(device)
    ids, eos, pad = case(case_name, model)
    out = generate(name, model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    expected = generate("naive", model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    label = f"{name} on case {case_name} (eos={eos}, pad={pad})"
    assert_contract(out, ids, MAX_NEW_TOKENS, eos, pad, label)
    assert torch.equal(out.cpu(), expected.cpu()), f"{label}:\n{name}:\n{out}\nnaive:\n{expected}"


@pytest.mark.parametrize("family", [f for f in LEAN_FAMILIES if f not in FAMILIES])
def test_lean_step_contract_on_the_other_families(family: str, device: torch.device, tie_ledger: TieLedger) -> None:
    """lean_eager on every case on the Llama-family models only the lean step treats apart (tiny-gpt2 and tiny-llama
    are the cases' own models above and in test_compiled_variants_match_naive): naive's tokens, up to rationed
    near-ties (on a GPU its kernels round unlike cuBLAS)."""
    model = contract_model(device, family)
    for case_name in CASES:
        ids, eos, pad = case(case_name, model)
        out = generate("lean_eager", model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
        expected = generate("naive", model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
        label = f"lean_eager on {family}, case {case_name} (eos={eos}, pad={pad})"
        assert_contract(out, ids, MAX_NEW_TOKENS, eos, pad, label)
        assert_same_tokens(expected, out, model=model, prompt_len=PROMPT_LEN, eos=eos, pad=pad, label=label,
                           ledger=tie_ledger)


@pytest.mark.parametrize("case_name", CASES)
def test_cases_do_what_they_say(case_name: str, device: torch.device) -> None:
    """The naive outputs of the cases: the early stops the tests above rely on really happen."""
    ids, eos, pad = case(case_name, contract_model(device))
    out = generate("naive", contract_model(device), ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    n = out.shape[1] - PROMPT_LEN
    generated = out[:, PROMPT_LEN:].tolist()
    finished = [eos in row for row in generated]
    if case_name == "no_eos":
        assert n == MAX_NEW_TOKENS
    elif case_name.startswith("one_row"):
        assert n == MAX_NEW_TOKENS and finished == [True] + [False] * (BATCH - 1), generated
        step = generated[0].index(eos)
        assert step < MAX_NEW_TOKENS - 1 and set(generated[0][step + 1 :]) == {eos if pad is None else pad}
    elif case_name == "every_row":
        assert all(finished) and n < MAX_NEW_TOKENS, generated
    elif case_name == "first_step":
        assert n == 1 and all(finished), generated
    else:
        assert all(finished) and n > 1, generated


@pytest.mark.gpu
@pytest.mark.parametrize("max_new_tokens", [1, 2, 3])
@pytest.mark.parametrize("name", [name for name, g in GENERATORS.items() if g.captured])
def test_generation_shorter_than_the_capture_warm_up(name: str, max_new_tokens: int, device: torch.device) -> None:
    """capture() runs its warm-up steps for real (execution.CAPTURE_ROOM positions after the prompt): a session for
    fewer new tokens must still hold them, or they write past its token buffer and KV cache."""
    model = contract_model(device)
    for case_name in ("no_eos", "first_step"):
        ids, eos, pad = case(case_name, model)
        out = generate(name, model, ids, max_new_tokens, eos_token_id=eos, pad_token_id=pad)
        label = f"{name}, {max_new_tokens} new tokens, case {case_name}"
        assert_contract(out, ids, max_new_tokens, eos, pad, label)
        want = generate("naive", model, ids, max_new_tokens, eos_token_id=eos, pad_token_id=pad)
        assert torch.equal(out.cpu(), want.cpu()), f"{label}:\n{out}\nnaive:\n{want}"


@pytest.mark.parametrize("name", ALL)
def test_no_eos_ignores_the_models_own_eos(name: str, device: torch.device) -> None:
    """eos_token_id=None means no early stop, even where the model's config names an EOS that it emits."""
    model = copy.deepcopy(contract_model(device))
    ids = case("no_eos", model).input_ids
    emitted_token = emitted(model, ids)[0][1]
    model.config.eos_token_id = model.generation_config.eos_token_id = emitted_token
    out = generate(name, model, ids, MAX_NEW_TOKENS)
    assert out.shape == (BATCH, PROMPT_LEN + MAX_NEW_TOKENS), (
        f"{name} stopped early at the config's EOS {emitted_token}:\n{out}")
    assert torch.equal(out.cpu(), generate("naive", model, ids, MAX_NEW_TOKENS).cpu())


@pytest.mark.parametrize("name", ALL)
def test_output_is_not_reused(name: str, device: torch.device) -> None:
    """The returned tensor aliases nothing that a later call writes, nor anything a later call reads.

    (Outputs are inference tensors, made under torch.inference_mode: writing to one needs that mode too.)
    """
    model = contract_model(device)
    ids, eos, pad = case("one_row", model)
    first = generate(name, model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    kept = first.clone()
    second = generate(name, model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    with torch.inference_mode():
        first.fill_(-7)
    assert torch.equal(second, kept), f"{name}: writing to the first output changed the second:\n{second}"
    third = generate(name, model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    assert torch.equal(third, kept), f"{name}: writing to an output changed a later call's result:\n{third}"
    assert torch.equal(second, kept), f"{name}: a later call overwrote an earlier output:\n{second}"


# On CPU, the compiled variants get only this test (and the cases above); on a GPU, test_equivalence too.
COMPILED_ON_CPU = [name for name, g in GENERATORS.items() if g.compiles and not g.requires_cuda]
COMPILED_POLICIES = [
    Generator("compiled_deferred", "compiled step, stop flag read one step late", execution=COMPILE,
              stop=stops.Deferred),
    Generator("compiled_every_3", "compiled step, stop check every 3 steps", execution=COMPILE, stop=stops.every_k(3)),
    # lean_graph's step, compiled but not captured: proves on CPU that it compiles with fullgraph and matches.
    Generator("lean_compiled", "lean forward, compiled step", cache=caches.LeanKV, execution=COMPILE),
]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_compiled_variants_match_naive(family: str) -> None:
    """torch.compile on CPU, one fixed shape per family (it compiles for each): every case, every compiled
    generator that runs on CPU, and compiled steps under the late stop checks."""
    model = contract_model("cpu", family)
    generators = [GENERATORS[name] for name in COMPILED_ON_CPU] + COMPILED_POLICIES
    for case_name in CASES:
        ids, eos, pad = case(case_name, model)
        expected = generate("naive", model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
        for g in generators:
            out = g(model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
            label = f"{g.name} on {family}, case {case_name} (eos={eos}, pad={pad})"
            assert_contract(out, ids, MAX_NEW_TOKENS, eos, pad, label)
            assert torch.equal(out, expected), f"{label}:\n{g.name}:\n{out}\nnaive:\n{expected}"


def test_a_new_variant_is_one_line() -> None:
    """The docstring's example (generators/__init__.py): existing policies make a new variant in one line, and it
    emits naive's tokens under every case."""
    g = Generator("lean_every_4", "lean_eager, stop check every 4 steps", cache=caches.LeanKV, stop=stops.every_k(4))
    model = contract_model("cpu")
    for case_name in CASES:
        ids, eos, pad = case(case_name, model)
        out = g(model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
        expected = generate("naive", model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
        label = f"{g.name} on case {case_name} (eos={eos}, pad={pad})"
        assert_contract(out, ids, MAX_NEW_TOKENS, eos, pad, label)
        assert torch.equal(out, expected), f"{label}:\n{g.name}:\n{out}\nnaive:\n{expected}"
