"""Exact token equality, with one documented way out: rationed near-ties.

The near-tie rule itself (TAU, the float64 reference logits, the row-by-row comparison) is generators/ties.py's,
shared with the main job's token column: at a row's first divergence, a float64 copy of the model scores the
common prefix, and the two tokens are a near-tie if their logits are within TAU of each other and of the
maximum; the rest of that row is excluded. Anything else fails, printing the row, the step, both tokens and
the gap.

So that a wrong variant cannot hide behind ties, they are rationed per dtype (RATIONS): a cap on tied rows per
compared pair of outputs, and a cap over the session (checked when the session ends, see conftest.py): at most the
99.9th percentile of a Poisson count at the ration's rate per compared step, so that a correct variant fails by
chance in about one session in a thousand, however few steps the session compared (a flat share of the steps,
at least one, failed correct sessions on an H200: 2 ties where ~800 fp32 steps allowed 1). A compared step is one
token compared up to and including its row's first divergence. A row
that repeats an earlier one (the same prompt, and the same tokens in both outputs) is the same evidence and counts
once, in one example or in a later one: the strategies draw a batch's prompts from a small pool, so one near-tie
could otherwise fill the per-example cap by itself (it did, on an H200: two copies of a tiny-llama prompt tied at gap
1.5e-5), or the session's ration (f9a6d5b's lean rows on an H200: one tie counted three times, in three examples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from generators.ties import TAU, compare_tokens, float64_copy, float64_logits, tau_for

__all__ = ["LEDGER", "RATIONS", "TAU", "Ration", "TieLedger", "assert_same_tokens", "float64_copy", "float64_logits",
           "poisson_bound", "tau_for"]


@dataclass(frozen=True)
class Ration:
    rows_per_example: int | None  # tied rows allowed in one compared pair of outputs (None: no cap)
    per_step: float  # the rate of ties per compared step that correct variants stay under (see poisson_bound)


# float32: measured 0 ties on CPU (0 of 1036 compared rows in a ci run; 0.02% of positions have a float64 top-2
# gap within 4x the error), 0 of 64 rows parted under emulated TF32. One tied row per example, and a rate of
# 0.1% of compared steps (about 2% of rows at the ~20-25 compared steps of an average row), so a session may hold
# poisson_bound(0.001 x steps) ties: 2 at 100 steps, 5 at 800, 24 at 12,000, 60 at 40,000. Correct variants on an
# H200 tied at 0-0.07% (2026-11-27, the whole GPU suite at 41bce23); a wrong one far more even if it diverges only at
# close calls.
# On CUDA the fp32 ration is what a variant with its own matmul uses up: the lean step through skinny.py
# (fp32-accurate tf32x3 products against naive's cuBLAS TF32) tied 1 row over 7,335 and 5 over 5,492 compared
# steps in two lean-only runs on an H200 (the second at the ration); with Triton's plain TF32 it tied 204 over
# 39,597 and failed, which is the ration doing its job (docs/history/2026-11-correctness-gpu.md). Until 932c203 those
# counts took every tie and step twice (once per oracle; test_equivalence now compares agreeing oracles once), so the
# rates stand but a single near-tie counted as two: with ~900 distinct fp32 steps in a run (allowed: 1), one tie of
# lean_eager at gap 0.0024 failed the session on an H200. Plain TF32's 204 over 39,597 still fails by 3x.
# Since cd89ccf skinny.py multiplies fp32 in rounded TF32, as cuBLAS does, and the lean rows tied 0 fp32 rows over
# 2,592 compared steps on an H200 (2026-12-01), where tf32x3 had tied 6 over 1,478 and 2 in one example (0335d59).
# bfloat16: here rounding flips argmaxes for real: on CPU, 0.8-2.5% of positions pick another token in bf16
# than in float64 or than the other path, so about half of all 48-token rows part once. No cap per example;
# a rate of 5% of compared steps (2x the worst measured flip rate). A wrong variant diverges within a few steps of every
# row (ties per compared step near 1) and still fails; one that is off by less than bf16 rounding cannot be told
# from bf16 rounding, by this or any token comparison.
RATIONS = {
    torch.float32: Ration(rows_per_example=1, per_step=0.001),
    torch.bfloat16: Ration(rows_per_example=None, per_step=0.05),
}


def poisson_bound(mean: float, q: float = 0.999) -> int:
    """The smallest k with P(X <= k) >= q for X ~ Poisson(mean): how many ties a session may hold when correct
    variants tie at most at the ration's rate (ties are rare, independent close calls)."""
    k, cdf = 0, 0.0
    while True:
        cdf += math.exp(k * math.log(mean) - mean - math.lgamma(k + 1)) if mean > 0 else float(k == 0)
        if cdf >= q:
            return k
        k += 1


@dataclass(repr=False)
class TieLedger:
    """Compared steps and the ties found among them, per dtype, over a session."""

    steps: dict[torch.dtype, int] = field(default_factory=dict)
    ties: dict[torch.dtype, list[str]] = field(default_factory=dict)
    seen: set = field(default_factory=set)  # rows compared so far: one met again in a later example counts once

    def record(self, dtype: torch.dtype, steps: int, ties: list[str]) -> None:
        self.steps[dtype] = self.steps.get(dtype, 0) + steps
        self.ties.setdefault(dtype, []).extend(ties)

    def allowed(self, dtype: torch.dtype) -> int:
        return poisson_bound(RATIONS[dtype].per_step * self.steps.get(dtype, 0))

    def over_ration(self) -> list[torch.dtype]:
        return [dtype for dtype, ties in self.ties.items() if len(ties) > self.allowed(dtype)]

    def summary(self) -> str:
        return "; ".join(f"{str(dtype).removeprefix('torch.')}: {len(self.ties[dtype])} tied rows over "
                         f"{self.steps[dtype]} compared steps (allowed: {self.allowed(dtype)})"
                         for dtype in self.steps) or "nothing compared"

    def __repr__(self) -> str:  # Hypothesis prints the fixtures of a falsifying example
        return f"TieLedger({self.summary()})"


LEDGER = TieLedger()

def assert_same_tokens(expected: torch.Tensor, actual: torch.Tensor, *, model: torch.nn.Module, prompt_len: int,
                       eos: int | None, pad: int | None, label: str, ledger: TieLedger = LEDGER) -> list[str]:
    """Assert that `actual` holds `expected`'s tokens, up to rationed near-ties; returns the ties found.

    Both outputs must already satisfy the contract (contract.assert_contract): a row holds padding after its
    EOS, and an output ends early only once every row has produced EOS.
    """
    result = compare_tokens(expected, actual, model=model, prompt_len=prompt_len, eos=eos, pad=pad, label=label,
                            seen=ledger.seen)
    if result.failure:
        raise AssertionError(result.failure)
    dtype = next(model.parameters()).dtype
    ledger.record(dtype, result.steps, result.ties)
    cap = RATIONS[dtype].rows_per_example
    if cap is not None and len(result.ties) > cap:
        raise AssertionError(f"{label}: {len(result.ties)} near-tied rows in one example ({dtype}: at most {cap} "
                             f"allowed):\n  " + "\n  ".join(result.ties))
    return result.ties
