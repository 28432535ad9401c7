"""Exact token equality, with one documented way out: near-ties.

Different kernels round differently (a KV-cached step vs the full sequence, a compiled kernel vs eager, TF32 vs
float32), so a correct variant can pick the other of two nearly equal logits, and its row diverges from there
on. The tie rule: at a row's first divergence, run the reference model again in float64 on CPU on the common
prefix (a float64 copy of the very weights under test, so only arithmetic differs) and take the gap between
the two tokens' logits. If the gap is <= TAU for the model's (device, dtype), and the better of the two is within
TAU of the float64 maximum, it is a tie: the rest of that row is excluded. Anything else fails, printing the row, the
step, both tokens and the gap.

So that a wrong variant cannot hide behind ties, they are rationed per dtype (RATIONS): a cap on tied rows per
compared pair of outputs, and a cap over the session (checked when the session ends, see conftest.py): at most the
99.9th percentile of a Poisson count at the ration's rate per compared step, so that a correct variant fails by
chance in about one session in a thousand, however few steps the session compared (a flat share of the steps,
at least one, failed correct sessions on an H200: 2 ties where ~800 fp32 steps allowed 1). A compared step is one
token compared up to and including its row's first divergence. A row
that repeats an earlier one (the same prompt, and the same tokens in both outputs) is the same evidence and counts
once: the strategies draw a batch's prompts from a small pool, so one near-tie could otherwise fill the
per-example cap by itself (it did, on an H200: two copies of a tiny-llama prompt tied at gap 1.5e-5).
"""

from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass, field

import torch

# TAU = 4x the largest |logit - float64 logit| measured by `python -m correctness.measure_tau [--device cuda]`
# over tiny-gpt2 and tiny-llama, weight seeds 0-3, 4 random [8, 64] batches each, full forward and KV-cached
# one-token steps (the tiny models' logits: |max| ~11, std ~2.4, median top-2 gap ~0.5; initializer_range 0.3).
# The CUDA entries were measured on an NVIDIA H200 (torch 2.11.0+cu130, transformers 5.17.0, 2026-11-27; log in
# perf/evidence/correctness_gpu/tau.log); test_ties checks that TAU/2 still covers a fresh measurement on the
# device at hand, so an entry that no longer fits fails there rather than passing silently:
# - float32 on CUDA runs its matmuls in TF32 (models.build sets matmul precision "high", as in the post): 0.117.
#   That is large next to these logits' gaps (46% of positions have a float64 top-2 gap within 4x of it), so on
#   CUDA fp32 the ration below, not tau, is what keeps a wrong variant from hiding behind ties.
# - bfloat16 on CUDA: 1.07, as on CPU (both accumulate bf16 products in fp32); within 4x of it lie 99.9% of
#   positions' gaps: there too the ration does the work.
TAU: dict[tuple[str, torch.dtype], float] = {
    ("cpu", torch.float32): 4 * 7.1e-5,  # measured: 6.3e-5 full forward, 7.1e-5 cached steps
    ("cpu", torch.bfloat16): 4 * 1.07,  # measured: 0.97-1.07 full forward and cached steps
    ("cuda", torch.float32): 4 * 0.117,  # measured: 0.117 full forward, 0.113 cached steps (TF32)
    ("cuda", torch.bfloat16): 4 * 1.07,  # measured: 1.07 full forward and cached steps
}


@dataclass(frozen=True)
class Ration:
    rows_per_example: int | None  # tied rows allowed in one compared pair of outputs (None: no cap)
    per_step: float  # the rate of ties per compared step that correct variants stay under (see poisson_bound)


# float32: measured 0 ties on CPU (0 of 1036 compared rows in a ci run; 0.02% of positions have a float64 top-2
# gap within 4x the error), 0 of 64 rows parted under emulated TF32. One tied row per example, and a rate of
# 0.1% of compared steps (about 2% of rows at the ~20-25 compared steps of an average row), so a session may hold
# poisson_bound(0.001 x steps) ties: 2 at 100 steps, 5 at 800, 24 at 12,000, 60 at 40,000. Correct variants on an
# H200 tied at 0-0.07% (seventh session, whole GPU suite); a wrong one far more even if it diverges only at close
# calls.
# On CUDA the fp32 ration is what a variant with its own matmul uses up: the lean step through skinny.py
# (fp32-accurate tf32x3 products against naive's cuBLAS TF32) tied 1 row over 7,335 and 5 over 5,492 compared
# steps in two lean-only runs on an H200 (the second at the ration); with Triton's plain TF32 it tied 204 over
# 39,597 and failed, which is the ration doing its job (perf/RESULTS.md). Until the seventh session those counts
# took every tie and step twice (once per oracle; test_equivalence now compares agreeing oracles once), so the
# rates stand but a single near-tie counted as two: with ~900 distinct fp32 steps in a run (allowed: 1), one tie of
# lean_eager at gap 0.0024 failed the session on an H200. Plain TF32's 204 over 39,597 still fails by 3x.
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

