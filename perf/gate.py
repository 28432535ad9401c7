"""The gate's judge: statistics over paired A/B rounds, with no torch import (tested on synthetic samples).

Each benchmark is timed in rounds of two generations, the base arm then this tree, in one process, so what makes
one process faster or slower than another cancels inside a round. The effect is the median of the per-round
ratios, with a seeded bootstrap 95% CI that resamples rounds. A row regresses when the effect is past its noise
band AND the CI excludes 1; rounds are added until the CI settles the verdict (`settled`). Peak memory is judged
apart. Design, defaults and the evidence behind them: docs/gate.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEVICE = "device"  # CUDA-graph loops: the GPU's time
HOST = "host"  # eager, default-compile and HF loops: bound by the host's launches
CLASSES = (DEVICE, HOST)

BAR = {DEVICE: 0.03, HOST: 0.08}  # the smallest slowdown the gate must flag, per class
# Below the smallest change the gate must catch in the class (BAR) by a margin
# that the noise of a row's effect rarely crosses, and above what A/A runs show (docs/gate.md). bands.json
# (calibrate, below) replaces them per row.
DEFAULT_BAND = {DEVICE: 0.02, HOST: 0.05}
BAND_FLOOR = {DEVICE: 0.02, HOST: 0.03}  # the narrowest band a calibration may give: few A/A runs under-sample noise
BAND_CAP = 0.08  # above this a 10% slowdown could hide inside the band: such a band is refused, not used
SAFETY = 1.5  # calibrated band = SAFETY x the widest A/A effect seen

# Sequential rounds: look after FIRST_ROUNDS, then every STEP_ROUNDS, stop once settled or at MAX_ROUNDS (the
# --ab-rounds default). A regression or improvement is called only on >= FLAG_ROUNDS rounds: a few rounds settle
# "no change" quickly, but one lucky look must not raise an alarm.
FIRST_ROUNDS = 5
STEP_ROUNDS = 5
FLAG_ROUNDS = 15
MAX_ROUNDS = 45

MEMORY_SHARE = 0.05  # peak memory regresses when it rises by more than 5% ...
MEMORY_MIN_BYTES = 1 << 20  # ... and by more than 1 MiB (allocator rounding)
RUNNER_TOLERANCE = 0.08  # runner check: base arm today vs its stored times, CUDA-graph rows (cross-process drift)
RESAMPLES = 2000  # bootstrap resamples: the 2.5%/97.5% quantiles are stable to well under 1% of the ratio

REGRESSED = "regressed"
IMPROVED = "improved"
WITHIN_NOISE = "within noise"
NEW = "new"  # the base arm has no such variant
MEMORY_REGRESSED = "regressed (memory)"
MEMORY_OK = "ok"


@dataclass(frozen=True)
class Verdict:
    name: str
    status: str  # one of the status strings above
    klass: str
    ratio: float | None = None  # median over rounds of candidate_i / base_i
    ci_low: float | None = None  # bootstrap 95% CI on ratio
    ci_high: float | None = None
    band: float | None = None  # relative noise band it was judged against, 0.03 = +-3%
    band_source: str | None = None  # "bands.json" or "default"
    memory_ratio: float | None = None  # peak allocated candidate / base (None: not measured)
    memory_delta: int | None = None  # bytes
    memory_status: str | None = None  # MEMORY_REGRESSED, MEMORY_OK or None (not measured)
    rounds: int | None = None  # paired rounds judged

    @property
    def regressed(self) -> bool:
        return self.status == REGRESSED or self.memory_status == MEMORY_REGRESSED


def judge(name: str, base_samples: Sequence[float] | None, cur_samples: Sequence[float], *, klass: str,
          band: float | None = None, base_mem: int | None = None, cur_mem: int | None = None,
          seed: int = 0) -> Verdict:
    """Judge one benchmark from its paired rounds: base_samples[i] and cur_samples[i] were timed back to back.
    ``base_samples=None``: the base arm has no such variant (NEW)."""
    _check_class(name, klass)
    if base_samples is None:
        return Verdict(name, NEW, klass, rounds=len(cur_samples))
    base = _checked(name, "base", base_samples)
    cur = _checked(name, "candidate", cur_samples)
    if len(base) != len(cur):
        raise ValueError(f"{name}: paired samples need one base time per round, got {len(base)} base and "
                         f"{len(cur)} candidate times")
    if band is None:
        band, source = DEFAULT_BAND[klass], "default"
    else:
        check_band(name, band)
        source = "bands.json"
    per_round = [c / b for b, c in zip(base, cur, strict=True)]
    ratio = statistics.median(per_round)
    low, high = _bootstrap_ci(per_round, seed)
    if ratio > 1 + band and low > 1:
        status = REGRESSED
    elif ratio < 1 / (1 + band) and high < 1:
        status = IMPROVED
    else:
        status = WITHIN_NOISE

    mem_ratio = mem_delta = mem_status = None
    if base_mem is not None and cur_mem is not None:
        for what, value in (("base", base_mem), ("candidate", cur_mem)):
            if value < 0:
                raise ValueError(f"{name}: {what} peak memory must be >= 0 bytes, got {value!r}")
        mem_delta = cur_mem - base_mem
        mem_ratio = cur_mem / base_mem if base_mem else None
        rose = mem_delta > MEMORY_SHARE * base_mem and mem_delta > MEMORY_MIN_BYTES
        mem_status = MEMORY_REGRESSED if rose else MEMORY_OK
    return Verdict(name, status, klass, ratio, low, high, band, source, mem_ratio, mem_delta, mem_status, len(cur))


def settled_peaks(measure: Callable[[int], int]) -> tuple[int, int]:
    """(base, candidate) peak bytes from ``measure(arm)`` (0 the base arm, 1 the candidate), one generation a call,
    arms alternating. The first pass is dropped: the first generation after the clean slate allocates some memory
    once. Where the second pass's arms differ by more than MEMORY_MIN_BYTES, two more passes run and each arm keeps
    the median of its three: one generation's peak can miss or gain one cuBLAS workspace (33 MiB on an H200; in an
    A/A run on 2026-11-30 lean_graph b1's base arm read 106.3 MiB against 139.3 in every other arm), while a real
    change of the code moves every pass alike."""
    passes = [(measure(0), measure(1)) for _ in range(2)][1:]
    if abs(passes[0][1] - passes[0][0]) > MEMORY_MIN_BYTES:
        passes += [(measure(0), measure(1)) for _ in range(2)]
    base, candidate = zip(*passes, strict=True)
    return int(statistics.median(base)), int(statistics.median(candidate))


def settled(v: Verdict) -> bool:
    """More rounds are not needed: a change called on >= FLAG_ROUNDS rounds, or no change with the whole CI inside
    +-(midway from the band to BAR): a change the gate must flag is then ruled out with a margin."""
    if v.status == NEW:
        return True
    if v.status in (REGRESSED, IMPROVED):
        return v.rounds >= FLAG_ROUNDS
    edge = max(v.band, (v.band + BAR[v.klass]) / 2)
    return 1 / (1 + edge) < v.ci_low and v.ci_high < 1 + edge


def sequential_rounds(verdict: Callable[[], Verdict], one_round: Callable[[], object], done: int,
                      most: int = MAX_ROUNDS) -> int:
    """Run STEP_ROUNDS more rounds at a time while ``verdict()`` (judged on every round so far) is not ``settled``,
    up to ``most`` rounds in all; ``done`` rounds ran already. Returns the rounds added."""
    added = 0
    while done + added < most and not settled(verdict()):
        for _ in range(min(STEP_ROUNDS, most - done - added)):
            one_round()
            added += 1
    return added


def check_band(name: str, band: object) -> None:
    if isinstance(band, bool) or not isinstance(band, int | float) or not (0 <= band <= BAND_CAP):
        raise ValueError(f"{name}: a noise band must be a share in [0, {BAND_CAP}] (a wider band could hide a 10% "
                         f"slowdown), got {band!r}")


def gate_failed(verdicts: Iterable[Verdict]) -> bool:
    """True if any benchmark regressed in time or in peak memory."""
    return any(v.regressed for v in verdicts)


# --- The runner check: the base arm today against its stored times ------------------------------------------

@dataclass(frozen=True)
class RunnerCheck:
    rows: int  # rows of the class compared
    ratio: float | None  # median over those rows of median(today) / median(stored)
    low: float | None
    high: float | None
    klass: str = DEVICE  # CUDA-graph rows judge the card; host-bound rows only describe the host

    @property
    def as_recorded(self) -> bool:
        return self.ratio is not None and abs(math.log(self.ratio)) <= math.log1p(RUNNER_TOLERANCE)

    def line(self) -> str:
        what = "CUDA-graph rows" if self.klass == DEVICE else "host-bound rows"
        if self.ratio is None:
            return f"no {what[:-1]} in common with the stored baseline: nothing to compare"
        spread = f"median {_pct(self.ratio)} over {self.rows} {what} ({_pct(self.low)} .. {_pct(self.high)})"
        if self.klass == HOST:
            return (f"{spread}. Reported, not judged: these rows move by tens of percent from one machine to another, "
                    f"and where the host is slow the gate takes longer, its verdicts paired all the same")
        if self.as_recorded:
            return f"as recorded: {spread}"
        side = "SLOWER" if self.ratio > 1 else "FASTER"
        return (f"this runner runs {side} than when the baseline was recorded: {spread}, beyond "
                f"±{RUNNER_TOLERANCE:.0%}. Clocks, thermals or a co-tenant? The verdicts below still hold: both arms "
                f"ran here, round by round")


def runner_check(today: Mapping[str, Sequence[float]], stored: Mapping[str, Sequence[float]],
                 classes: Mapping[str, str], klass: str = DEVICE) -> RunnerCheck:
    """Compare the base arm's times today with the stored baseline's times of the same code, row by row, over the
    rows of one class: DEVICE, the runner check proper; HOST, how fast this runner's host is against the recording's."""
    ratios = sorted(statistics.median(today[n]) / statistics.median(stored[n])
                    for n in today if n in stored and classes.get(n) == klass and today[n] and stored[n])
    if not ratios:
        return RunnerCheck(0, None, None, None, klass)
    return RunnerCheck(len(ratios), statistics.median(ratios), ratios[0], ratios[-1], klass)


# --- Calibration: noise bands from A/A runs ------------------------------------------------------------------

def calibrate(sessions: Sequence[Mapping[str, tuple[Sequence[float], Sequence[float]]]],
              classes: Mapping[str, str]) -> dict[str, float]:
    """A noise band per benchmark from >= 2 A/A runs (both arms the same code), each ``{name: (base samples,
    candidate samples)}``: max(BAND_FLOOR, SAFETY x the widest |log effect|). A benchmark seen once gets none.
    ValueError if a band comes out wider than BAND_CAP: that row is too noisy to gate, fix its noise first."""
    if len(sessions) < 2:
        raise ValueError(f"calibration needs >= 2 A/A runs, got {len(sessions)}")
    logs: dict[str, list[float]] = {}
    for session in sessions:
        for name, (base, cur) in session.items():
            _check_class(name, classes.get(name))
            logs.setdefault(name, []).append(abs(math.log(judge(name, base, cur, klass=classes[name]).ratio)))
    bands = {name: max(BAND_FLOOR[classes[name]], math.expm1(SAFETY * max(values)))
             for name, values in logs.items() if len(values) >= 2}
    wide = sorted(f"{name} ±{band:.1%}" for name, band in bands.items() if band > BAND_CAP)
    if wide:
        raise ValueError(f"too noisy to gate (band > ±{BAND_CAP:.0%}): {', '.join(wide)}")
    return bands


def pairs_from_json(report: Mapping) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, str]]:
    """The A/B pairs and classes of one --benchmark-json file of a gate run."""
    pairs, classes = {}, {}
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if info.get("injected_slowdown"):
            raise ValueError(f"{bench['name']}: has an injected slowdown; an A/A run must not")
        if info.get("base_s") and info.get("candidate_s"):
            pairs[bench["name"]] = (info["base_s"], info["candidate_s"])
            classes[bench["name"]] = info.get("klass")
    return pairs, classes


# --- The verdict table ---------------------------------------------------------------------------------------

def cells(v: Verdict) -> dict[str, str]:
    """A verdict's table cells: verdict, effect, 95% CI, noise band, memory Δ, rounds."""
    status = v.status + (f"; {MEMORY_REGRESSED}" if v.memory_status == MEMORY_REGRESSED else "")
    if v.ratio is None:
        effect = ci = band = "-"
    else:
        effect, ci = _pct(v.ratio), f"{_pct(v.ci_low)} .. {_pct(v.ci_high)}"
        band = f"±{v.band * 100:.1f}% {v.band_source}"
    memory = "-" if v.memory_status is None else _memory(v)
    return {"verdict": status, "effect": effect, "95% CI": ci, "noise band": band, "memory Δ": memory,
            "rounds": str(v.rounds or "-")}


