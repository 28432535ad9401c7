"""What a perf run was asked to do, settled before any test runs, and what the controller of xdist workers saves.

perf/conftest.py's hooks fill a Gate from the options; test_perf.py reads it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from generators import GENERATORS

from . import ab, gate, report, store


@dataclass
class Gate:
    """What a perf run was asked to do, settled before any test runs."""

    compare: bool  # --benchmark-compare: judge every row against the base arm
    recording: bool  # --benchmark-save: write a baseline
    card: str  # the GPU's name ("cpu" without CUDA)
    storage: Path  # perf/baselines/<card>/<OS-Python>, or the --benchmark-storage given
    injected: dict[str, float] = field(default_factory=dict)
    base: ab.Base | None = None
    baseline: store.Baseline | None = None
    bands: dict[str, float] = field(default_factory=dict)
    rounds: int = gate.MAX_ROUNDS
    generators_tree: str | None = None  # recorded with a baseline
    trace: tuple[int, int] | None = None  # --trace-steps START:STOP decode steps
    report: str = ""  # the gate's markdown report, once judged
    started_at: float = field(default_factory=time.time)  # epoch s: workers' rows are on the same clock


def usage(message: str) -> pytest.UsageError:
    return pytest.UsageError(" ".join(message.split()))


def cpu_list(text: str) -> set[int]:
    """The kernel's CPU list format ("0-3,8,10-11") as a set."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        if low:
            cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def siblings(cpu: int) -> set[int]:
    """The CPUs that share `cpu`'s physical core (SMT threads), from sysfs; {cpu} where sysfs does not say."""
    path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    try:
        return cpu_list(path.read_text()) | {cpu}
    except (OSError, ValueError):
        return {cpu}


def visible_cards(env: str | None, count: int) -> list[str]:
    """The cards this process may use, named as CUDA_VISIBLE_DEVICES names them (indices or UUIDs): the variable's
    first `count` entries (the count CUDA sees), or 0..count-1 where it is not set."""
    if env is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in env.split(",")][:count]


def narrow_workers(specs: list, cards: list[str]) -> None:
    """Worker N starts with CUDA_VISIBLE_DEVICES=cards[N] (its execnet spec's env, set before it imports torch), so
    every worker computes on cuda:0: compiled code is cached under keys that hold the inputs' device index, and a
    step compiled on card 1 would be compiled afresh on card 0 (docs/gate.md, "More GPUs"). Workers past the cards
    are left as they are: each refuses to run (two workers would share a card)."""
    for spec, card in zip(specs, cards, strict=False):
        spec.env["CUDA_VISIBLE_DEVICES"] = card


def cores_for(index: int, workers: int, cpus: list[int],
              siblings: Callable[[int], set[int]] = siblings) -> list[int]:
    """Worker `index`'s share of `cpus`, whole physical cores only: two SMT threads of one core share its
    execution units, so a worker compiling on one would slow the launches that another worker times on the other.
    Empty where there are fewer cores than workers (the caller then leaves the affinity alone)."""
    available, seen = set(cpus), set()
    cores: list[list[int]] = []
    for cpu in sorted(available):
        if cpu not in seen:
            core = sorted(siblings(cpu) & available)
            seen.update(core)
            cores.append(core)
    share = len(cores) // workers
    return [cpu for core in cores[index * share:(index + 1) * share] for cpu in core]


def parse_injected(spec: str | None) -> dict[str, float]:
    injected = {}
    for item in filter(None, (spec or "").split(",")):
        variant, _, share = item.partition(":")
        try:
            value = float(share)
        except ValueError:
            value = math.nan
        if variant not in GENERATORS or not (math.isfinite(value) and 0 < value <= 10):
            raise usage(f"--inject-slowdown wants VARIANT:SHARE[,VARIANT:SHARE...] with known variants and a share "
                         f"in (0, 10], got {item!r}")
        injected[variant] = value
    return injected


def set_up_gate(g: Gate, pick: str | bool, ref: str | None) -> None:
    """The stored baseline, the band file and the base arm: anything missing raises store.GateError or a usage error."""
    g.baseline = store.latest(g.storage, g.card, pick)
    g.bands = store.load_bands(g.storage.parent / store.BANDS)
    g.base = ab.load_base(ref or g.baseline.commit)


class FailedRows:
    """A timed row that raised has no verdict: its error goes to the gate's report and, at once, to the rows log, so
    that a run stopped later still says which rows failed and why. Under -n the controller gets every report."""

    def __init__(self, g: Gate, rows_log: str | None) -> None:
        self.gate, self.rows_log = g, rows_log
        self.rows: list[dict] = []  # {"name", "failed"}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.failed or "::test_generate[" not in report.nodeid:
            return
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash else str(report.longrepr).strip().splitlines()[-1]
        # the benchmark's name: the test id less xdist's "@group" suffix under --dist=loadgroup
        entry = {"name": report.nodeid.split("::")[-1].split("@")[0], "failed": message[:500]}
        self.rows.append(entry)
        if self.rows_log:
            with open(self.rows_log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session):
        """A recording with a failed row saves no baseline (before pytest-benchmark's own saving, which would): the
        runner check would find that row missing for good. --benchmark-json still gets what ran."""
        if self.gate.recording and self.rows:
            config = session.config
            bs = config._benchmarksession
            bs.save = bs.autosave = config.option.benchmark_save = config.option.benchmark_autosave = None
            lines = report.failed_lines(self.rows, "**NO BASELINE SAVED**", "their timings")
            self.gate.report = "\n".join(lines) + "\n"
        yield


def save_merged(config: pytest.Config, bs, rows: list[dict]) -> None:
    """What pytest-benchmark saves in one process (--benchmark-save, --benchmark-json), from the workers' rows."""
    save = config.getoption("benchmark_save") or config.getoption("benchmark_autosave")
    if not rows or not (save or config.getoption("benchmark_json")):
        return
    import pytest_benchmark

    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    config.hook.pytest_benchmark_update_commit_info(config=config, commit_info=commit_info)
    output = {"machine_info": bs.get_machine_info(), "commit_info": commit_info, "benchmarks": rows,
              "datetime": datetime.now(UTC).isoformat(), "version": pytest_benchmark.__version__}
    if save:
        bs.storage.save(output, save)
    if config.getoption("benchmark_json"):
        with config.getoption("benchmark_json") as fh:
            fh.write(json.dumps(output, indent=4).encode())
