"""The performance gate: judge one perf session against the stored baseline, benchmark by benchmark.

Why it is built this way (measured between separate processes on one GPU):

* CUDA-graph loops ("device" class) vary about +-2-4% run to run, so their absolute time is a usable signal.
* Eager and default-``torch.compile`` loops ("host" class) are CPU/launch bound and vary +-40-55%: the whole
  process is faster or slower. No fixed percentage on absolute time can gate both classes. So every session
  also times a fixed *host probe* (a launch-bound workload that PRs never change), and a host-class benchmark
  is judged on ``time / probe median of the same session``: a slow process slows both and the ratio cancels.

Statistic: ``r = median(current) / median(baseline)`` (after that normalisation) with a seeded bootstrap 95%
confidence interval. A time verdict needs *both* conditions:

* ``r`` beyond the benchmark's noise band. The band is session-to-session noise, measured on reruns of an
  unchanged tree (``calibrate_bands``); the within-session CI cannot see it.
* a CI that excludes 1, i.e. the samples really resolve the shift (guards against a few wild samples).

Peak memory is judged separately: a rise of more than ``MEMORY_SHARE`` *and* more than ``MEMORY_MIN_BYTES``.
"""

import math
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DEVICE = "device"  # CUDA-graph loops: judged on absolute time
HOST = "host"  # eager / default-compile loops: judged on time relative to the host probe
CLASSES = (DEVICE, HOST)

# Smallest band a calibration may yield: a handful of quiet calibration sessions underestimates the spread.
BAND_FLOOR = {DEVICE: 0.02, HOST: 0.03}
# Used when the baseline stores no band; host is wider because the probe cancels only most of the swing.
DEFAULT_BAND = {DEVICE: 0.03, HOST: 0.05}
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
    ratio: float | None = None  # median(current) / median(baseline), probe-normalised for host class
    ci_low: float | None = None  # bootstrap 95% CI on ratio
    ci_high: float | None = None
    band: float | None = None  # relative noise band it was judged against, 0.03 = +-3%
    band_source: str | None = None  # "stored" or "default"
    memory_ratio: float | None = None  # peak allocated current / baseline (None: not measured)
    memory_delta: int | None = None  # bytes
    memory_status: str | None = None  # MEMORY_REGRESSED, MEMORY_OK or None (not measured)

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
) -> Verdict:
    """Judge one benchmark. ``None`` samples mean absent from that side (NEW / MISSING)."""
    _check_class(name, klass)
    if base_samples is None and cur_samples is None:
        raise ValueError(f"{name}: neither baseline nor current samples given")
    if base_samples is None:
        return Verdict(name, NEW, klass)
    if cur_samples is None:
        return Verdict(name, MISSING, klass)

    base = _normalise(name, "baseline", base_samples, klass, base_probe)
    cur = _normalise(name, "current", cur_samples, klass, cur_probe)
    if band is None:
        band, source = DEFAULT_BAND[klass], "default"
    elif not (math.isfinite(band) and band >= 0):
        raise ValueError(f"{name}: noise band must be a finite share >= 0, got {band!r}")
    else:
        source = "stored"

    ratio = statistics.median(cur) / statistics.median(base)
    low, high = _bootstrap_ci(base, cur, seed)
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
    return Verdict(name, status, klass, ratio, low, high, band, source, mem_ratio, mem_delta, mem_status)


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


def too_noisy(bands: Mapping[str, float]) -> list[str]:
    """Benchmarks whose calibrated band exceeds BAND_CAP: the gate cannot promise to catch 10% in them."""
    return sorted(name for name, band in bands.items() if band > BAND_CAP)


def gate_failed(verdicts: Iterable[Verdict]) -> bool:
    """True if any benchmark regressed in time or in peak memory."""
    return any(v.regressed for v in verdicts)


def format_table(verdicts: Iterable[Verdict]) -> str:
    """Markdown table: benchmark | verdict | effect | 95% CI | noise band | memory delta."""
    lines = [
        "| benchmark | verdict | effect | 95% CI | noise band | memory Δ |",
        "|---|---|---|---|---|---|",
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
        lines.append(f"| {v.name} | {status} | {effect} | {ci} | {band} | {memory} |")
    return "\n".join(lines) + "\n"


def _check_class(name: str, klass: str) -> None:
    if klass not in CLASSES:
        raise ValueError(f"{name}: unknown benchmark class {klass!r}, expected one of {CLASSES}")


def _normalise(
    name: str, what: str, samples: Sequence[float], klass: str, probe: float | None
) -> list[float]:
    """Validated samples; host class divided by its session's probe median (cancels process-wide speed)."""
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


def _bootstrap_ci(base: list[float], cur: list[float], seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of median(cur) / median(base); seeded so a verdict is reproducible."""
    rng = random.Random(seed)
    ratios = [
        statistics.median(rng.choices(cur, k=len(cur))) / statistics.median(rng.choices(base, k=len(base)))
        for _ in range(RESAMPLES)
    ]
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
