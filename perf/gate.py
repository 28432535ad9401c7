"""The performance gate: judge one perf session, benchmark by benchmark.

Two modes. **A/B in one process (the gate CI runs, ``--ab-base=REF``):** the perf session imports REF's
``generators/`` as a second package and times both arms interleaved, round by round, in the same process
(perf/ab.py, perf/test_perf.py), so whatever makes one process faster or slower than another cancels. Each
benchmark is judged on its own pair: ``judge(..., paired=True)`` (no probe; the statistic is the median of the
per-round ratios and its bootstrap resamples rounds, so a slow spell that hits both arms of a round cancels inside
that round's ratio) against the A/B noise band
(``DEFAULT_BAND_AB``, or per benchmark from ``bands_ab.json`` beside the baselines, made by
``calibrate_ab_bands`` from A/A sessions: on a clean checkout, >= 5 times
``python -m pytest perf/test_perf.py --perf-grid=gate --ab-base=HEAD --benchmark-json=aaN.json``, then
``python -m perf.gate calibrate-ab aa*.json --out perf/baselines/<gpu-model>/bands_ab.json``; ``--ab-base=HEAD``
imports a second copy like a pull request's run does, ``--ab-base=self`` reuses this one and is cheaper). Peak
memory is each arm's peak from a fresh session, measured in the same process (perf/ab.py says why it is
measured after the timed rounds, not during them).

**Stored baseline (``--benchmark-compare``, kept for users who don't pass ``--ab-base``):** the session is
compared with a baseline recorded by another process. Measured between separate processes on one H200
(perf/RESULTS.md, "The perf gate on one GPU: first evidence"):

* CUDA-graph loops ("device" class): untouched rows moved -7.8%..+5.4%, so their absolute time is a usable but
  coarse signal; the default band is +-6% (``DEFAULT_BAND``), per benchmark from ``bands.json`` where stored
  (``python -m perf.gate calibrate S1.json S2.json ... --out perf/baselines/<gpu-model>/bands.json``).
* Eager, default-``torch.compile`` and HF loops ("host" class) are CPU/launch bound and moved -44%..+100%: the
  whole process is faster or slower. They are judged on ``time / host-probe median of the same session``, but
  **that normalisation is refuted by the data** (the probe moved +-20% in unrelated directions, 7 of 16 host
  rows cried wolf on an unchanged rerun). So without a calibrated band a host-class row's time is reported
  TOO_NOISY and never fails this mode (its peak memory is still judged); the probe and the normalisation stay
  because ``calibrate_bands`` and a calibrated host band use them. Gate host-class rows with the A/B mode, which
  needs no probe.

Statistic: stored baseline ``r = median(current) / median(baseline)``; A/B ``r = median over rounds i of
current_i / baseline_i``, because a slow spell common to both arms of one round cancels inside that round's ratio
but not between two medians taken over all rounds. Either way with a seeded bootstrap 95% confidence interval (A/B:
rounds resampled, each round's pair kept together). A time verdict needs *both* conditions:

* ``r`` beyond the benchmark's noise band. The band is the noise of ``r`` between reruns of an unchanged tree
  (``calibrate_bands`` for stored baselines, ``calibrate_ab_bands`` for A/A sessions); a CI cannot see
  session-to-session noise.
* a CI that excludes 1, i.e. the samples really resolve the shift (guards against a few wild samples).

In A/B mode a row that meets neither verdict's conditions but whose CI still reaches past a band edge is
``undecided``: perf/test_perf.py times more paired rounds for it (``AB_EXTENSIONS``) before the verdict is final.

Peak memory is judged separately: a rise of more than ``MEMORY_SHARE`` *and* more than ``MEMORY_MIN_BYTES``.
"""

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DEVICE = "device"  # CUDA-graph loops: judged on absolute time
HOST = "host"  # eager / default-compile loops: stored mode divides their time by the host probe
CLASSES = (DEVICE, HOST)

