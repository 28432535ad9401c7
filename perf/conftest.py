"""The perf suite's plumbing: grids, per-GPU baseline storage, machine_info, and the gate verdict.

Baselines live in perf/baselines/<gpu-model>/ (pytest-benchmark adds its OS/Python folder below), so a run on
an A100 never compares against an H100's numbers; a baseline recorded on another card is refused by name.
With --benchmark-compare, every benchmark is judged by perf/gate.py and the session fails on a regression.
With --ab-base=REF (the PR gate), every benchmark is instead judged on both arms timed in this one process
(perf/ab.py, perf/gate.py); if both options are given, the A/B verdict is the gate.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from generators import GENERATORS, Generator, bench, models

from . import ab, gate

BASELINES = Path(__file__).parent / "baselines"
RECORD = "python -m pytest perf/test_perf.py --benchmark-save=baseline --benchmark-save-data"

_CUDA_POINTS = [(32, 100), (32, 200), (32, 400), (1, 100), (4, 100), (16, 100), (64, 100)]
_FASTEST = ["cuda_graph", "cuda_graph_deferred", "lean_graph", "hf_generate_static"]
GRIDS = {
    # (variant, batch, new_tokens, dtype); naive first at every point (the speedup column needs it).
    "full": [(v, b, n, "float32") for b, n in _CUDA_POINTS for v in GENERATORS]
    + [(v, 32, 100, "bfloat16") for v in ["naive", *_FASTEST]],
    "gate": [(v, b, n, "float32") for b, n in [(32, 100), (1, 100)] for v in GENERATORS],
    "smoke": [(v, b, n, "float32") for b, n in [(2, 8), (4, 16)]
              for v, g in GENERATORS.items() if not g.requires_cuda and g.execution == "eager"],
}
_INJECTED: dict[str, float] = {}
AB_BASE = pytest.StashKey[ab.Base]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("decode-gate perf")
    group.addoption("--perf-grid", choices=sorted(GRIDS), help="full (GPU default), gate (2 points), smoke (CPU)")
    group.addoption("--gate-report", help="write the gate's markdown verdict table to this file")
    group.addoption("--expandable-segments", action="store_true",
                    help="run with PYTORCH_ALLOC_CONF=expandable_segments:True (set before CUDA initialises)")
    group.addoption("--inject-slowdown", metavar="VARIANT:SHARE[,...]",
                    help="TEST ONLY: busy-wait SHARE x each timed generation of VARIANT, to prove the gate fires "
                         "(with --ab-base: the candidate arm only)")
    group.addoption("--ab-rounds", type=int, default=15, metavar="N",
                    help="timed rounds per arm with --ab-base (default 15: with 7, launch-bound rows missed half of "
                         "the injected 10%% slowdowns on an H200; see perf/RESULTS.md); host-bound loops past "
                         "100 tokens get 5")
    group.addoption("--ab-base", metavar="REF",
                    help="A/B gate: also time git REF's generators/ in this process, interleaved round by round, "
                         "and judge every benchmark against it ('self': this tree's own, an A/A run)")


def slug(gpu_name: str) -> str:
    """The baseline folder of a card: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")


