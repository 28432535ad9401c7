"""The gate end to end on CPU, as a user runs it (pytest in a subprocess): it judges, and it fails closed.

CPU runs may only use a baseline folder given with --benchmark-storage: perf/baselines/ holds GPU timings.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from generators import GENERATORS

from . import gate, store
from .grids import GRIDS, handout_order, xdist_group
from .record import Row
from .report import main as report_main
from .report import read_rows, time_spent
from .run import cores_for, cpu_list, narrow_workers, parse_injected, visible_cards

ROOT = Path(__file__).resolve().parents[1]
ROWS = "b4-n16 and (naive or kv_static)"
pytestmark = pytest.mark.skipif(store.generators_tree("HEAD") is None, reason="not a git checkout with generators/")


def run(*args: str, timeout: int = 600) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pytest", "perf/test_perf.py", "--device=cpu", "-p", "no:cacheprovider", "-q",
           *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def storage(tmp_path: Path) -> tuple[str, Path]:
    """A baseline folder holding a CPU baseline of HEAD's generators/ (written here: recording needs a clean tree)."""
    from pytest_benchmark.utils import get_machine_id

    folder = tmp_path / "baselines" / get_machine_id()
    folder.mkdir(parents=True)
    rows = [{"name": f"test_generate[{v}-b4-n16-float32]", "stats": {"data": [0.02, 0.021, 0.019]}}
            for v in ("naive", "kv_static")]
    data = {"machine_info": {"decode_gate": {"generators_tree": store.generators_tree("HEAD")}},
            "commit_info": {"id": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                                 text=True, check=True).stdout.strip()},
            "datetime": "2026-11-30T12:00:00", "benchmarks": rows}
    (folder / "0001_baseline.json").write_text(json.dumps(data))
    return f"--benchmark-storage=file://{tmp_path / 'baselines'}", folder


def test_the_gate_flags_an_injected_slowdown_and_judges_every_selected_row(storage, tmp_path: Path) -> None:
    option, _ = storage
    report = tmp_path / "gate.md"
    rc, out = run(option, "--benchmark-compare", "--perf-grid=smoke", "-k", ROWS, "--inject-slowdown=naive:0.5",
                  "--ab-rounds=15", f"--gate-report={report}", f"--benchmark-json={tmp_path / 'gate.json'}")
    assert rc == pytest.ExitCode.TESTS_FAILED, out
    text = report.read_text()
    assert "GATE FAILED" in out and "the commit the stored baseline timed" in text, text
    assert "machine_info is different" not in out  # pytest-benchmark's several-KB warning: the gate reads baselines
    verdicts = dict(re.findall(r"^\| test_generate\[(\S+)-b4-n16-float32\] \| ([^|]+?) \|", text, flags=re.M))
    assert verdicts["naive"] == gate.REGRESSED, text
    # The untouched row is judged too; its verdict is not asserted: a shared 2-core CI machine is not a GPU.
    assert verdicts.keys() == {"naive", "kv_static"}, text
    assert "10 rows of the smoke grid were not selected" in text
    for b in json.loads((tmp_path / "gate.json").read_text())["benchmarks"]:  # every judged round is in the JSON
        info = b["extra_info"]
        assert len(info["base_s"]) == len(info["candidate_s"]), info
        assert re.search(rf"^\| {re.escape(b['name'])} \|.* \| {len(info['candidate_s'])} \|$", text, flags=re.M)


def test_collect_only_lists_the_gates_rows_without_a_verdict(storage) -> None:
    option, _ = storage
    rc, out = run(option, "--benchmark-compare", "--perf-grid=smoke", "--collect-only")
    assert rc == 0 and "test_generate[naive-b4-n16-float32]" in out and "Perf gate" not in out, out