# Smallest band a calibration may yield: a handful of quiet calibration sessions underestimates the spread.
BAND_FLOOR = {DEVICE: 0.02, HOST: 0.03}
# Stored mode, when bands.json has no band for the benchmark. Untouched CUDA-graph rows drifted -7.8%..+5.4%
# between processes on an H200 and +-3% flagged the +5.4%: +-6% clears every slowdown seen (only slowdowns fail
# the gate); the -7.8% would still read "improved". Host rows moved -44%..+100% and the probe did not track it
# (7 of 16 cried wolf at +-5%): +-55%, above BAND_CAP, so judge() reports them TOO_NOISY.
DEFAULT_BAND = {DEVICE: 0.06, HOST: 0.55}
# A/B mode (both arms in one process): half the smallest shift the gate must catch in the class (5% in a
# CUDA-graph loop, 10% in any loop), so the band sits midway between "no change" and "must be flagged". The
# in-process noise of r is far below that on the device class (sample spread ~0.5%); on the host class it is
# what calibrate_ab_bands measures. Per-benchmark bands from A/A sessions (bands_ab.json) replace these.
DEFAULT_BAND_AB = {DEVICE: 0.025, HOST: 0.05}
# A/B mode: a row still "within noise" whose CI reaches past a band edge could hold a band-sized change the rounds
# did not resolve, so perf/test_perf.py times up to AB_EXTENSIONS more batches of the same number of paired rounds
# for it and judges all of them. Measured on an H200 (perf/RESULTS.md): with 15 rounds two injected 10% slowdowns
# of host-bound rows read +8.2% and +10.8% with CIs from -0.8% and -2.8%, so they passed as "within noise".
AB_EXTENSIONS = 2
# Calibrated band = SAFETY * widest spread seen between unchanged sessions: a few sessions under-sample it.
SAFETY = 1.5
# Above this a 10% slowdown could hide inside the band, so such a benchmark is reported as TOO_NOISY
# instead of being silently gated at the cap.
BAND_CAP = 0.08
# Peak memory is a regression when it rises by more than 5% and by more than 1 MiB (allocator rounding).
MEMORY_SHARE = 0.05
MEMORY_MIN_BYTES = 1 << 20
RESAMPLES = 2000  # bootstrap resamples: the 2.5%/97.5% quantiles are stable to well under 1% of r

REGRESSED = "regressed"
IMPROVED = "improved"
WITHIN_NOISE = "within noise"
TOO_NOISY = "too noisy to gate"
NEW = "new"  # no baseline for it
MISSING = "missing"  # in the baseline, not in the current session
MEMORY_REGRESSED = "regressed (memory)"
MEMORY_OK = "ok"


@dataclass(frozen=True)
class Verdict:
    name: str
    status: str  # time verdict: one of the status strings above
    klass: str
    # Stored mode: median(current) / median(baseline), host class probe-normalised. A/B (paired) mode: the
    # median of the per-round ratios current_i / baseline_i.
    ratio: float | None = None
    ci_low: float | None = None  # bootstrap 95% CI on ratio
    ci_high: float | None = None
    band: float | None = None  # relative noise band it was judged against, 0.03 = +-3%
    band_source: str | None = None  # "stored" or "default"
    memory_ratio: float | None = None  # peak allocated current / baseline (None: not measured)
    memory_delta: int | None = None  # bytes
    memory_status: str | None = None  # MEMORY_REGRESSED, MEMORY_OK or None (not measured)
    rounds: int | None = None  # current samples judged (A/B: paired rounds, extensions included)

    @property
    def regressed(self) -> bool:
        return self.status == REGRESSED or self.memory_status == MEMORY_REGRESSED

    def summary(self) -> str:
        """One line: verdict, effect size and the noise band it was judged against."""
        text = f"{self.name}: {self.status}"
        if self.ratio is not None:
            text += (
                f" {_pct(self.ratio)} (95% CI {_pct(self.ci_low)} .. {_pct(self.ci_high)}),"
                f" noise band {_band(self)}"
            )
        if self.memory_status is not None:
            text += f"; memory {_memory(self)}"
            if self.memory_status == MEMORY_REGRESSED:
                text += f" {MEMORY_REGRESSED}"
        return text


@dataclass(frozen=True)
class Session:
    """One perf session of an unchanged tree, for ``calibrate_bands``."""

    samples: Mapping[str, Sequence[float]]  # benchmark name -> times in seconds
    probe: float | None = None  # median time of the host probe in this session (needed for host class)


