"""The gate's judge on synthetic paired rounds (no torch, no GPU): seeded noise, shared swings within a round."""

import json
import math
import random
import statistics

import pytest

from perf import gate
from perf.gate import (
    DEVICE,
    HOST,
    IMPROVED,
    MEMORY_OK,
    MEMORY_REGRESSED,
    NEW,
    REGRESSED,
    WITHIN_NOISE,
    format_table,
    gate_failed,
    judge,
)

SEEDS = range(20)
BENCH = 0.050  # true median time of the benchmark, seconds
GIB = 1 << 30


def ab_session(seed: int, slowdown: float, rounds: int = 15, klass: str = HOST) -> tuple[list[float], list[float]]:
    """Paired rounds of one process: each round's state (a slow spell, the process's own speed: -30%..+50%) hits
    both arms alike, up to a small per-generation residual; the candidate is `slowdown` x slower."""
    rng = random.Random(seed)
    sigma = 0.015 if klass == HOST else 0.005
    base, cur = [], []
    for _ in range(rounds):
        common = BENCH * rng.uniform(0.7, 1.5)
        base.append(common * math.exp(rng.gauss(0.0, sigma)))
        cur.append(common * slowdown * math.exp(rng.gauss(0.0, sigma)))
    return base, cur


def statuses(klass: str, slowdown: float, **kwargs) -> list[str]:
    return [judge("b", *ab_session(seed, slowdown, klass=klass), klass=klass, **kwargs).status for seed in SEEDS]


@pytest.mark.parametrize("klass", [DEVICE, HOST])
def test_unchanged_tree_raises_no_alarm(klass: str) -> None:
    assert statuses(klass, 1.0) == [WITHIN_NOISE] * len(SEEDS)


@pytest.mark.parametrize("klass, slowdown", [(DEVICE, 1.03), (HOST, 1.08), (HOST, 1.10)])
def test_the_smallest_required_slowdown_is_flagged_every_time(klass: str, slowdown: float) -> None:
    assert statuses(klass, slowdown) == [REGRESSED] * len(SEEDS)


@pytest.mark.parametrize("klass", [DEVICE, HOST])
def test_ten_percent_speedup_is_improved(klass: str) -> None:
    assert statuses(klass, 1 / 1.10) == [IMPROVED] * len(SEEDS)


def test_a_shift_beyond_the_band_that_the_rounds_do_not_resolve_is_within_noise() -> None:
    # median +8% but the per-round ratios straddle 1: the CI reaches below 1
    wide = [0.97, 1.14, 0.99, 1.12, 1.08, 1.21, 1.02, 0.92, 1.10]
    v = judge("b", [1.0] * len(wide), wide, klass=HOST)
    assert v.status == WITHIN_NOISE and v.ci_low < 1 < v.ratio - 0.05


def test_the_statistic_is_the_median_of_per_round_ratios() -> None:
    """Slow spells (x1.5) of the whole host: in 3 of 15 rounds a spell ended between the base and the candidate.
    Each arm's median then falls in a different state; the per-round ratios still carry the true +10%."""
    for seed in range(5):
        rng = random.Random(seed)
        states = [(1.0, 1.0)] * 7 + [(1.5, 1.5)] * 5 + [(1.5, 1.0)] * 3
        rng.shuffle(states)
        base = [BENCH * b * math.exp(rng.gauss(0.0, 0.01)) for b, _ in states]
        cur = [BENCH * c * 1.10 * math.exp(rng.gauss(0.0, 0.01)) for _, c in states]
        assert statistics.median(cur) / statistics.median(base) < 0.8  # a ratio of medians reads a *speedup*
        v = judge("b", base, cur, klass=HOST)
        assert v.status == REGRESSED and v.ratio == pytest.approx(1.10, abs=0.02)


def test_verdict_is_reproducible_for_a_seed() -> None:
    base, cur = ab_session(3, 1.04)
    assert judge("b", base, cur, klass=HOST, seed=7) == judge("b", base, cur, klass=HOST, seed=7)


@pytest.mark.parametrize("cur_mem, expected", [(int(2.2 * GIB), MEMORY_REGRESSED), (int(2.08 * GIB), MEMORY_OK),
                                               (2 * GIB + (1 << 19), MEMORY_OK)])
def test_memory_rise_is_judged_apart_from_time(cur_mem: int, expected: str) -> None:
    v = judge("b", *ab_session(0, 1.0), klass=HOST, base_mem=2 * GIB, cur_mem=cur_mem)
    assert (v.status, v.memory_status) == (WITHIN_NOISE, expected)
    assert gate_failed([v]) is (expected == MEMORY_REGRESSED)


