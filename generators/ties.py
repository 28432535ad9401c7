"""The near-tie rule: when a token that differs from the reference's is rounding, not a bug.

Different kernels round differently (a KV-cached step vs the full sequence, a compiled kernel vs eager, TF32 vs
float32), so a correct variant can pick the other of two nearly equal logits, and its row diverges from there
on. At a row's first divergence, the reference model runs again in float64 on CPU on the common prefix (a
float64 copy of the very weights under test, so only arithmetic differs), and the gap between the two tokens'
logits is taken. If the gap is <= TAU for the model's (device, dtype), and the better of the two is within TAU of
the float64 maximum, it is a near-tie: the rest of that row is excluded. Anything else differs.

The main job's token column applies this rule as it stands; the correctness suite (correctness/ties.py) also
rations near-ties, so that a wrong variant cannot hide behind them.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

import torch

# TAU = 4x the largest |logit - float64 logit| measured by `python -m correctness.measure_tau [--device cuda]`
# over tiny-gpt2 and tiny-llama, weight seeds 0-3, 4 random [8, 64] batches each, full forward and KV-cached
# one-token steps (the tiny models' logits: |max| ~11, std ~2.4, median top-2 gap ~0.5; initializer_range 0.3).
# The CUDA entries were measured on an NVIDIA H200 (torch 2.11.0+cu130, transformers 5.17.0, 2026-11-27; log in
# perf/evidence/correctness_gpu/tau.log); correctness/test_ties.py checks that TAU/2 still covers a fresh
# measurement on the device at hand, so an entry that no longer fits fails there rather than passing silently:
# - float32 on CUDA runs its matmuls in TF32 (models.build sets matmul precision "high", as in the post): 0.117.
#   That is large next to these logits' gaps (46% of positions have a float64 top-2 gap within 4x of it), so on
#   CUDA fp32 the suite's ration, not tau, is what keeps a wrong variant from hiding behind ties.
# - bfloat16 on CUDA: 1.07, as on CPU (both accumulate bf16 products in fp32); within 4x of it lie 99.9% of
#   positions' gaps: there too the ration does the work.
TAU: dict[tuple[str, torch.dtype], float] = {
    ("cpu", torch.float32): 4 * 7.1e-5,  # measured: 6.3e-5 full forward, 7.1e-5 cached steps
    ("cpu", torch.bfloat16): 4 * 1.07,  # measured: 0.97-1.07 full forward and cached steps
    ("cuda", torch.float32): 4 * 0.117,  # measured: 0.117 full forward, 0.113 cached steps (TF32)
    ("cuda", torch.bfloat16): 4 * 1.07,  # measured: 1.07 full forward and cached steps
}

_FLOAT64: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 CPU copy of `model`'s weights, made once per model."""
    if model not in _FLOAT64:
        _FLOAT64[model] = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    return _FLOAT64[model]


@torch.inference_mode()
def float64_logits(model: torch.nn.Module, prefix: torch.Tensor) -> torch.Tensor:
    """The float64 logits [V] of the token after `prefix` [L]: one forward of the float64 copy."""
    return float64_copy(model)(prefix[None].cpu(), use_cache=False).logits[0, -1]


def tau_for(model: torch.nn.Module) -> float:
    param = next(model.parameters())
    return TAU[(param.device.type, param.dtype)]


def is_near_tie(logits: torch.Tensor, a: int, b: int, tau: float) -> bool:
    """The rule itself: tokens a and b are a near-tie under the reference's float64 `logits` [V] when their
    logits are within tau of each other and the better of the two is within tau of the maximum."""
    gap = abs(float(logits[a] - logits[b]))
    below_top = float(logits.max() - torch.maximum(logits[a], logits[b]))
    return gap <= tau and below_top <= tau


