"""The stop policies (generators/stops.py) under every cache, in eager execution on CPU, against naive.

A policy that looks late runs extra steps and trims them (loop.finish); these cases put the stop at every
interesting step so that an off-by-one in the flag slot or in the trimming shows. How many steps a policy runs
is part of its definition too (Deferred: exactly one past the stop step), counted through a test-only subclass
put into generators.stops.STOP_CHECKS, which the loop reads at call time.
"""

from __future__ import annotations

import pytest
import torch

from correctness.contract import assert_contract, steps_to_run
from correctness.scenarios import CASES, MAX_NEW_TOKENS, PROMPT_LEN, case, contract_model, emitted
from generators import Generator, generate, stops

POLICIES = [
    Generator(f"{cache}_{stop}{k}", f"{stop} stop check over the {cache} cache", cache=cache, stop=stop, k=k)
    for cache in ("none", "dynamic", "static")
    for stop, k in (("every_step", 1), ("deferred", 1), ("every_k", 1), ("every_k", 3), ("every_k", 5),
                    ("every_k", MAX_NEW_TOKENS + 1), ("never", 1))
]
STOP_STEPS = (0, 1, 2, 3, 4, 5, 6, MAX_NEW_TOKENS - 2, MAX_NEW_TOKENS - 1)


def counting(policy: type[stops.StopCheck], calls: list[int]) -> type[stops.StopCheck]:
    """`policy`, recording every step it is asked about (the loop asks once after each step)."""

    class Counting(policy):
        def should_stop(self, step: int) -> bool:
            calls.append(step)
            return super().should_stop(step)

    return Counting


@pytest.mark.parametrize("step", STOP_STEPS)
@pytest.mark.parametrize("policy", POLICIES, ids=lambda g: g.name)
def test_single_row_stops_at_each_step(policy: Generator, step: int) -> None:
    """Batch 1, EOS = the token row 0 emits at `step`: the output ends at that token's first occurrence, and
    the policy ran exactly as many steps as it is defined to."""
    model = contract_model("cpu")
    ids = case("no_eos", model).input_ids[:1]
    eos = emitted(model, ids)[0][step]
    expected = generate("naive", model, ids, MAX_NEW_TOKENS, eos_token_id=eos)
    calls: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(stops.STOP_CHECKS, policy.stop, counting(stops.STOP_CHECKS[policy.stop], calls))
        out = policy(model, ids, MAX_NEW_TOKENS, eos_token_id=eos)
    n = expected.shape[1] - PROMPT_LEN
    label = f"{policy.name}, batch 1, EOS {eos} (first emitted at step {n - 1})"
    assert_contract(out, ids, MAX_NEW_TOKENS, eos, None, label)
    assert torch.equal(out, expected), f"{label}:\n{policy.name}: {out.tolist()}\nnaive: {expected.tolist()}"
    expected_steps = steps_to_run(policy.stop, policy.k, n, MAX_NEW_TOKENS)
    assert len(calls) == expected_steps, (
        f"{label}: ran {len(calls)} steps, expected {expected_steps} for the {policy.stop} policy")


@pytest.mark.parametrize("case_name", CASES)
@pytest.mark.parametrize("policy", POLICIES, ids=lambda g: g.name)
def test_batch_cases(policy: Generator, case_name: str) -> None:
    model = contract_model("cpu")
    ids, eos, pad = case(case_name, model)
    expected = generate("naive", model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    out = policy(model, ids, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    label = f"{policy.name}, case {case_name} (eos={eos}, pad={pad})"
    assert_contract(out, ids, MAX_NEW_TOKENS, eos, pad, label)
    assert torch.equal(out, expected), f"{label}:\n{policy.name}:\n{out}\nnaive:\n{expected}"


@pytest.mark.parametrize(
    "kwargs",
    [dict(cache="lru"), dict(execution="jit"), dict(stop="sometimes"), dict(cache="dynamic", execution="compile"),
     dict(cache="none", execution="cuda_graph"), dict(stop="every_k", k=0)],
    ids=str,
)
def test_generator_rejects_unknown_or_impossible_policies(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="bad"):
        Generator("bad", "", **kwargs)
