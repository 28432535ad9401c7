"""The tie rule of ties.py: what it excuses, what it does not, and that TAU still covers the rounding error."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from correctness.measure_tau import logits_errors
from correctness.scenarios import PROMPT_LEN, case, contract_model
from correctness.strategies import LEAN_FAMILIES, VOCAB, dtypes_for, get_model
from correctness.ties import RATIONS, TAU, TieLedger, assert_same_tokens, poisson_bound
from generators import generate
from generators.ties import is_near_tie

STEP = 3  # where the crafted outputs diverge


def _expected_and_tokens(model: torch.nn.Module) -> tuple[torch.Tensor, int, int]:
    """Two rows of naive output, the token a both emit at STEP (after a common prompt), and a token b that is
    not in the prefix."""
    ids = case("no_eos", model).input_ids[:1].expand(2, -1).contiguous()
    expected = generate("naive", model, ids, 8)
    a = int(expected[0, PROMPT_LEN + STEP])
    b = next(t for t in range(VOCAB) if t not in expected[0, : PROMPT_LEN + STEP + 1].tolist())
    return expected, a, b


def _diverging(expected: torch.Tensor, rows: list[int], b: int) -> torch.Tensor:
    actual = expected.clone()
    actual[rows, PROMPT_LEN + STEP :] = b  # b at STEP, then anything
    return actual


def _tied_model(a: int, b: int) -> torch.nn.Module:
    """The contract model with token b's output row a copy of token a's: their logits tie exactly."""
    model = copy.deepcopy(contract_model("cpu"))
    with torch.no_grad():
        model.get_output_embeddings().weight[b] = model.get_output_embeddings().weight[a]
    return model


def test_an_exact_tie_is_excused_and_recorded() -> None:
    expected, a, b = _expected_and_tokens(contract_model("cpu"))
    ledger = TieLedger()
    ties = assert_same_tokens(expected, _diverging(expected, [1], b), model=_tied_model(a, b), prompt_len=PROMPT_LEN,
                              eos=None, pad=None, label="crafted", ledger=ledger)
    assert len(ties) == 1 and f"row 1, step {STEP}: {a} vs {b}, gap 0" in ties[0], ties
    # compared steps: row 0 all 8, row 1 up to and including its divergence at STEP
    assert ledger.steps == {torch.float32: 8 + STEP + 1} and ledger.ties == {torch.float32: ties}


def test_a_clear_divergence_fails_with_row_step_tokens_and_gap() -> None:
    model = contract_model("cpu")
    expected, a, b = _expected_and_tokens(model)
    message = rf"crafted: row 1 diverges at step {STEP} \(column {PROMPT_LEN + STEP}\): expected token {a}, got {b}"
    with pytest.raises(AssertionError, match=message) as info:
        assert_same_tokens(expected, _diverging(expected, [1], b), model=model, prompt_len=PROMPT_LEN, eos=None,
                           pad=None, label="crafted", ledger=TieLedger())
    assert "not a near-tie" in str(info.value) and "gap" in str(info.value)


def test_too_many_ties_in_one_example_fail() -> None:
    """Two different rows, each tied: one more than float32's cap."""
    model = contract_model("cpu")
    expected = generate("naive", model, case("no_eos", model).input_ids[:2], 8)
    a = [int(t) for t in expected[:, PROMPT_LEN + STEP]]
    b = [t for t in range(VOCAB) if t not in expected[:, : PROMPT_LEN + STEP + 1].flatten().tolist()][:2]
    tied = copy.deepcopy(model)
    with torch.no_grad():
        for a_row, b_row in zip(a, b, strict=True):
            tied.get_output_embeddings().weight[b_row] = tied.get_output_embeddings().weight[a_row]
    actual = expected.clone()
    for row in range(2):
        actual[row, PROMPT_LEN + STEP :] = b[row]
    assert RATIONS[torch.float32].rows_per_example == 1 and not torch.equal(expected[0], expected[1])
    with pytest.raises(AssertionError, match="2 near-tied rows in one example"):
        assert_same_tokens(expected, actual, model=tied, prompt_len=PROMPT_LEN, eos=None, pad=None, label="crafted",
                           ledger=TieLedger())


def test_a_repeated_row_ties_once() -> None:
    """Two copies of one prompt, tied alike, are one tie and one row's compared steps."""
    expected, a, b = _expected_and_tokens(contract_model("cpu"))
    assert torch.equal(expected[0], expected[1])
    ledger = TieLedger()
    ties = assert_same_tokens(expected, _diverging(expected, [0, 1], b), model=_tied_model(a, b),
                              prompt_len=PROMPT_LEN, eos=None, pad=None, label="crafted", ledger=ledger)
    assert len(ties) == 1 and "row 0" in ties[0], ties
    assert ledger.steps == {torch.float32: STEP + 1}


def test_a_row_met_again_in_a_later_example_counts_once() -> None:
    """The same tied row (same label, same tokens) in two examples of a session is one tie and one row's steps;
    under another label it is another variant's evidence."""
    expected, a, b = _expected_and_tokens(contract_model("cpu"))
    actual, model, ledger = _diverging(expected, [1], b), _tied_model(a, b), TieLedger()
    for label in ("crafted", "crafted", "other"):
        assert_same_tokens(expected, actual, model=model, prompt_len=PROMPT_LEN, eos=None, pad=None, label=label,
                           ledger=ledger)
    assert ledger.steps == {torch.float32: 2 * (8 + STEP + 1)} and len(ledger.ties[torch.float32]) == 2