def judge(
    name: str,
    base_samples: Sequence[float] | None,
    cur_samples: Sequence[float] | None,
    *,
    klass: str,
    base_probe: float | None = None,
    cur_probe: float | None = None,
    band: float | None = None,
    base_mem: int | None = None,
    cur_mem: int | None = None,
    seed: int = 0,
    paired: bool = False,
) -> Verdict:
    """Judge one benchmark. ``None`` samples mean absent from that side (NEW / MISSING).

    ``paired=True`` (A/B mode): ``base_samples[i]`` and ``cur_samples[i]`` were timed back to back in round i of
    one process. Then no probe is used (the process is common to both), the statistic is the median of the
    per-round ratios (the bootstrap resamples rounds) and the default band is ``DEFAULT_BAND_AB``.
    """
    _check_class(name, klass)
    if base_samples is None and cur_samples is None:
        raise ValueError(f"{name}: neither baseline nor current samples given")
    if base_samples is None:
        return Verdict(name, NEW, klass)
    if cur_samples is None:
        return Verdict(name, MISSING, klass)

    norm_class = DEVICE if paired else klass  # DEVICE: absolute times, no probe
    base = _normalise(name, "baseline", base_samples, norm_class, base_probe)
    cur = _normalise(name, "current", cur_samples, norm_class, cur_probe)
    if paired and len(base) != len(cur):
        raise ValueError(f"{name}: paired samples need one baseline time per round, got {len(base)} baseline"
                         f" and {len(cur)} current times")
    if band is None:
        band, source = (DEFAULT_BAND_AB if paired else DEFAULT_BAND)[klass], "default"
    elif not (math.isfinite(band) and band >= 0):
        raise ValueError(f"{name}: noise band must be a finite share >= 0, got {band!r}")
    else:
        source = "stored"

    if paired:
        per_round = _round_ratios(base, cur)
        ratio = statistics.median(per_round)
        low, high = _bootstrap_ci_paired(per_round, seed)
    else:
        ratio = statistics.median(cur) / statistics.median(base)
        low, high = _bootstrap_ci_unpaired(base, cur, seed)
    if band > BAND_CAP:
        status = TOO_NOISY
    elif ratio > 1 + band and low > 1:
        status = REGRESSED
    elif ratio < 1 / (1 + band) and high < 1:
        status = IMPROVED
    else:
        status = WITHIN_NOISE

    mem_ratio = mem_delta = mem_status = None
    if base_mem is not None and cur_mem is not None:
        for what, value in (("baseline", base_mem), ("current", cur_mem)):
            if value < 0:
                raise ValueError(f"{name}: {what} peak memory must be >= 0 bytes, got {value!r}")
        mem_delta = cur_mem - base_mem
        mem_ratio = cur_mem / base_mem if base_mem else None
        rose = mem_delta > MEMORY_SHARE * base_mem and mem_delta > MEMORY_MIN_BYTES
        mem_status = MEMORY_REGRESSED if rose else MEMORY_OK
    return Verdict(name, status, klass, ratio, low, high, band, source, mem_ratio, mem_delta, mem_status, len(cur))


def undecided(v: Verdict) -> bool:
    """More rounds could change this verdict: within noise, and its 95% CI reaches past an edge of the band (a
    band-sized change is as consistent with the samples as no change)."""
    return (v.status == WITHIN_NOISE and v.ratio is not None
            and (v.ci_high > 1 + v.band or v.ci_low < 1 / (1 + v.band)))


def calibrate_bands(sessions: Sequence[Session], classes: Mapping[str, str]) -> dict[str, float]:
    """Noise band per benchmark from >= 2 sessions of an unchanged tree.

    band = max(BAND_FLOOR[class], SAFETY * max over session pairs |log ratio of normalised medians|), as a
    relative share. It is *not* capped: a value above BAND_CAP marks the benchmark as too noisy to gate
    (``too_noisy``), and ``judge`` reports it as TOO_NOISY rather than pretending to gate it. A benchmark
    seen in fewer than two sessions gets no band (it is judged against the default band).
    """
    if len(sessions) < 2:
        raise ValueError(f"calibrate_bands needs >= 2 sessions of the unchanged tree, got {len(sessions)}")
    medians: dict[str, list[float]] = {}
    for i, session in enumerate(sessions):
        for name, samples in session.samples.items():
            if name not in classes:
                raise ValueError(f"{name}: no class given for it (expected one of {CLASSES})")
            klass = classes[name]
            _check_class(name, klass)
            norm = _normalise(name, f"session {i}", samples, klass, session.probe)
            medians.setdefault(name, []).append(statistics.median(norm))
    bands = {}
    for name, meds in medians.items():
        if len(meds) < 2:
            continue
        spread = math.log(max(meds) / min(meds))  # == the largest |log ratio| over all pairs
        bands[name] = max(BAND_FLOOR[classes[name]], math.expm1(SAFETY * spread))
    return bands


