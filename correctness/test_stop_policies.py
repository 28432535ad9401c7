"""The stop policies (generators/stops.py) under every cache, in eager execution on CPU, against naive.

A policy that looks late runs extra steps and trims them (loop.finish); these cases put the stop at every
interesting step so that an off-by-one in the flag slot or in the trimming shows. How many steps a policy runs
is part of its definition too (Deferred: exactly one past the stop step), counted through a test-only subclass
of the policy in a copy of the variant (dataclasses.replace).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from correctness.contract import assert_contract, steps_to_run
from correctness.scenarios import CASES, MAX_NEW_TOKENS, PROMPT_LEN, case, contract_model, emitted
from generators import COMPILE, CUDA_GRAPH, Generator, caches, generate, stops

CACHES = {"none": caches.Recompute, "dynamic": caches.DynamicKV, "static": caches.StaticKV}
STOPS = {"every_step": stops.EveryStep, "deferred": stops.Deferred, "every_k1": stops.every_k(1),
         "every_k3": stops.every_k(3), "every_k5": stops.every_k(5),
         f"every_k{MAX_NEW_TOKENS + 1}": stops.every_k(MAX_NEW_TOKENS + 1), "never": stops.Never}
POLICIES = [Generator(f"{cache}_{stop}", f"{stop} stop check over the {cache} cache", cache=CACHES[cache],
                      stop=STOPS[stop]) for cache in CACHES for stop in STOPS]
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
    out = dataclasses.replace(policy, stop=counting(policy.stop, calls))(model, ids, MAX_NEW_TOKENS, eos_token_id=eos)
    n = expected.shape[1] - PROMPT_LEN
    label = f"{policy.name}, batch 1, EOS {eos} (first emitted at step {n - 1})"
    assert_contract(out, ids, MAX_NEW_TOKENS, eos, None, label)
    assert torch.equal(out, expected), f"{label}:\n{policy.name}: {out.tolist()}\nnaive: {expected.tolist()}"
    expected_steps = steps_to_run(policy.stop, n, MAX_NEW_TOKENS)
    assert len(calls) == expected_steps, (
        f"{label}: ran {len(calls)} steps, expected {expected_steps} for the {policy.stop.__name__} policy")


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
    [dict(cache="lru"), dict(execution="jit"), dict(stop="sometimes"), dict(cache=caches.DynamicKV, execution=COMPILE),
     dict(cache=caches.Recompute, execution=CUDA_GRAPH), dict(stop=stops.EveryK(torch.zeros((), dtype=torch.bool)))],
    ids=["cache_lru", "execution_jit", "stop_sometimes", "dynamic_compiled", "recompute_cuda_graph",
         "stop_instance_not_class"],
)
def test_generator_rejects_unknown_or_impossible_policies(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="bad"):
        Generator("bad", "", **kwargs)


def test_every_k_rejects_k_below_1() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        stops.every_k(0)