def format_table(verdicts: Iterable[Verdict]) -> str:
    """Markdown: benchmark | verdict | effect | 95% CI | noise band | memory Δ | rounds."""
    lines = ["| benchmark | verdict | effect | 95% CI | noise band | memory Δ | rounds |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {v.name} | " + " | ".join(cells(v).values()) + " |" for v in verdicts]
    return "\n".join(lines) + "\n"


def _check_class(name: str, klass: str) -> None:
    if klass not in CLASSES:
        raise ValueError(f"{name}: unknown benchmark class {klass!r}, expected one of {CLASSES}")


def _checked(name: str, what: str, samples: Sequence[float]) -> list[float]:
    if not samples:
        raise ValueError(f"{name}: {what} samples are empty")
    for t in samples:
        if isinstance(t, bool) or not isinstance(t, int | float) or not (math.isfinite(t) and t > 0):
            raise ValueError(f"{name}: {what} times must be finite and > 0, got {t!r}")
    return list(samples)


def _bootstrap_ci(per_round: list[float], seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the median per-round ratio, resampling rounds; seeded: reproducible."""
    rng = random.Random(seed)
    medians = [statistics.median(rng.choices(per_round, k=len(per_round))) for _ in range(RESAMPLES)]
    cuts = statistics.quantiles(medians, n=40, method="inclusive")  # cut points at 1/40 .. 39/40
    return cuts[0], cuts[-1]


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{(ratio - 1) * 100:+.1f}%"


def _memory(v: Verdict) -> str:
    mib = f"{v.memory_delta / 2**20:+.1f} MiB"
    return mib if v.memory_ratio is None else f"{_pct(v.memory_ratio)} ({mib})"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m perf.gate calibrate AA1.json AA2.json ... [--out perf/baselines/<card>/bands.json]``"""
    parser = argparse.ArgumentParser(prog="python -m perf.gate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="noise bands from >= 2 A/A runs' --benchmark-json files")
    cal.add_argument("reports", nargs="+", help="--benchmark-json files of `pytest perf --benchmark-compare "
                                                "--ab-base=HEAD` on a clean checkout (A/A runs)")
    cal.add_argument("--out", help="write the bands here (perf/baselines/<card>/bands.json); default: stdout")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.reports]
    dupes = sorted({str(p) for p in paths if sum(q.resolve() == p.resolve() for q in paths) > 1})
    if dupes:
        parser.error(f"the same run given twice would measure no noise: {', '.join(dupes)}")
    if args.out and not Path(args.out).parent.is_dir():
        parser.error(f"--out {args.out}: folder {Path(args.out).parent} does not exist")
    sessions, classes = [], {}
    for path in paths:
        try:
            report = json.loads(path.read_text())
            if not isinstance(report, dict):
                raise ValueError("not a pytest-benchmark JSON object")
            pairs, pair_classes = pairs_from_json(report)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            parser.error(f"{path}: cannot read an A/A run from it: {e}")
        if not pairs:
            parser.error(f"{path}: no A/B rounds in it (was it written by a gate run with --benchmark-json?)")
        sessions.append(pairs)
        classes.update(pair_classes)
    try:
        bands = calibrate(sessions, classes)
    except ValueError as e:
        parser.error(str(e))
    text = json.dumps(dict(sorted(bands.items())), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