_FLOAT64: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 CPU copy of `model`'s weights, made once per model."""
    if model not in _FLOAT64:
        _FLOAT64[model] = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    return _FLOAT64[model]


@torch.inference_mode()
def float64_logits(model: torch.nn.Module, prefix: torch.Tensor) -> torch.Tensor:
    """The float64 logits [V] of the token after `prefix` [L]."""
    return float64_copy(model)(prefix[None].cpu(), use_cache=False).logits[0, -1]


def tau_for(model: torch.nn.Module) -> float:
    param = next(model.parameters())
    return TAU[(param.device.type, param.dtype)]


def _with_padding(out: torch.Tensor, length: int, prompt_len: int, eos: int | None, pad: int | None,
                  label: str) -> torch.Tensor:
    """`out` continued to `length` columns as the contract says it would go on: every row finished, so pad."""
    if out.shape[1] == length:
        return out
    generated = out[:, prompt_len:]
    unfinished = [] if eos is None else [r for r in range(out.shape[0]) if not bool((generated[r] == eos).any())]
    if eos is None or unfinished:
        raise AssertionError(f"{label}: output has {out.shape[1] - prompt_len} new tokens, the other "
                             f"{length - prompt_len}, yet rows {unfinished or 'all'} never produced EOS")
    fill = eos if pad is None else pad
    return torch.cat([out, out.new_full((out.shape[0], length - out.shape[1]), fill)], dim=1)


def assert_same_tokens(expected: torch.Tensor, actual: torch.Tensor, *, model: torch.nn.Module, prompt_len: int,
                       eos: int | None, pad: int | None, label: str, ledger: TieLedger = LEDGER) -> list[str]:
    """Assert that `actual` holds `expected`'s tokens, up to rationed near-ties; returns the ties found.

    Both outputs must already satisfy the contract (contract.assert_contract): a row holds padding after its
    EOS, and an output ends early only once every row has produced EOS.
    """
    expected, actual = expected.cpu(), actual.cpu()
    if expected.shape[0] != actual.shape[0]:
        raise AssertionError(f"{label}: batch {actual.shape[0]}, expected {expected.shape[0]}")
    length = max(expected.shape[1], actual.shape[1])
    expected = _with_padding(expected, length, prompt_len, eos, pad, f"{label} (expected)")
    actual = _with_padding(actual, length, prompt_len, eos, pad, label)
    tau, dtype = tau_for(model), next(model.parameters()).dtype
    ties, steps, seen = [], 0, set()
    for row in range(expected.shape[0]):
        pair = (tuple(expected[row].tolist()), tuple(actual[row].tolist()))
        if pair in seen:  # a repeat of an earlier row: already compared
            continue
        seen.add(pair)
        differ = (expected[row] != actual[row]).nonzero()
        steps += (length if len(differ) == 0 else int(differ[0]) + 1) - prompt_len
        if len(differ) == 0:
            continue
        col = int(differ[0])
        a, b = int(expected[row, col]), int(actual[row, col])
        where = (f"{label}: row {row} diverges at step {col - prompt_len} (column {col}): expected token {a}, "
                 f"got {b}\n  expected row: {expected[row].tolist()}\n  actual row:   {actual[row].tolist()}")
        if col < prompt_len:
            raise AssertionError(f"{where}\n  (inside the prompt)")
        if eos is not None and bool((expected[row, prompt_len:col] == eos).any()):
            raise AssertionError(f"{where}\n  (after the row's EOS: only padding may follow)")
        logits = float64_logits(model, expected[row, :col])
        gap = abs(float(logits[a] - logits[b]))
        below_top = float(logits.max() - torch.maximum(logits[a], logits[b]))
        detail = (f"float64 logits: {a} -> {float(logits[a]):.6g}, {b} -> {float(logits[b]):.6g}, gap {gap:.3g}, "
                  f"max {float(logits.max()):.6g}; tie tolerance tau = {tau:.3g}")
        if gap > tau or below_top > tau:
            raise AssertionError(f"{where}\n  not a near-tie: {detail}")
        ties.append(f"{label}: row {row}, step {col - prompt_len}: {a} vs {b}, gap {gap:.3g}")
    ledger.record(dtype, steps, ties)
    cap = RATIONS[dtype].rows_per_example
    if cap is not None and len(ties) > cap:
        raise AssertionError(f"{label}: {len(ties)} near-tied rows in one example ({dtype}: at most {cap} "
                             f"allowed):\n  " + "\n  ".join(ties))
    return ties