def gpu_slug() -> str:
    return slug(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "cpu"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--expandable-segments", default=False):
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
    # Key the storage by GPU model before pytest-benchmark opens it (its own key is only OS/Python).
    if config.getoption("benchmark_storage", default=None) == "file://./.benchmarks":
        config.option.benchmark_storage = f"file://{BASELINES / gpu_slug()}"
    for spec in filter(None, (config.getoption("--inject-slowdown", default=None) or "").split(",")):
        variant, _, share = spec.partition(":")
        if variant not in GENERATORS or not share:
            raise pytest.UsageError(f"--inject-slowdown wants VARIANT:SHARE[,VARIANT:SHARE...] with known variants, "
                                    f"got {spec!r}")
        _INJECTED[variant] = float(share)
    if config.getoption("--ab-rounds", default=15) < 3:
        raise pytest.UsageError("--ab-rounds needs at least 3 timed rounds per arm for a median and a CI")
    ref = config.getoption("--ab-base", default=None)
    if ref is not None:
        config.stash[AB_BASE] = ab.load_base(ref)


def pytest_unconfigure(config: pytest.Config) -> None:
    base = config.stash.get(AB_BASE, None)
    if base is not None:
        ab.close(base)
        del config.stash[AB_BASE]


@pytest.fixture(scope="session")
def ab_base(pytestconfig: pytest.Config) -> ab.Base | None:
    """The base arm of the A/B gate (--ab-base), or None: judge against a stored baseline."""
    return pytestconfig.stash.get(AB_BASE, None)


def grid_for(config: pytest.Config) -> str:
    return config.getoption("--perf-grid") or ("full" if torch.cuda.is_available() else "smoke")


def benchmark_class(gen: Generator) -> str:
    """CUDA-graph loops are judged on absolute time; launch-bound ones, on a stored baseline, relative to the host
    probe (the A/B mode uses no probe)."""
    return gate.DEVICE if gen.execution == "cuda_graph" else gate.HOST


def inject_delay(benchmark: object, variant: str) -> float:
    share = _INJECTED.get(variant, 0.0)
    if share:
        benchmark.extra_info["injected_slowdown"] = share
    return share


@pytest.fixture(scope="session")
def models_by_dtype(device: torch.device):
    """GPT-2 small on CUDA (the post's model), tiny GPT-2 on CPU; built once per dtype."""
    built: dict[str, torch.nn.Module] = {}

    def get(dtype: str) -> torch.nn.Module:
        if dtype not in built:
            built[dtype] = models.build("gpt2-small" if device.type == "cuda" else "tiny-gpt2", dtype=dtype,
                                        device=device)
        return built[dtype]

    return get


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    device = torch.device(config.getoption("--device"))
    machine_info["decode_gate"] = bench.machine_info(device) | {"grid": grid_for(config)}


def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark) -> None:
    ours = machine_info.get("decode_gate", {}).get("gpu", "cpu")
    theirs = compared_benchmark["machine_info"].get("decode_gate", {"gpu": "unknown card"}).get("gpu", "cpu")
    if ours != theirs:
        raise pytest.UsageError(f"refusing to compare: this run is on {ours!r}, the baseline was recorded on "
                                f"{theirs!r}. Record a baseline for this card with: {RECORD}")


def _session(benchmarks: list[dict]) -> tuple[dict[str, dict], float | None]:
    by_name = {b["name"]: b for b in benchmarks}
    probe = next((b for b in benchmarks if b["extra_info"].get("class") == "probe"), None)
    return by_name, None if probe is None else probe["stats"]["median"]


def point_id(variant: str, batch: int, new_tokens: int, dtype: str) -> str:
    """test_generate's parameter id: its benchmark is named test_generate[<id>]."""
    return f"{variant}-b{batch}-n{new_tokens}-{dtype}"


def grid_names(grid: str) -> set[str]:
    return {f"test_generate[{point_id(*point)}]" for point in GRIDS[grid]}


def _verdicts(current: list[dict], baseline: list[dict], bands: dict[str, float],
              grid: set[str] | None = None) -> list[gate.Verdict]:
    """Stored-baseline verdicts. A baseline row this session lacks is MISSING only if `grid` (this session's
    grid) has it: a gate-grid run against a full-grid baseline should not list the 70 rows it never meant to run."""
    cur, cur_probe = _session(current)
    base, base_probe = _session(baseline)
    verdicts = []
    for name in [*cur, *(n for n in base if n not in cur and (grid is None or n in grid))]:
        c, b = cur.get(name), base.get(name)
        klass = (c or b)["extra_info"].get("class")
        if klass == "probe":
            continue
        if b is not None and "data" not in b["stats"]:
            raise pytest.UsageError(f"the baseline has no raw samples for {name}; record it with: {RECORD}")
        verdicts.append(gate.judge(
            name, b and b["stats"]["data"], c and c["stats"]["data"], klass=klass,
            base_probe=base_probe, cur_probe=cur_probe, band=bands.get(name),
            base_mem=b and b["extra_info"].get("peak_allocated"), cur_mem=c and c["extra_info"].get("peak_allocated"),
        ))
    return verdicts


