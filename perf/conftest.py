"""The perf suite's pytest hooks: options, the gate's set-up (fail-closed), one worker per GPU, the verdict report.

`python -m pytest perf --benchmark-compare` is the gate: every benchmark is timed in paired rounds against a base
arm, the commit the stored baseline for this card was recorded at (or `--ab-base=REF`), and judged by perf/gate.py.
`-n auto` (pytest-xdist) runs one worker per visible GPU; their rows come back here for one report.
"""

from __future__ import annotations

import gc
import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch

from generators import bench, trace

from . import ab, gate, report, store
from .grids import GRIDS, handout_order
from .run import (
    FailedRows,
    Gate,
    cores_for,
    narrow_workers,
    parse_injected,
    save_merged,
    set_up_gate,
    usage,
    visible_cards,
)

GATE = pytest.StashKey["Gate"]()
ROWS = pytest.StashKey[list]()  # benchmark dicts sent back by xdist workers
FAILED = pytest.StashKey["FailedRows"]()  # the rows that raised: no verdict, so the gate fails
DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's default: redirected to perf/baselines/<card>


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("decode-gate perf")
    group.addoption("--perf-grid", choices=sorted(GRIDS),
                    help="full (GPU default), gate (the default with --benchmark-compare), smoke (CPU default)")
    group.addoption("--gate-report", metavar="FILE", help="write the gate's markdown report to this file too")
    group.addoption("--expandable-segments", action="store_true",
                    help="run with PYTORCH_ALLOC_CONF=expandable_segments:True (set before CUDA initialises)")
    group.addoption("--inject-slowdown", metavar="VARIANT:SHARE[,...]",
                    help="TEST ONLY: busy-wait SHARE x each timed generation of VARIANT's candidate arm (0 < SHARE "
                         "<= 10), to watch the gate fire")
    group.addoption("--ab-rounds", type=int, default=gate.MAX_ROUNDS, metavar="N",
                    help=f"the most paired rounds a row gets (default {gate.MAX_ROUNDS}); rows stop as soon as their "
                         f"CI settles the verdict, after {gate.FIRST_ROUNDS} rounds at the earliest")
    group.addoption("--trace-steps", metavar="START:STOP",
                    help="after each row's timings, trace decode steps START..STOP-1 of one more generation "
                         "(generators/trace.py): GPU idle share and host wait per step into the row's extra_info. "
                         "Not in a gate or a recording: a profiler can slow the rows timed after it")
    group.addoption("--rows-log", metavar="FILE",
                    help="append each row to FILE as a JSON line as soon as it is measured: a run stopped late (a "
                         "time limit, Ctrl-C) keeps what it measured")
    group.addoption("--ab-base", metavar="REF",
                    help="with --benchmark-compare: the base arm's git commit (default: the stored baseline's; the "
                         "PR workflow passes the PR's base); 'self' times this tree against itself (A/A)")


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_controller(config: pytest.Config) -> bool:
    return not _is_worker(config) and config.getoption("dist", "no") != "no"


def _on_cuda(config: pytest.Config) -> bool:
    return torch.cuda.is_available() and config.getoption("--device").startswith("cuda")


def _worker_index(config: pytest.Config) -> int:
    return int(config.workerinput["workerid"].removeprefix("gw")) if _is_worker(config) else 0