@dataclass
class Comparison:
    """Two outputs compared row by row: `steps` compared (a row's tokens up to and including its first
    divergence, each distinct row once), the near-ties found, and why they differ (None: they agree up to ties)."""

    steps: int = 0
    ties: list[str] = field(default_factory=list)
    failure: str | None = None

    @property
    def verdict(self) -> str:
        return "differs" if self.failure else "near-tie" if self.ties else "same"


def _with_padding(out: torch.Tensor, length: int, prompt_len: int, eos: int | None, pad: int | None,
                  label: str) -> torch.Tensor:
    """`out` continued to `length` columns as the contract says it would go on: every row finished, so pad."""
    if out.shape[1] == length:
        return out
    generated = out[:, prompt_len:]
    unfinished = [] if eos is None else [r for r in range(out.shape[0]) if not bool((generated[r] == eos).any())]
    if eos is None or unfinished:
        raise ValueError(f"{label}: output has {out.shape[1] - prompt_len} new tokens, the other "
                         f"{length - prompt_len}, yet rows {unfinished or 'all'} never produced EOS")
    fill = eos if pad is None else pad
    return torch.cat([out, out.new_full((out.shape[0], length - out.shape[1]), fill)], dim=1)


def compare_tokens(expected: torch.Tensor, actual: torch.Tensor, *, model: torch.nn.Module, prompt_len: int,
                   eos: int | None, pad: int | None, label: str, seen: set | None = None) -> Comparison:
    """Compare `actual` with the reference `expected` under the near-tie rule; stops at the first row that differs.

    Both outputs must satisfy the contract (a row holds padding after its EOS, an output ends early only once
    every row has produced EOS). A row that repeats an earlier one (the same label, the same tokens in both
    outputs) is compared once: it is the same evidence. `seen` holds the rows compared before, across calls (a
    session's); None: this call's rows only.
    """
    expected, actual = expected.cpu(), actual.cpu()
    result = Comparison()
    if expected.shape[0] != actual.shape[0]:
        result.failure = f"{label}: batch {actual.shape[0]}, expected {expected.shape[0]}"
        return result
    length = max(expected.shape[1], actual.shape[1])
    try:
        expected = _with_padding(expected, length, prompt_len, eos, pad, f"{label} (expected)")
        actual = _with_padding(actual, length, prompt_len, eos, pad, label)
    except ValueError as e:
        result.failure = str(e)
        return result
    tau, seen = tau_for(model), set() if seen is None else seen
    for row in range(expected.shape[0]):
        pair = (label, tuple(expected[row].tolist()), tuple(actual[row].tolist()))
        if pair in seen:
            continue
        seen.add(pair)
        differ = (expected[row] != actual[row]).nonzero()
        result.steps += (length if len(differ) == 0 else int(differ[0]) + 1) - prompt_len
        if len(differ) == 0:
            continue
        col = int(differ[0])
        a, b = int(expected[row, col]), int(actual[row, col])
        where = (f"{label}: row {row} diverges at step {col - prompt_len} (column {col}): expected token {a}, "
                 f"got {b}\n  expected row: {expected[row].tolist()}\n  actual row:   {actual[row].tolist()}")
        if col < prompt_len:
            result.failure = f"{where}\n  (inside the prompt)"
            return result
        if eos is not None and bool((expected[row, prompt_len:col] == eos).any()):
            result.failure = f"{where}\n  (after the row's EOS: only padding may follow)"
            return result
        logits = float64_logits(model, expected[row, :col])
        gap = abs(float(logits[a] - logits[b]))
        if not is_near_tie(logits, a, b, tau):
            result.failure = (f"{where}\n  not a near-tie: float64 logits: {a} -> {float(logits[a]):.6g}, {b} -> "
                              f"{float(logits[b]):.6g}, gap {gap:.3g}, max {float(logits.max()):.6g}; tie tolerance "
                              f"tau = {tau:.3g}")
            return result
        result.ties.append(f"{label}: row {row}, step {col - prompt_len}: {a} vs {b}, gap {gap:.3g}")
    return result