def _ab_verdicts(current: list[dict], bands: dict[str, float]) -> list[gate.Verdict]:
    verdicts = []
    for b in current:
        info = b["extra_info"]
        if info.get("class") not in gate.CLASSES or "ab_candidate_s" not in info:
            continue  # the host probe (stored-baseline mode only)
        verdicts.append(gate.judge(
            b["name"], info.get("ab_base_s"), info["ab_candidate_s"], klass=info["class"], band=bands.get(b["name"]),
            base_mem=info.get("ab_base_peak_above_held"), cur_mem=info.get("peak_above_held"), paired=True,
        ))
    return verdicts


def _finish(session: pytest.Session, report: str, verdicts: list[gate.Verdict]) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    reporter.write_line("\n" + report)
    if session.config.getoption("--gate-report"):
        Path(session.config.getoption("--gate-report")).write_text(report)
    if gate.gate_failed(verdicts):
        reporter.write_line("GATE FAILED: see the regressed rows above.", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def ab_bands(config: pytest.Config) -> tuple[Path, dict[str, float]]:
    """bands_ab.json beside the baselines (perf/baselines/<gpu-model>/) and its bands ({} if absent)."""
    bands_file = Path(config._benchmarksession.storage.path) / "bands_ab.json"
    return bands_file, json.loads(bands_file.read_text()) if bands_file.exists() else {}


def _ab_gate(session: pytest.Session, bs: object, base: ab.Base) -> None:
    bands_file, bands = ab_bands(session.config)
    verdicts = _ab_verdicts([b.as_dict(include_data=False) for b in bs.benchmarks], bands)
    commit = "" if base.commit == ab.SELF else f" ({base.commit[:12]})"
    header = (f"### Perf gate: A/B in one process, this tree vs {base.ref}{commit}\n\n"
              f"Both arms timed interleaved, round by round; each row is judged on its own pair. Noise bands: "
              f"{'per benchmark from ' + bands_file.name + ', else ' if bands else ''}the A/B defaults "
              f"(±{gate.DEFAULT_BAND_AB[gate.DEVICE]:.1%} CUDA-graph loops, ±{gate.DEFAULT_BAND_AB[gate.HOST]:.1%} "
              f"the others); memory: peak allocated up > {gate.MEMORY_SHARE:.0%} and > "
              f"{gate.MEMORY_MIN_BYTES >> 20} MiB is a regression. A row still within noise whose 95% CI reached "
              f"past a band edge got up to {gate.AB_EXTENSIONS} more batches of rounds (the rounds column).\n")
    if bs.compare:
        header += ("\n--benchmark-compare was given too: the stored-baseline comparison is NOT the gate here, "
                   "this A/B verdict is.\n")
    _finish(session, f"{header}\n{gate.format_table(verdicts)}", verdicts)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    base = session.config.stash.get(AB_BASE, None)
    if base is not None:
        _ab_gate(session, bs, base)
        return
    if not bs.compare:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not bs.compared_mapping:
        reporter.write_line(f"\nGATE: no baseline for this card in {bs.storage.path}. Record one on this "
                            f"GPU with:\n    {RECORD}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    path = sorted(bs.compared_mapping)[-1]  # with --benchmark-compare: the latest saved run
    baseline = list(bs.compared_mapping[path].values())
    current = [b.as_dict(include_data=True) for b in bs.benchmarks]
    bands_file = Path(bs.storage.path) / "bands.json"  # beside the OS/Python folders
    bands = json.loads(bands_file.read_text()) if bands_file.exists() else {}
    verdicts = _verdicts(current, baseline, bands, grid_names(grid_for(session.config)))
    header = (f"### Perf gate vs {Path(path).name}\n\n"
              f"Noise bands (per benchmark from {bands_file.name} where stored, else the defaults): CUDA-graph loops "
              f"±{gate.DEFAULT_BAND[gate.DEVICE]:.0%}, host-bound loops' times not gated on a stored baseline "
              f"(too noisy between processes: default ±{gate.DEFAULT_BAND[gate.HOST]:.0%}, above the "
              f"±{gate.BAND_CAP:.0%} cap) "
              f"— use `--ab-base=REF` for the PR gate.\n")
    _finish(session, f"{header}\n{gate.format_table(verdicts)}\n", verdicts)