def test_a_different_token_after_eos_is_never_a_tie() -> None:
    expected, a, b = _expected_and_tokens(contract_model("cpu"))
    eos = int(expected[0, PROMPT_LEN + STEP - 1])
    with pytest.raises(AssertionError, match="after the row's EOS"):
        assert_same_tokens(expected, _diverging(expected, [1], b), model=_tied_model(a, b), prompt_len=PROMPT_LEN,
                           eos=eos, pad=eos, label="crafted", ledger=TieLedger())


def test_an_early_end_with_unfinished_rows_fails() -> None:
    expected, a, b = _expected_and_tokens(contract_model("cpu"))
    with pytest.raises(AssertionError, match="never produced EOS"):
        assert_same_tokens(expected, expected[:, :-1], model=contract_model("cpu"), prompt_len=PROMPT_LEN, eos=b,
                           pad=None, label="crafted", ledger=TieLedger())


def test_the_rule_needs_both_tokens_near_each_other_and_near_the_top() -> None:
    logits = torch.tensor([5.0, 4.9, 4.85, 1.0, 0.99], dtype=torch.float64)
    assert is_near_tie(logits, 0, 1, tau=0.2) and is_near_tie(logits, 1, 0, tau=0.2)
    assert not is_near_tie(logits, 0, 1, tau=0.05)  # gap 0.1 > tau
    assert not is_near_tie(logits, 3, 4, tau=0.2)  # gap 0.01, but 4.0 below the maximum
    assert not is_near_tie(logits, 1, 2, tau=0.08)  # gap 0.05, the better 0.1 below the maximum


def test_generators_do_not_import_the_suite() -> None:
    """The rule lives in generators/ties.py so that the main job can use it without importing correctness/."""
    offenders = [p.name for p in (Path(__file__).resolve().parents[1] / "generators").glob("*.py")
                 if "correctness" in "".join(line for line in p.read_text().splitlines()
                                             if line.lstrip().startswith(("import ", "from ")))]
    assert not offenders, f"generators/ imports the correctness suite in {offenders}"


def test_poisson_bound() -> None:
    """The 99.9th percentile of a Poisson count, checked against its CDF by hand (mean 3: P(X <= 9) = 0.9989,
    P(X <= 10) = 0.9997) and at the ends."""
    assert [poisson_bound(m) for m in (0.0, 0.1, 3.0)] == [0, 2, 10]
    big = poisson_bound(2500.0)  # no underflow: about mean + 3.09 standard deviations
    assert 2500 + 3.0 * 50 < big < 2500 + 3.3 * 50


def test_the_session_ration() -> None:
    ledger = TieLedger()
    ledger.record(torch.float32, 100, [])
    assert ledger.allowed(torch.float32) == 2 and not ledger.over_ration()
    ledger.record(torch.float32, 700, ["a", "b"])  # 800 steps: the H200 run that a flat 0.1% share failed
    assert ledger.allowed(torch.float32) == 5 and not ledger.over_ration()
    ledger.record(torch.float32, 2200, [str(i) for i in range(9)])  # 11 ties in 3,000 steps: ~4x the rate
    assert ledger.allowed(torch.float32) == 10 and ledger.over_ration() == [torch.float32]


@pytest.mark.parametrize("family", LEAN_FAMILIES)  # every family the suite compares tokens on
def test_tau_keeps_its_safety_factor(family: str, device: torch.device) -> None:
    """A fresh measurement of the logit error (as measure_tau.py does) stays within TAU / 2: the 4x margin has
    not shrunk below 2x (a new kernel or library version that rounds worse must re-measure TAU)."""
    ids = torch.randint(0, VOCAB, (8, 64), generator=torch.Generator().manual_seed(7)).to(device)
    for dtype in dtypes_for(device):
        model = get_model(family, 1, dtype, device)
        full, cached, _ = logits_errors(model, ids)
        tau = TAU[(device.type, dtype)]
        assert max(full, cached) <= tau / 2, f"{family} {dtype}: logit error {max(full, cached):.3g}, tau {tau:.3g}"


def test_float32_near_ties_are_rare_on_cpu() -> None:
    """The tiny models' wide init keeps float32 ties rare: few positions have a float64 top-2 gap within TAU."""
    ids = torch.randint(0, VOCAB, (8, 64), generator=torch.Generator().manual_seed(8))
    tau = TAU[("cpu", torch.float32)]
    for family in LEAN_FAMILIES:
        *_, exact = logits_errors(get_model(family, 2, torch.float32, "cpu"), ids)
        top2 = exact.topk(2, dim=-1).values
        close = float(((top2[..., 0] - top2[..., 1]) <= tau).double().mean())
        assert close < 0.005, f"{family}: {close:.2%} of positions have a top-2 gap within tau={tau:.3g}"


def test_each_xdist_workers_ledger_reaches_the_summary() -> None:
    """Under xdist each worker rations its own session; the controller prints every worker's ledger, which the
    controller's own (empty) one would not show."""
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "each",
                          "correctness/test_equivalence.py", "-k", "kv_dynamic"], cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:]
    workers = [line for line in run.stdout.splitlines() if "] correctness near-ties: float32:" in line]
    assert len(workers) == 2 and all(line.startswith("[gw") for line in workers), run.stdout[-2000:]