def test_a_stopped_runs_rows_can_still_be_judged(storage, tmp_path: Path) -> None:
    option, _ = storage
    rows = tmp_path / "rows.jsonl"
    rc, out = run(option, "--benchmark-compare", "--perf-grid=smoke", "-k", "b4-n16 and naive",
                  "--inject-slowdown=naive:0.5", "--ab-rounds=15", f"--rows-log={rows}")
    assert rc == pytest.ExitCode.TESTS_FAILED, out
    result = subprocess.run([sys.executable, "-m", "perf.report", str(rows)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "naive-b4-n16-float32] | regressed" in result.stdout, result.stdout
    stopped = subprocess.run([sys.executable, "-m", "perf.report", "--stopped", str(rows)], cwd=ROOT,
                             capture_output=True, text=True)
    assert stopped.stdout.startswith("### Perf gate stopped before its report\n\n**GATE FAILED**"), stopped.stdout
    info = json.loads(rows.read_text().splitlines()[0])["extra_info"]
    assert info["warmup_s"] > 0 and info["wall_s"] > info["warmup_s"] + sum(info["candidate_s"]) + sum(info["base_s"])


def test_the_xdist_controller_imports_no_model_classes() -> None:
    """A controller imports perf/conftest.py before it starts its workers and builds no model, so the model classes
    (4 s of imports on a 2-core CPU) stay out of it: a two-worker smoke run took 22.4-23.3 s with them, 18.0-19.3
    without (perf/test_perf.py -n 2, 2026-12-01)."""
    code = "import sys, perf.conftest; print(sorted(m for m in ('generators.models',) if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "two workers"])
def test_a_row_that_raises_fails_the_gate_by_name_and_its_error_is_in_the_rows_log(workers: list[str], storage,
                                                                                   tmp_path: Path) -> None:
    if workers:
        pytest.importorskip("xdist")
    option, _ = storage
    report, rows = tmp_path / "gate.md", tmp_path / "rows.jsonl"
    # On a CPU, lean_graph raises (a CUDA-graph loop); lean_eager is judged beside it.
    rc, out = run(option, "--benchmark-compare", "--perf-grid=gate", "-k", "b1-n100 and lean", "--ab-rounds=15",
                  *workers, f"--gate-report={report}", f"--rows-log={rows}")
    assert rc == pytest.ExitCode.TESTS_FAILED and "Traceback" not in out and "INTERNALERROR" not in out, out
    text = report.read_text()
    error = "lean_graph-b1-n100-float32]: ValueError: this generator requires a CUDA model"
    assert "1 rows raised before their verdict" in text and error in text and "Gate passed" not in text, text
    assert "24 rows of the gate grid were not selected" in text, text  # the failed row was selected
    assert "| test_generate[lean_eager-b1-n100-float32] |" in text, text
    logged = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [e["name"] for e in logged if "failed" in e] == ["test_generate[lean_graph-b1-n100-float32]"], logged
    stopped = subprocess.run([sys.executable, "-m", "perf.report", "--stopped", str(rows)], cwd=ROOT,
                             capture_output=True, text=True)
    assert stopped.returncode == 1 and error in stopped.stdout, stopped.stdout


def test_one_worker_per_device_gives_one_merged_report(storage, tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    option, _ = storage
    rc, out = run(option, "--benchmark-compare", "--perf-grid=smoke", "-k", ROWS, "--inject-slowdown=naive:0.5",
                  "--ab-rounds=15", "-n", "2", f"--benchmark-json={tmp_path / 'gate.json'}")
    assert rc == pytest.ExitCode.TESTS_FAILED, out
    assert "x 2" in out and "naive-b4-n16-float32] | regressed" in out and "kv_static-b4-n16-float32] |" in out
    benchmarks = json.loads((tmp_path / "gate.json").read_text())["benchmarks"]
    assert {b["name"] for b in benchmarks} == {"test_generate[naive-b4-n16-float32]",
                                               "test_generate[kv_static-b4-n16-float32]"}
    assert {b["extra_info"]["worker"] for b in benchmarks} <= {"gw0", "gw1"}  # the report's rows per worker


def test_recording_under_workers_writes_one_baseline(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    if store.generators_dirty():
        pytest.skip("generators/ differs from HEAD here: recording is refused (test_recording_a_dirty_tree...)")
    rc, out = run(f"--benchmark-storage=file://{tmp_path}", "--benchmark-save=baseline", "--benchmark-save-data",
                  "-k", ROWS, "-n", "2")
    assert rc == 0, out
    [path] = tmp_path.glob("*/0001_baseline.json")
    assert store.latest(path.parent, "cpu").samples.keys() == {"test_generate[naive-b4-n16-float32]",
                                                               "test_generate[kv_static-b4-n16-float32]"}
    # One grid point, one worker: kv_static's speedup has naive's median beside it (NaN on another worker).
    speedups = {b["name"]: b["extra_info"]["speedup_vs_naive"] for b in json.loads(path.read_text())["benchmarks"]}
    assert math.isfinite(speedups["test_generate[kv_static-b4-n16-float32]"]), out


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "two workers"])
def test_a_recording_with_a_row_that_raises_saves_no_baseline(workers: list[str], tmp_path: Path) -> None:
    if workers:
        pytest.importorskip("xdist")
    if store.generators_dirty():
        pytest.skip("generators/ differs from HEAD here: recording is refused (test_recording_a_dirty_tree...)")
    rc, out = run(f"--benchmark-storage=file://{tmp_path}", "--benchmark-save=baseline", "--perf-grid=gate",
                  "-k", "b1-n100 and lean", *workers)  # on a CPU, lean_graph raises
    assert rc == pytest.ExitCode.TESTS_FAILED and "NO BASELINE SAVED**: 1 rows raised" in out, out
    assert not list(tmp_path.rglob("*.json")), out


@pytest.mark.parametrize("args, message", [
    (["--benchmark-compare"], "needs CUDA"),
    (["--benchmark-save=baseline"], "needs CUDA"),
    (["--ab-base=self"], "add --benchmark-compare"),
    (["--ab-rounds=10"], "at least that many"),
    (["--inject-slowdown=naive:inf"], "share in (0, 10]"),
    (["--trace-steps=5:3"], "wants START:STOP"),
    (["--trace-steps=3:6", "--benchmark-save=b", "--benchmark-storage=file:///nonexistent"],
     "trace in a run of its own"),
])
def test_runs_the_gate_cannot_make_are_refused_before_any_work(args: list[str], message: str) -> None:
    rc, out = run(*args, "--collect-only")
    assert rc == pytest.ExitCode.USAGE_ERROR and message in out and "Traceback" not in out, out


@pytest.mark.parametrize("case, message", [
    ("corrupt", "cannot be read as a baseline"),
    ("empty", "holds no benchmarks"),
    ("bands", "does not parse"),
    ("unknown commit", "fetch it"),
    ("no baseline", "no stored baseline"),
])
def test_a_gate_without_what_it_needs_fails_closed(case: str, message: str, storage) -> None:
    option, folder = storage
    newest = folder / "0002_baseline.json"
    data = json.loads((folder / "0001_baseline.json").read_text())
    if case == "corrupt":
        newest.write_text("{not json")
    elif case == "empty":
        newest.write_text(json.dumps(data | {"benchmarks": []}))
    elif case == "bands":
        (folder.parent / store.BANDS).write_text("{oops")
    elif case == "unknown commit":
        newest.write_text(json.dumps(data | {"commit_info": {"id": "0123456789abcdef" * 2 + "01234567"}}))
    elif case == "no baseline":
        (folder / "0001_baseline.json").unlink()
    rc, out = run(option, "--benchmark-compare", "--perf-grid=smoke", "-k", ROWS)
    assert rc == pytest.ExitCode.USAGE_ERROR and message in out and "Traceback" not in out, out


def test_trace_puts_the_host_wait_of_each_row_in_its_record(tmp_path: Path) -> None:
    rc, out = run("-k", "b4-n16 and (kv_static or naive)", "--trace-steps=3:6",
                  f"--benchmark-json={tmp_path / 'r.json'}")
    assert rc == 0, out
    infos = [b["extra_info"] for b in json.loads((tmp_path / "r.json").read_text())["benchmarks"]]
    assert len(infos) == 2 and all(i["host_wait_us_per_step"] is not None for i in infos), infos
    assert all(i["gpu_idle_share"] is None for i in infos)  # on CPU: no device to be idle


def test_a_selection_that_leaves_nothing_to_judge_fails(storage) -> None:
    option, _ = storage
    rc, out = run(option, "--benchmark-compare", "--perf-grid=smoke", "-k", "nothing_is_called_this")
    assert rc != 0 and "cannot judge" in out, out


def test_recording_a_dirty_tree_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "generators_dirty", lambda repo=store.ROOT: ["generators/loop.py"])
    with pytest.raises(store.GateError, match="commit first"):
        store.check_recordable()


@pytest.mark.parametrize("spec", ["naive:inf", "naive:-5", "naive:nan", "naive:abc", "naive:0", "naive:11", "nope:0.1",
                                  "naive"])
def test_bad_injected_slowdowns_are_usage_errors(spec: str) -> None:
    with pytest.raises(pytest.UsageError, match=re.escape(repr(spec))):
        parse_injected(f"kv_static:0.1,{spec}")


def test_injected_slowdowns_parse() -> None:
    assert parse_injected("naive:0.5,kv_static:10") == {"naive": 0.5, "kv_static": 10.0}


def test_cpu_lists_parse_as_the_kernel_writes_them() -> None:
    assert cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert cpu_list("5") == {5}


def test_workers_get_whole_physical_cores() -> None:
    # 4 cores with 2 threads each, numbered as Linux does on x86: CPU n and n + 4 share a core.
    pairs = lambda cpu: {cpu % 4, cpu % 4 + 4}  # noqa: E731
    cpus = list(range(8))
    assert [cores_for(i, 2, cpus, pairs) for i in range(2)] == [[0, 4, 1, 5], [2, 6, 3, 7]]
    assert cores_for(0, 1, cpus, pairs) == [0, 4, 1, 5, 2, 6, 3, 7]
    assert cores_for(1, 2, [0, 1, 2], lambda cpu: {cpu}) == [1]  # no SMT: one CPU a core, the odd one left idle
    assert cores_for(2, 3, [0, 4], pairs) == []  # fewer cores than workers: leave the affinity alone


def test_each_worker_sees_its_card_alone() -> None:
    # Worker N computes on cuda:0 with card N alone visible: compiled code's cache keys hold the device index.
    assert visible_cards(None, 2) == ["0", "1"]
    assert visible_cards("3, 5,7", 2) == ["3", "5"]  # CUDA sees 2 of them: the first two are the cards
    assert visible_cards("GPU-1a2b,GPU-3c4d", 2) == ["GPU-1a2b", "GPU-3c4d"]
    execnet = pytest.importorskip("execnet")  # pytest-xdist's transport
    specs = [execnet.XSpec("popen"), execnet.XSpec("popen"), execnet.XSpec("popen")]
    narrow_workers(specs, ["3", "5"])
    assert [spec.env.get("CUDA_VISIBLE_DEVICES") for spec in specs] == ["3", "5", None]  # the third one refuses


def test_the_gate_splits_a_grid_point_by_compiled_step() -> None:
    gate_grid = GRIDS["gate"]
    groups = {p: xdist_group(*p, gate=True) for p in gate_grid}
    by_group: dict[str, set[str]] = {}
    for (variant, *_), group in groups.items():
        by_group.setdefault(group, set()).add(variant)
    compiled = {v for v, g in GENERATORS.items() if g.compiles}
    for variants in by_group.values():  # a compiled step's variants together, everything else alone
        assert len(variants) == 1 or variants <= compiled and len({GENERATORS[v].cache for v in variants}) == 1
    assert {"static_compiled", "cuda_graph", "pipelined"} <= next(v for v in by_group.values() if "cuda_graph" in v)
    assert len({xdist_group(*p, gate=False) for p in gate_grid}) == 2  # a recording: one group a grid point


def test_a_recording_hands_out_its_longest_grid_points_first() -> None:
    """xdist gives out a recording's grid points in collection order; the longest (most new tokens) go first, so
    the last one out is short."""
    tokens = [n for _, _, n, dtype in GRIDS["full"] if dtype == "float32"]
    assert tokens == sorted(tokens, reverse=True)


def test_the_gate_hands_out_its_short_cuda_graph_rows_last() -> None:
    """Under xdist a worker holds rows queued behind the one it runs: the compiled-step groups go out first, the
    host-bound rows next, the CUDA-graph rows (a few seconds each) last."""
    points = GRIDS["gate"]
    order = handout_order(points)
    assert sorted(order) == sorted(points)
    sizes = Counter(xdist_group(*p, gate=True) for p in points)
    kinds = ["group" if sizes[xdist_group(*p, gate=True)] > 1 else "graph" if GENERATORS[p[0]].captured else "host"
             for p in order]
    assert kinds == sorted(kinds, key=["group", "host", "graph"].index), list(zip(order, kinds, strict=True))
    assert kinds[-1] == "graph" and "host" in kinds


def test_the_report_says_where_the_rows_time_went() -> None:
    row = lambda **kw: Row("v", 1, 8, "float32", gate.HOST, candidate_s=[1.0, 2.0], base_s=[1.0, 1.0], **kw)  # noqa: E731
    line = time_spent([row(wall_s=20.0, warmup_s=9.0, peaks_s=4.0), row(wall_s=10.0, warmup_s=1.0), row()])
    assert line.startswith("Time: the rows took 30 s in all: 10 s in timed rounds, 10 s in warm-up rounds")
    assert "4 s in peak-memory passes, 6 s in the rest" in line
    assert time_spent([row()]) is None  # no wall time measured: nothing to say
    assert "per worker" not in line  # one process: nothing to spread
    spread = time_spent([row(wall_s=20.0, worker="gw1"), row(wall_s=10.0, worker="gw0"), row(wall_s=5.0, worker="gw0")])
    assert spread.endswith("Rows per worker: gw0 15 s, gw1 20 s.")
    # Set-up at 100 s; rows from 112 s to 140 s (gw0 from 112 s, gw1 from 120 s); the run ended at 143 s.
    timed = [row(wall_s=20.0, worker="gw1", started_at=120.0), row(wall_s=10.0, worker="gw0", started_at=112.0)]
    assert time_spent(timed, (100.0, 143.0)).endswith("Outside the rows: 12 s from the set-up to the first row "
                                                       "(workers' start-up, imports, the base arm, collection), 3 s "
                                                       "after the last.")
    assert "Outside" not in time_spent(timed)  # no span: the run's ends are not known
    alone = time_spent([row(wall_s=20.0, started_at=101.0)], (100.0, 121.0))  # one process: no workers to start
    assert alone.endswith("Outside the rows: 1 s from the set-up to the first row (collection), 0 s after the last.")


def test_a_rows_log_cut_by_a_kill_still_gives_a_report(tmp_path: Path, capsys) -> None:
    row = Row("naive", 1, 8, "float32", gate.HOST, candidate_s=[1.0] * 5, base_s=[1.0] * 5)
    whole = json.dumps({"name": "test_generate[naive-b1-n8-float32]", "extra_info": row.info()}) + "\n"
    log = tmp_path / "rows.jsonl"
    log.write_text(whole + whole[:40])  # the kill came while the second row was being written
    assert len(read_rows(log)) == 1
    assert "its last line is cut short" in capsys.readouterr().err
    log.write_text(whole[:40] + "\n" + whole)  # a cut line that is not the last: the log is corrupt
    with pytest.raises(ValueError):
        read_rows(log)
    # --stopped never leaves the summary empty: the header stays, with the reason the rows could not be read.
    assert report_main(["--stopped", str(tmp_path / "missing.jsonl")]) == 2
    out = capsys.readouterr().out
    assert out.startswith("### Perf gate stopped before its report") and "could not be read either" in out
    # A stopped run did not pass, though every row it judged did: its report says GATE FAILED, and so does its exit.
    log.write_text(whole)
    assert report_main([str(log)]) == 0
    assert report_main(["--stopped", str(log)]) == 1
    assert "GATE FAILED" in capsys.readouterr().out