CARDS = pytest.StashKey[list]()  # the cards the controller hands out, one a worker


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config, specs: list) -> None:
    if _on_cuda(config):
        config.stash[CARDS] = visible_cards(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
        narrow_workers(specs, config.stash[CARDS])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    node.workerinput["decode_gate_loadgroup"] = node.config.option.dist == "loadgroup"
    node.workerinput["decode_gate_cards"] = len(node.config.stash.get(CARDS, []))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: one worker per visible GPU (None: xdist's default, one per CPU)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else None


def _own_gpu(config: pytest.Config) -> None:
    """An xdist worker takes card N and a slice of the physical cores of its own: both arms of its rows run there."""
    index, workers = _worker_index(config), int(config.workerinput["workercount"])
    if _on_cuda(config):
        cards = config.workerinput.get("decode_gate_cards", 0)
        if workers > cards:
            raise usage(f"-n {workers} workers on {cards} GPUs: two workers would share a card. "
                         f"Use -n auto (one worker per GPU).")
        config.option.device = "cuda:0"  # its card alone is visible (narrow_workers)
    cores = cores_for(index, workers, sorted(os.sched_getaffinity(0)))
    if cores:
        os.sched_setaffinity(0, cores)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Settle the run's mode and everything the gate needs before any test runs: anything missing is a usage error."""
    if config.getoption("--expandable-segments", default=False):
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
    if not hasattr(config.option, "benchmark_compare"):
        return  # pytest-benchmark is not loaded (-p no:benchmark)
    # The gate reads the baseline itself, fail-closed: pytest-benchmark's own comparison falls back to an older
    # file when the newest is corrupt and compares against nothing when it is empty.
    pick, config.option.benchmark_compare = config.option.benchmark_compare, []  # [] = not given
    compare = pick != []
    recording = bool(config.option.benchmark_save or config.option.benchmark_autosave)
    if _is_worker(config) or _is_controller(config):
        # pytest-benchmark warns that it turns itself off under xdist; pytest_sessionstart turns it back on.
        warnings.filterwarnings("ignore", message="Benchmarks are automatically disabled because xdist")
    if _is_worker(config):
        _own_gpu(config)
        # A worker parses the command line afresh: the controller's --dist=loadgroup (below) comes in workerinput.
        config.option.loadgroup = config.option.loadgroup or config.workerinput.get("decode_gate_loadgroup", False)
    if _is_controller(config) and config.option.dist == "load":
        # xdist's default for -n: instead, the groups test_perf marks (grids.xdist_group), so that the rows
        # sharing a compiled step run in one worker, and a recording's naive row beside its grid point.
        config.option.dist = "loadgroup"
    on_cuda = _on_cuda(config)
    card = torch.cuda.get_device_name(torch.device(config.getoption("--device"))) if on_cuda else "cpu"
    explicit = config.option.benchmark_storage != DEFAULT_STORAGE
    if not explicit:  # key the storage by card before pytest-benchmark opens it (its own key is only OS/Python)
        config.option.benchmark_storage = f"file://{store.BASELINES / store.slug(card)}"
    from pytest_benchmark.utils import get_machine_id

    storage = Path(config.option.benchmark_storage.removeprefix("file://")) / get_machine_id()
    g = Gate(compare, recording, card, storage, parse_injected(config.getoption("--inject-slowdown")),
             rounds=config.getoption("--ab-rounds"))
    ref = config.getoption("--ab-base")
    if g.rounds < gate.FLAG_ROUNDS:
        raise usage(f"--ab-rounds={g.rounds}: a regression is called on >= {gate.FLAG_ROUNDS} paired rounds, so a "
                     f"row needs at least that many")
    if ref is not None and not compare:
        raise usage(f"--ab-base={ref} names the base arm of the gate: add --benchmark-compare")
    if (compare or recording) and not on_cuda and not explicit:
        raise usage("the stored baselines in perf/baselines/ are GPU timings: comparing with them or recording one "
                     "needs CUDA (this machine has none). The CPU test run needs neither.")
    if config.getoption("--trace-steps"):
        try:
            g.trace = trace.parse_window(config.getoption("--trace-steps"))
        except ValueError as e:
            raise usage(str(e)) from None
        if compare or recording:
            raise usage("--trace-steps profiles each row after its timings, and a profiler can leave CUPTI attached, "
                        "which slows the rows timed after it: trace in a run of its own, not in a gate or a recording")
    if recording and (compare or g.injected):
        raise usage("a baseline is recorded alone: drop --benchmark-compare and --inject-slowdown")
    try:
        if recording:
            g.generators_tree = store.check_recordable()
        if compare:
            set_up_gate(g, pick, ref)
    except store.GateError as e:
        raise usage(str(e)) from None
    config.stash[GATE] = g
    config.stash[ROWS] = []
    config.stash[FAILED] = FailedRows(g, config.getoption("--rows-log"))
    if (compare or recording) and not _is_worker(config):
        config.pluginmanager.register(config.stash[FAILED], "decode_gate_failed_rows")


def pytest_unconfigure(config: pytest.Config) -> None:
    g = config.stash.get(GATE, None)
    if g is not None and g.base is not None:
        ab.close(g.base)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A gate or recording run times the grid and nothing else: the unit tests belong to the test command."""
    g = config.stash.get(GATE, None)
    if g is None or not (g.compare or g.recording):
        return
    timed = [item for item in items if getattr(item, "originalname", None) == "test_generate"]
    if len(timed) < len(items):
        others = [item for item in items if getattr(item, "originalname", None) != "test_generate"]
        config.hook.pytest_deselected(items=others)
        items[:] = timed
    if g.compare and _is_worker(config):  # the order xdist hands the rows out in (grids.handout_order says why)
        point = lambda item: tuple(item.callspec.params[k] for k in ("variant", "batch", "new_tokens", "dtype"))  # noqa: E731
        rank = {p: i for i, p in enumerate(handout_order([point(item) for item in items]))}
        items.sort(key=lambda item: rank[point(item)])


@pytest.fixture(scope="session")
def perf_gate(pytestconfig: pytest.Config) -> Gate:
    return pytestconfig.stash[GATE]


def grid_for(config: pytest.Config) -> str:
    if config.getoption("--perf-grid"):
        return config.getoption("--perf-grid")
    g = config.stash.get(GATE, None)
    if g is not None and g.compare:
        return "gate"
    return "full" if _on_cuda(config) else "smoke"


@pytest.fixture(scope="session")
def models_by_dtype(device: torch.device):
    """GPT-2 small on CUDA (the post's model), tiny GPT-2 on CPU; built once per dtype. The first build freezes
    the heap (freeze_heap)."""
    built: dict[str, torch.nn.Module] = {}

    def get(dtype: str) -> torch.nn.Module:
        # Imported here: the model classes take seconds to import, and an xdist controller, which builds no model,
        # imports this file before it starts its workers
        from generators import models  # noqa: PLC0415

        if dtype not in built:
            built[dtype] = models.build("gpt2-small" if device.type == "cuda" else "tiny-gpt2", dtype=dtype,
                                        device=device)
            if len(built) == 1:
                freeze_heap()
        return built[dtype]

    return get


def freeze_heap() -> None:
    """Take what is alive before the first row (torch, transformers, both arms' packages, the model) out of the
    collector's sight. Each row runs six full collections (ab.release, ab.arm_peaks), and scanning these objects,
    380 thousand on the CPU machine, took 0.25 s each there. No row's sessions exist yet, so none is frozen: a
    frozen cycle is never collected."""
    gc.collect()
    gc.freeze()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    g = config.stash[GATE]
    device = torch.device(config.getoption("--device"))
    machine_info["decode_gate"] = bench.machine_info(device) | {"grid": grid_for(config),
                                                                "generators_tree": g.generators_tree}


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None and _is_worker(session.config):
        # pytest-benchmark turns itself off under xdist; here each worker owns a GPU, so its timings stand. The
        # controller saves and reports what the workers send back.
        bs.disabled = False
        bs.save = bs.autosave = bs.json = None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A worker sends its rows to the controller; the controller (or the only process) saves them and judges."""
    config = session.config
    g = config.stash.get(GATE, None)
    bs = getattr(config, "_benchmarksession", None)
    if g is None or bs is None or config.option.collectonly:  # --collect-only lists the rows; there is nothing to judge
        return
    if _is_worker(config):
        config.workeroutput["decode_gate_rows"] = json.dumps(_timed(bs), default=str)
        return
    if _is_controller(config):
        benchmarks = config.stash[ROWS]
        save_merged(config, bs, benchmarks)
    else:
        benchmarks = _timed(bs)
    if g.compare:
        ok, g.report = report.gate_report(g, benchmarks, grid_for(config), workers=_workers(config),
                                          span=(g.started_at, time.time()), failed=config.stash[FAILED].rows)
        if config.getoption("--gate-report"):
            Path(config.getoption("--gate-report")).write_text(g.report)
        if not ok:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _timed(bs) -> list[dict]:
    """pytest-benchmark's rows as dicts, less those of tests that raised before a timed round (no data to save)."""
    return [b.as_dict(include_data=True) for b in bs.benchmarks if b.stats.data]


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    g = config.stash.get(GATE, None)
    if g is not None and g.report:  # last, below pytest-benchmark's table
        terminalreporter.write_line("\n" + g.report, red="**GATE FAILED**" in g.report or "**NO BASELINE" in g.report)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    rows = getattr(node, "workeroutput", {}).get("decode_gate_rows")
    if rows:
        node.config.stash[ROWS].extend(json.loads(rows))


def _workers(config: pytest.Config) -> int:
    return int(config.getoption("numprocesses", 0) or 0) if _is_controller(config) else 1