def test_a_small_absolute_rise_is_not_a_memory_regression() -> None:
    v = judge("b", [1.0] * 3, [1.0] * 3, klass=DEVICE, base_mem=10 << 20, cur_mem=(10 << 20) + (900 << 10))
    assert v.memory_status == MEMORY_OK  # +8.8% but under 1 MiB: allocator rounding


def test_new_variant_is_new_and_fails_nothing() -> None:
    v = judge("b", None, [1.0, 1.0], klass=DEVICE)
    assert v.status == NEW and not gate_failed([v]) and gate.settled(v)


def test_format_table_shows_effect_ci_band_memory_and_rounds() -> None:
    verdicts = [judge("graph", [1.0] * 5, [1.1] * 5, klass=DEVICE, base_mem=GIB, cur_mem=GIB + GIB // 10),
                judge("eager", [2.0] * 5, [1.8] * 5, klass=HOST, band=0.025),
                judge("added", None, [1.0], klass=DEVICE)]
    lines = format_table(verdicts).splitlines()
    assert lines[0] == "| benchmark | verdict | effect | 95% CI | noise band | memory Δ | rounds |"
    assert lines[2] == (f"| graph | {REGRESSED}; {MEMORY_REGRESSED} | +10.0% | +10.0% .. +10.0% | ±2.0% default"
                        " | +10.0% (+102.4 MiB) | 5 |")
    assert lines[3] == "| eager | improved | -10.0% | -10.0% .. -10.0% | ±2.5% bands.json | - | 5 |"
    assert lines[4] == "| added | new | - | - | - | - | 1 |"


@pytest.mark.parametrize("kwargs, message", [
    ({"base_samples": []}, "base samples are empty"),
    ({"cur_samples": [1.0, 0.0]}, "finite and > 0"),
    ({"base_samples": [-1.0, 1.0]}, "finite and > 0"),
    ({"cur_samples": [math.nan, 1.0]}, "finite and > 0"),
    ({"cur_samples": [1.0]}, "one base time per round"),
    ({"klass": "gpu"}, "unknown benchmark class"),
    ({"band": -0.01}, "noise band"),
    ({"band": 0.2}, "noise band"),
    ({"band": math.inf}, "noise band"),
    ({"base_mem": -1, "cur_mem": 1}, "peak memory"),
])
def test_judge_rejects_bad_input(kwargs: dict, message: str) -> None:
    args = {"base_samples": [1.0, 1.1], "cur_samples": [1.0, 1.1], "klass": DEVICE, **kwargs}
    with pytest.raises(ValueError, match=message):
        judge("b", args.pop("base_samples"), args.pop("cur_samples"), **args)


# --- sequential rounds: stop once settled ---------------------------------------------------------------------

def run_rows(slowdown: float, sigma: float, seeds=range(40), most: int = gate.MAX_ROUNDS
             ) -> list[gate.Verdict]:
    """Rows judged the way test_perf.py runs them: FIRST_ROUNDS rounds, then sequential_rounds."""
    verdicts = []
    for seed in seeds:
        rng = random.Random(seed)
        base: list[float] = []
        cur: list[float] = []

        def one_round() -> None:
            common = BENCH * rng.uniform(0.6, 1.6)  # noqa: B023 (each row its own generator)
            base.append(common)  # noqa: B023
            cur.append(common * slowdown * math.exp(rng.gauss(0.0, sigma)))  # noqa: B023

        for _ in range(gate.FIRST_ROUNDS):
            one_round()
        gate.sequential_rounds(lambda: judge("b", base, cur, klass=HOST), one_round, gate.FIRST_ROUNDS, most)  # noqa: B023
        verdicts.append(judge("b", base, cur, klass=HOST))
    return verdicts


def test_quiet_unchanged_rows_stop_at_the_first_look() -> None:
    verdicts = run_rows(1.0, sigma=0.005)
    assert [v.status for v in verdicts] == [WITHIN_NOISE] * 40
    assert {v.rounds for v in verdicts} == {gate.FIRST_ROUNDS}


def test_a_change_is_called_only_on_enough_rounds() -> None:
    verdicts = run_rows(1.10, sigma=0.005)
    assert [v.status for v in verdicts] == [REGRESSED] * 40
    assert {v.rounds for v in verdicts} == {gate.FLAG_ROUNDS}  # past the band at 5 rounds already, confirmed at 15


def test_noisy_rows_get_more_rounds_and_a_ten_percent_slowdown_is_still_caught() -> None:
    # 12% of noise per round (a busy host): 15 rounds alone would miss some of these
    verdicts = run_rows(1.10, sigma=0.12)
    assert [v.status for v in verdicts].count(REGRESSED) >= 39
    assert max(v.rounds for v in verdicts) > gate.FLAG_ROUNDS


def test_sequential_looks_raise_no_alarm_on_unchanged_rows() -> None:
    for sigma in (0.005, 0.03, 0.06):
        assert [v.status for v in run_rows(1.0, sigma=sigma)].count(REGRESSED) == 0, sigma


def test_a_slowdown_at_the_bar_is_rarely_let_go_early() -> None:
    # +8% in a host row with 3% of noise per round: the first look must not settle it as "no change"
    verdicts = run_rows(1.08, sigma=0.03, seeds=range(100))
    assert [v.status for v in verdicts].count(REGRESSED) >= 95


def test_rounds_never_pass_the_most() -> None:
    verdicts = run_rows(1.04, sigma=0.12, seeds=range(10), most=20)
    assert max(v.rounds for v in verdicts) == 20


def test_settled_needs_the_whole_ci_inside_the_band_and_bar_midway() -> None:
    inside = judge("b", [1.0] * 5, [1.0, 1.06, 0.95, 1.0, 1.005], klass=HOST)  # midway: +-6.5%
    assert not gate.settled(judge("b", [1.0] * 5, [1.0, 1.07, 0.95, 1.0, 1.005], klass=HOST))
    straddling = judge("b", [1.0] * 5, [0.97, 1.12, 0.99, 1.08, 1.02], klass=HOST)
    assert gate.settled(inside) and not gate.settled(straddling)
    early = judge("b", [1.0] * 5, [1.2] * 5, klass=HOST)
    assert early.status == REGRESSED and not gate.settled(early)  # 5 rounds: confirm first


# --- the runner check ----------------------------------------------------------------------------------------

def test_runner_check_reads_the_cuda_graph_rows_only() -> None:
    today = {"g1": [1.0] * 3, "g2": [2.2] * 3, "h": [9.0] * 3}
    stored = {"g1": [1.0] * 3, "g2": [2.0] * 3, "h": [1.0] * 3, "other": [1.0]}
    check = gate.runner_check(today, stored, {"g1": DEVICE, "g2": DEVICE, "h": HOST})
    assert (check.rows, check.low, check.high) == (2, 1.0, pytest.approx(1.1))
    assert check.ratio == pytest.approx(1.05) and check.as_recorded and check.line().startswith("as recorded")


@pytest.mark.parametrize("factor, word", [(1.2, "SLOWER"), (0.8, "FASTER")])
def test_runner_check_names_a_runner_off_its_recorded_speed(factor: float, word: str) -> None:
    check = gate.runner_check({"g": [factor]}, {"g": [1.0]}, {"g": DEVICE})
    assert not check.as_recorded and f"runs {word} than when the baseline was recorded" in check.line()


def test_the_hosts_speed_is_told_from_the_host_bound_rows_and_never_judged() -> None:
    today = {"g": [1.0], "h1": [1.5], "h2": [2.0]}
    stored = {"g": [1.0], "h1": [1.0], "h2": [1.0]}
    check = gate.runner_check(today, stored, {"g": DEVICE, "h1": HOST, "h2": HOST}, HOST)
    assert (check.rows, check.low, check.high) == (2, 1.5, 2.0)
    assert check.line().startswith("median +75.0% over 2 host-bound rows") and "Reported, not judged" in check.line()


def test_runner_check_without_common_rows_says_so() -> None:
    check = gate.runner_check({"g": [1.0]}, {"x": [1.0]}, {"g": DEVICE})
    assert check.ratio is None and "nothing to compare" in check.line()


# --- calibration: bands from A/A runs -----------------------------------------------------------------------

def _aa(ratios: list[float]) -> list[dict]:
    return [{"b": ([1.0] * 5, [r] * 5)} for r in ratios]


def test_calibrate() -> None:
    assert gate.calibrate(_aa([1.001, 0.998, 1.004]), {"b": DEVICE}) == {"b": gate.BAND_FLOOR[DEVICE]}
    bands = gate.calibrate(_aa([1.01, 1 / 1.03, 1.02]), {"b": HOST})  # widest A/A effect 3%
    assert bands["b"] == pytest.approx(1.03**gate.SAFETY - 1)
    once = [{"b": ([1.0], [1.0]), "once": ([1.0], [1.0])}, {"b": ([1.0], [1.0])}]
    assert set(gate.calibrate(once, {"b": DEVICE, "once": DEVICE})) == {"b"}


@pytest.mark.parametrize("sessions, classes, message", [
    (_aa([1.0]), {"b": DEVICE}, ">= 2 A/A runs"),
    (_aa([1.0, 1.0]), {"b": "gpu"}, "unknown benchmark class"),
    (_aa([1.0, 1.07]), {"b": HOST}, "too noisy to gate"),
    ([{"b": ([1.0] * 3, [1.0] * 2)}] * 2, {"b": DEVICE}, "one base time per round"),
])
def test_calibrate_rejects(sessions: list, classes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gate.calibrate(sessions, classes)


def _run_json(ratio: float, **extra) -> dict:
    info = {"klass": HOST, "base_s": [1.0, 1.0], "candidate_s": [ratio, ratio], **extra}
    return {"benchmarks": [{"name": "b", "extra_info": info}]}


def test_calibrate_command_writes_bands(tmp_path) -> None:
    paths = [tmp_path / "aa0.json", tmp_path / "aa1.json"]
    for path, ratio in zip(paths, [1.0, 1.04], strict=True):
        path.write_text(json.dumps(_run_json(ratio)))
    out = tmp_path / "bands.json"
    assert gate.main(["calibrate", *map(str, paths), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"b": pytest.approx(1.04**gate.SAFETY - 1)}


@pytest.mark.parametrize("case, message", [
    ("missing", "cannot read an A/A run"),
    ("garbage", "cannot read an A/A run"),
    ("directory", "cannot read an A/A run"),
    ("list", "not a pytest-benchmark JSON object"),
    ("no rounds", "no A/B rounds in it"),
    ("injected", "injected slowdown"),
    ("twice", "the same run given twice"),
    ("out folder", "does not exist"),
])
def test_calibrate_command_errors_are_one_line(case: str, message: str, tmp_path, capsys) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_run_json(1.0)))
    bad = tmp_path / "bad.json"
    out = []
    if case == "garbage":
        bad.write_text("{not json")
    elif case == "directory":
        bad.mkdir()
    elif case == "list":
        bad.write_text("[]")
    elif case == "no rounds":
        bad.write_text(json.dumps({"benchmarks": [{"name": "b", "extra_info": {}}]}))
    elif case == "injected":
        bad.write_text(json.dumps(_run_json(1.1, injected_slowdown=0.1)))
    elif case == "twice":
        bad = good
    elif case == "out folder":
        bad.write_text(json.dumps(_run_json(1.01)))
        out = ["--out", str(tmp_path / "nope" / "bands.json")]
    with pytest.raises(SystemExit) as e:
        gate.main(["calibrate", str(good), str(bad), *out])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


MIB = 1 << 20


def peaks_run(values: list[int]) -> tuple[tuple[int, int], int]:
    """settled_peaks over a list of generations' peaks (B C B C ...): (its result, the generations it ran)."""
    ran = iter(values)
    count = [0]

    def measure(arm: int) -> int:
        count[0] += 1
        return next(ran)

    return gate.settled_peaks(measure), count[0]


def test_peaks_drop_the_first_pass_and_stop_where_the_arms_agree() -> None:
    # pipelined on an H200: the first generation after the clean slate allocated 790 MiB once.
    assert peaks_run([1089 * MIB, 299 * MIB, 299 * MIB, 299 * MIB]) == ((299 * MIB, 299 * MIB), 4)


def test_one_generation_short_of_a_workspace_is_outvoted() -> None:
    # The A/A false alarm of 2026-11-30: lean_graph b1's base arm read 106.3 MiB once, 139.3 in every other arm.
    typical, short = 139 * MIB, 106 * MIB
    assert peaks_run([typical, typical, short, typical, typical, typical, typical, typical]) == ((typical, typical), 8)
    assert peaks_run([typical, typical, typical, short, typical, typical, typical, typical]) == ((typical, typical), 8)


def test_a_real_rise_in_memory_survives_the_extra_passes() -> None:
    # cache_twice_as_long at b1: +7.1 MiB in every generation of the candidate arm.
    base, grown = 100 * MIB, 107 * MIB
    (b, c), ran = peaks_run([base, grown] * 4)
    assert (b, c, ran) == (base, grown, 8)
    assert gate.judge("x", [1.0] * 5, [1.0] * 5, klass=gate.DEVICE, base_mem=b, cur_mem=c).regressed