def calibrate_ab_bands(
    sessions: Sequence[Mapping[str, tuple[Sequence[float], Sequence[float]]]], classes: Mapping[str, str]
) -> dict[str, float]:
    """A/B noise band per benchmark from >= 2 A/A sessions (both arms the same code: ``--ab-base=HEAD`` on a clean
    checkout, or ``--ab-base=self``), each ``{name: (base samples, candidate samples)}``.

    ``r`` is the paired judge's statistic, the median of the session's per-round ratios, so each session needs
    one candidate time per base time. In an A/A session the true ratio is 1, so every ``r`` is pure noise: band =
    max(BAND_FLOOR[class], SAFETY * max over sessions |log r|), as a relative share. Not capped, like
    ``calibrate_bands``: above BAND_CAP the benchmark is reported TOO_NOISY. A benchmark seen in fewer than two
    sessions gets no band.
    """
    if len(sessions) < 2:
        raise ValueError(f"calibrate_ab_bands needs >= 2 A/A sessions, got {len(sessions)}")
    logs: dict[str, list[float]] = {}
    for i, session in enumerate(sessions):
        for name, (base_samples, cur_samples) in session.items():
            if name not in classes:
                raise ValueError(f"{name}: no class given for it (expected one of {CLASSES})")
            _check_class(name, classes[name])
            base = _normalise(name, f"session {i} base", base_samples, DEVICE, None)
            cur = _normalise(name, f"session {i} candidate", cur_samples, DEVICE, None)
            if len(base) != len(cur):
                raise ValueError(f"{name}: A/A session {i} has {len(base)} base and {len(cur)} candidate times, "
                                 f"needs one of each per round")
            logs.setdefault(name, []).append(abs(math.log(statistics.median(_round_ratios(base, cur)))))
    return {
        name: max(BAND_FLOOR[classes[name]], math.expm1(SAFETY * max(values)))
        for name, values in logs.items()
        if len(values) >= 2
    }


def ab_pairs_from_json(report: Mapping) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, str]]:
    """The A/B pairs and classes of one pytest-benchmark JSON report (``--benchmark-json``) of an A/B session."""
    pairs, classes = {}, {}
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if info.get("injected_slowdown"):
            raise ValueError(f"{bench['name']}: has an injected slowdown; an A/A calibration session must not")
        if "ab_base_s" in info and "ab_candidate_s" in info:
            pairs[bench["name"]] = (info["ab_base_s"], info["ab_candidate_s"])
            classes[bench["name"]] = info["class"]
    return pairs, classes


def session_from_json(report: Mapping) -> tuple[Session, dict[str, str]]:
    """The raw samples, host-probe median and classes of one pytest-benchmark JSON report of a stored-baseline
    session (``--benchmark-save`` or ``--benchmark-json`` with ``--benchmark-save-data``), for ``calibrate_bands``."""
    samples, classes, probe = {}, {}, None
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if info.get("injected_slowdown"):
            raise ValueError(f"{bench['name']}: has an injected slowdown; a calibration session must not")
        if info.get("class") == "probe":
            probe = bench["stats"]["median"]
        elif info.get("class") in CLASSES:
            if "data" not in bench["stats"]:
                raise ValueError(f"{bench['name']}: no raw samples (record the session with --benchmark-save-data)")
            samples[bench["name"]], classes[bench["name"]] = bench["stats"]["data"], info["class"]
    return Session(samples, probe), classes


def too_noisy(bands: Mapping[str, float]) -> list[str]:
    """Benchmarks whose calibrated band exceeds BAND_CAP: the gate cannot promise to catch 10% in them."""
    return sorted(name for name, band in bands.items() if band > BAND_CAP)


def gate_failed(verdicts: Iterable[Verdict]) -> bool:
    """True if any benchmark regressed in time or in peak memory."""
    return any(v.regressed for v in verdicts)


def format_table(verdicts: Iterable[Verdict]) -> str:
    """Markdown table: benchmark | verdict | effect | 95% CI | noise band | memory delta | rounds judged.

    The effect is ``ratio - 1``: in A/B mode the median per-round change, else the change of the median.
    """
    lines = [
        "| benchmark | verdict | effect | 95% CI | noise band | memory Δ | rounds |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        status = v.status
        if v.memory_status == MEMORY_REGRESSED:
            status += f"; {MEMORY_REGRESSED}"
        if v.ratio is None:
            effect = ci = band = "-"
        else:
            effect, ci, band = _pct(v.ratio), f"{_pct(v.ci_low)} .. {_pct(v.ci_high)}", _band(v)
        memory = _memory(v) if v.memory_status is not None else "-"
        lines.append(f"| {v.name} | {status} | {effect} | {ci} | {band} | {memory} | {v.rounds or '-'} |")
    return "\n".join(lines) + "\n"


def _check_class(name: str, klass: str) -> None:
    if klass not in CLASSES:
        raise ValueError(f"{name}: unknown benchmark class {klass!r}, expected one of {CLASSES}")


def _normalise(
    name: str, what: str, samples: Sequence[float], klass: str, probe: float | None
) -> list[float]:
    """Validated samples; host class divided by its session's probe median (stored-baseline mode only)."""
    if not samples:
        raise ValueError(f"{name}: {what} samples are empty")
    for t in samples:
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"{name}: {what} times must be finite and > 0, got {t!r}")
    if klass == DEVICE:
        return list(samples)
    if probe is None:
        raise ValueError(f"{name}: host-class benchmark needs the {what} session's host-probe median")
    if not (math.isfinite(probe) and probe > 0):
        raise ValueError(f"{name}: {what} host-probe median must be finite and > 0, got {probe!r}")
    return [t / probe for t in samples]


def _round_ratios(base: list[float], cur: list[float]) -> list[float]:
    """cur_i / base_i per round: what both arms of a round share cancels here."""
    return [c / b for b, c in zip(base, cur, strict=True)]


def _bootstrap_ci_paired(per_round: list[float], seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the median per-round ratio, resampling rounds; seeded so a verdict is
    reproducible."""
    rng = random.Random(seed)
    return _percentile_ci([statistics.median(rng.choices(per_round, k=len(per_round))) for _ in range(RESAMPLES)])


def _bootstrap_ci_unpaired(base: list[float], cur: list[float], seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of median(cur) / median(base), the two sides resampled independently."""
    rng = random.Random(seed)
    return _percentile_ci([
        statistics.median(rng.choices(cur, k=len(cur))) / statistics.median(rng.choices(base, k=len(base)))
        for _ in range(RESAMPLES)
    ])


def _percentile_ci(ratios: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(ratios, n=40, method="inclusive")  # cut points at 1/40 .. 39/40
    return cuts[0], cuts[-1]


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{(ratio - 1) * 100:+.1f}%"


def _band(v: Verdict) -> str:
    text = f"±{v.band * 100:.1f}% {v.band_source}"
    if v.band_source == "default":
        text += " band"
    if v.status == TOO_NOISY:
        text += f" (> cap ±{BAND_CAP * 100:.0f}%)"
    return text


def _memory(v: Verdict) -> str:
    mib = f"{v.memory_delta / 2**20:+.1f} MiB"
    return mib if v.memory_ratio is None else f"{_pct(v.memory_ratio)} ({mib})"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m perf.gate calibrate-ab AA1.json AA2.json ... [--out bands_ab.json]`` (A/B bands) or
    ``python -m perf.gate calibrate S1.json S2.json ... [--out bands.json]`` (stored-baseline bands)."""
    parser = argparse.ArgumentParser(prog="python -m perf.gate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cal_ab = sub.add_parser("calibrate-ab", help="A/B noise bands from >= 2 A/A sessions' --benchmark-json files")
    cal_ab.add_argument("reports", nargs="+", help="pytest-benchmark JSON of A/A sessions (--benchmark-json=FILE)")
    cal_ab.add_argument("--out", help="write the bands here (perf/baselines/<gpu-model>/bands_ab.json)")
    cal = sub.add_parser("calibrate", help="stored-baseline noise bands from >= 2 sessions of an unchanged tree")
    cal.add_argument("reports", nargs="+", help="pytest-benchmark JSON of those sessions, saved with "
                     "--benchmark-save-data (the stored baselines' files, or --benchmark-json=FILE)")
    cal.add_argument("--out", help="write the bands here (perf/baselines/<gpu-model>/bands.json)")
    args = parser.parse_args(argv)
    sessions, classes = [], {}
    for path in args.reports:
        with open(path) as f:
            report = json.load(f)
        try:
            if args.command == "calibrate-ab":
                session, session_classes = ab_pairs_from_json(report)
                if not session:
                    parser.error(f"{path}: no A/B samples in it (was it run with --ab-base?)")
            else:
                session, session_classes = session_from_json(report)
                if not session.samples:
                    parser.error(f"{path}: no perf benchmarks in it")
        except ValueError as e:
            parser.error(f"{path}: {e}")
        sessions.append(session)
        classes.update(session_classes)
    try:
        bands = (calibrate_ab_bands if args.command == "calibrate-ab" else calibrate_bands)(sessions, classes)
    except ValueError as e:
        parser.error(str(e))
    text = json.dumps(dict(sorted(bands.items())), indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    for name in too_noisy(bands):
        print(f"too noisy to gate (band > ±{BAND_CAP:.0%}): {name} ±{bands[name]:.1%}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
