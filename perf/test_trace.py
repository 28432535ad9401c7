"""--trace (generators/trace.py, timeline.py, profiling.TraceProfiler): the metrics on synthetic events, the Chrome
trace reader on a synthetic trace, the timeline's pixels, and the main job end to end on the CPU's tiny grid."""

from __future__ import annotations

import json

import pytest
import torch

from generators import __main__ as main_job
from generators import bench, models, profiling, report
from generators.timeline import IDLE, KERNEL_COLORS, STEP_COLORS, WAIT, Row, write_timeline
from generators.trace import (
    COPY,
    KERNEL,
    STEP,
    SYNC,
    Event,
    clip,
    events_from_chrome,
    parse_window,
    summarize,
    trace_generation,
    union_us,
)

from .test_plot import read_png


def synthetic_run(steps: int, kernels: int, kernel_us: float, launch_us: float, wait_for: int,
                  graph: bool = False, first: int = 30) -> list[Event]:
    """Events shaped like a GPU decode loop: the host launches `kernels` kernels a step (launch_us each, or one CUDA
    graph launch), then waits for step i - wait_for (0: the post's .item() every step; 1: deferred, one step late),
    then spends 30 us in Python. The device runs each kernel once it is launched and the previous one is done."""
    events: list[Event] = []
    host = gpu = 0.0
    done: dict[int, float] = {}
    for s in range(first, first + steps):
        step_start = host
        host += 10.0 if graph else 0.0
        for _ in range(kernels):
            if not graph:
                host += launch_us
            start = max(gpu, host + 5.0)  # 5 us from launch to the device
            events.append(Event("gemv", KERNEL, start, start + kernel_us, s))
            gpu = start + kernel_us + 0.3
        events.append(Event("Memcpy DtoH (Device -> Pinned)", COPY, gpu, gpu + 2.0, s))
        done[s] = gpu = gpu + 2.0
        ready = done.get(s - wait_for, host)
        if ready > host + 4.0:
            events.append(Event("cudaStreamSynchronize", SYNC, host + 4.0, ready, s))
            host = ready
        host += 30.0
        events.append(Event(f"decode step {s}", STEP, step_start, host, s))
    return events


# --- Metrics ---------------------------------------------------------------------------------------------------

def test_union_counts_overlaps_once_and_clip_cuts_to_the_window() -> None:
    assert union_us([(0, 10), (5, 15), (20, 30), (22, 25)]) == 25
    assert union_us([]) == 0
    assert clip([(0, 10), (5, 15), (20, 30)], 8, 22) == [(8, 10), (8, 15), (20, 22)]
    assert clip([(0, 5)], 5, 9) == []


def hand_made() -> list[Event]:
    """Three steps (10, 11, 12). The device window runs from step 10's first kernel (100) to step 12's (400)."""
    return [
        Event("decode step 10", STEP, 90, 240, 10), Event("decode step 11", STEP, 240, 390, 11),
        Event("decode step 12", STEP, 390, 520, 12),
        Event("old", KERNEL, 60, 120, None),  # launched before the window: busy time, not counted per step
        Event("a", KERNEL, 100, 180, 10), Event("b", KERNEL, 180, 200, 10),
        Event("copy", COPY, 220, 230, 10),
        Event("a", KERNEL, 250, 330, 11), Event("b", KERNEL, 330, 350, 11),
        Event("a", KERNEL, 400, 480, 12), Event("b", KERNEL, 480, 500, 12),
        Event("cudaStreamSynchronize", SYNC, 150, 200, 10),
        Event("cudaStreamSynchronize", SYNC, 300, 350, 11), Event("cudaEventSynchronize", SYNC, 340, 350, 11),
        Event("cudaStreamSynchronize", SYNC, 20, 80, None),  # before the first step: outside the window
    ]


def test_summarize_hand_made_window() -> None:
    s = summarize(hand_made(), device=True)
    assert s["steps"] == 3 and s["step_us"] == pytest.approx((520 - 90) / 3)
    # busy in [100, 400): 100-200, 220-230, 250-350 = 210 of 300
    assert s["idle_window"] == "device" and s["gpu_idle_share"] == pytest.approx(1 - 210 / 300)
    assert s["host_wait_us_per_step"] == pytest.approx((50 + 50) / 3)  # the nested 340-350 counted once
    assert s["syncs_per_step"] == pytest.approx(3 / 3)
    assert s["kernels_per_step"] == 2 and s["kernel_us_per_step"] == 100  # copies and "old" are not counted


def test_without_device_activity_the_device_numbers_are_none() -> None:
    s = summarize([e for e in hand_made() if e.kind in (STEP, SYNC)], device=False)
    assert s["steps"] == 3 and s["host_wait_us_per_step"] == pytest.approx(100 / 3)
    assert s["gpu_idle_share"] is s["kernels_per_step"] is s["kernel_us_per_step"] is s["idle_window"] is None


def test_kernels_not_tied_to_steps_fall_back_to_the_host_window() -> None:
    events = [e._replace(step=None) if e.kind in (KERNEL, COPY) else e for e in hand_made()]
    s = summarize(events, device=True)
    # host window [90, 520): busy 90-200, 220-230, 250-350, 400-500 = 320 of 430
    assert s["idle_window"] == "host" and s["gpu_idle_share"] == pytest.approx(1 - 320 / 430)
    assert s["kernels_per_step"] == 0


def test_no_step_in_the_trace() -> None:
    s = summarize([Event("a", KERNEL, 0, 10, None)], device=True)
    assert s["steps"] == 0 and s["gpu_idle_share"] is None and s["host_wait_us_per_step"] is None


@pytest.mark.parametrize("graph", [False, True])
def test_waiting_every_step_idles_the_device_more_than_waiting_one_step_late(graph: bool) -> None:
    """The post's finding on synthetic runs: the .item() every step leaves the device idle while the host checks
    and queues the next step; reading the flag one step late keeps it fed."""
    kw = dict(steps=20, kernels=60, kernel_us=4.0, launch_us=2.0, graph=graph)
    every, late = summarize(synthetic_run(wait_for=0, **kw), True), summarize(synthetic_run(wait_for=1, **kw), True)
    assert every["kernels_per_step"] == late["kernels_per_step"] == 60
    assert every["gpu_idle_share"] > late["gpu_idle_share"] + 0.05
    assert every["host_wait_us_per_step"] > late["host_wait_us_per_step"]


# --- The Chrome trace reader ---------------------------------------------------------------------------------

def _x(cat: str, name: str, ts: float, dur: float, corr: int | None = None) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": 1,
            "args": {} if corr is None else {"correlation": corr}}


def test_events_from_chrome() -> None:
    trace = {"traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "python"}},
        _x("user_annotation", "ProfilerStep#5", 0, 300),
        _x("user_annotation", "decode step 5", 10, 200), _x("user_annotation", "decode step 6", 210, 200),
        _x("gpu_user_annotation", "decode step 5", 30, 150),  # the device's copy of the range: not a step
        _x("user_annotation", "Model Forward", 12, 20),
        _x("cuda_runtime", "cudaLaunchKernel", 20, 3, corr=1), _x("kernel", "gemv", 25, 40, corr=1),
        _x("cuda_runtime", "cudaGraphLaunch", 220, 8, corr=2),
        _x("kernel", "k0", 230, 5, corr=2), _x("kernel", "k1", 236, 5, corr=2),  # a graph's kernels
        _x("cuda_runtime", "cudaMemcpyAsync", 40, 2, corr=3), _x("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)",
                                                                 70, 1, corr=3),
        _x("cuda_runtime", "cudaMemcpyAsync", 250, 30, corr=4),  # into pageable memory: blocks
        _x("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", 275, 1, corr=4),
        _x("cuda_runtime", "cudaStreamSynchronize", 45, 60, corr=5),
        _x("kernel", "late", 500, 5, corr=99),  # launched outside the window
        {"ph": "X", "cat": "kernel", "name": "no duration", "ts": 1},
    ]}
    events = events_from_chrome(trace)
    steps = sorted((e.step, e.start_us, e.end_us) for e in events if e.kind == STEP)
    assert steps == [(5, 10, 210), (6, 210, 410)]
    kernels = {e.name: e.step for e in events if e.kind == KERNEL}
    assert kernels == {"gemv": 5, "k0": 6, "k1": 6, "late": None}
    assert sorted((e.name, e.step) for e in events if e.kind == COPY) == [
        ("Memcpy DtoH (Device -> Pageable)", 6), ("Memcpy DtoH (Device -> Pinned)", 5)]
    assert sorted((e.name, e.start_us, e.step) for e in events if e.kind == SYNC) == [
        ("cudaMemcpyAsync", 250, 6), ("cudaStreamSynchronize", 45, 5)]


def test_trace_window_is_checked() -> None:
    assert parse_window("30:50") == (30, 50)
    for bad in ("0:5", "5:5", "7:3", "5", "a:b"):
        with pytest.raises(ValueError, match="wants START:STOP"):
            parse_window(bad)
    with pytest.raises(ValueError, match="trace window"), profiling.tracing((0, 4), False, print):
        pass


# --- The timeline --------------------------------------------------------------------------------------------

def test_timeline_pixels_land_where_the_events_say(tmp_path) -> None:
    events = hand_made()
    rows = [Row("every_step", events, "GPU idle 30%"), Row("no device", [e for e in events if e.kind == STEP],
                                                             device=False)]
    path = tmp_path / "t.png"
    lay = write_timeline(path, "synthetic", rows, steps=2)
    width, height, pixels = read_png(path)
    assert (width, height) == lay.size and width >= 1400 and height > 200

    def px(row: int, t_us: float, lane: str) -> tuple[int, int, int]:
        y0, y1 = (lay.host_lanes if lane == "host" else lay.gpu_lanes)[row]
        x, y = int(lay.x(row, t_us)), (y0 + y1) // 2
        return tuple(pixels[y][3 * x:3 * x + 3])

    assert lay.origins_us == [90, 90]
    assert px(0, 140, "gpu") == KERNEL_COLORS[10 % 2]  # step 10's kernel a
    assert px(0, 290, "gpu") == KERNEL_COLORS[11 % 2]  # step 11's kernel a
    assert px(0, 210, "gpu") == IDLE and px(0, 240, "gpu") == IDLE  # the gaps around the copy
    assert px(0, 175, "host") == WAIT  # the sync 150-200
    assert px(0, 120, "host") == STEP_COLORS[10 % 2] and px(0, 260, "host") == STEP_COLORS[11 % 2]
    y0, y1 = lay.gpu_lanes[1]  # no device trace: the lane shows no idle
    assert all(tuple(pixels[y][i:i + 3]) != IDLE for y in range(y0, y1) for i in range(0, 3 * width, 3))


def test_timeline_of_gpu_shaped_runs(tmp_path) -> None:
    """Four rows as the post's loops would draw; every kernel of the drawn steps lands in its lane."""
    kw = dict(steps=6, kernels=40, kernel_us=5.0, launch_us=6.0)
    runs = {"static_compiled": synthetic_run(wait_for=0, **kw), "pipelined": synthetic_run(wait_for=1, **kw),
            "cuda_graph": synthetic_run(wait_for=0, graph=True, **kw),
            "cuda_graph_deferred": synthetic_run(wait_for=1, graph=True, **kw)}
    rows = [Row(name, ev, f"GPU idle {summarize(ev, True)['gpu_idle_share']:.1%}") for name, ev in runs.items()]
    path = tmp_path / "t.png"
    lay = write_timeline(path, "synthetic GPU runs", rows, steps=3)
    _, _, pixels = read_png(path)
    for i, events in enumerate(runs.values()):
        y = sum(lay.gpu_lanes[i]) // 2
        for e in events:
            if e.kind == KERNEL and e.step in (30, 31):
                x = int(lay.x(i, (e.start_us + e.end_us) / 2))
                assert tuple(pixels[y][3 * x:3 * x + 3]) == KERNEL_COLORS[e.step % 2]


# --- End to end on CPU -----------------------------------------------------------------------------------------

def test_main_job_trace_on_cpu(tmp_path, capsys, monkeypatch) -> None:
    """--trace runs one more generation per named variant after the timings: no timed generation runs under the
    profiler; on CPU the device columns are "-"."""
    seen: list[type] = []
    timed_call = bench.timed_call

    def spy(*args, **kwargs):
        seen.append(type(profiling.current()))
        return timed_call(*args, **kwargs)

    monkeypatch.setattr(bench, "timed_call", spy)
    rc = main_job.main(["--device", "cpu", "--grid", "2x8", "--variants", "kv_static", "--reps", "2",
                        "--warmup", "1", "--trace", "2:6", "--out", str(tmp_path)])
    assert rc == 0
    assert seen and set(seen) == {profiling.Profiler}  # every timed generation ran with profiling off
    out = capsys.readouterr().out
    assert "need CUDA" in out and "| GPU idle |" in out and "| kv_static | 2 | 8 |" in out
    rows = {r["variant"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    assert "gpu_idle_share" not in rows["naive"]  # the reference is traced only if named
    row = rows["kv_static"]
    assert row["steps"] == 8 and row["gpu_idle_share"] is None and row["kernels_per_step"] is None
    assert row["host_wait_us_per_step"] == 0 and row["step_us"] > 0
    chrome = json.loads((tmp_path / "trace-kv_static-b2-n8.json").read_text())
    names = {e["name"] for e in chrome["traceEvents"] if e.get("cat") == "user_annotation"}
    assert {n for n in names if n.startswith("decode step")} == {f"decode step {i}" for i in range(2, 6)}
    steps = sorted((e.start_us, e.end_us, e.step) for e in events_from_chrome(chrome) if e.kind == STEP)
    assert [s for _, _, s in steps] == [2, 3, 4, 5] and row["traced_steps"] == 4
    assert all(end <= next_start for (_, end, _), (next_start, _, _) in zip(steps, steps[1:], strict=False)), steps
    assert (tmp_path / "timeline-b2-n8.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "trace-naive-b2-n8.json").exists()
    row["gpu_idle_share"] = 0.25  # as a CUDA run would have it
    assert [_cell(report.table(list(rows.values())), v, "GPU idle") for v in rows] == ["-", "25.0%"]


def _cell(table: str, variant: str, column: str) -> str:
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    return next(cells for cells in lines if cells[0] == variant)[lines[0].index(column)]


def test_a_trace_profiler_follows_one_generation() -> None:
    model = models.build("tiny-gpt2", device="cpu")
    ids = bench.post_prompt(model, 1, "cpu")
    from generators import generate

    with pytest.raises(RuntimeError, match="one generation"), profiling.tracing((1, 2), False, lambda p: None):
        generate("kv_static", model, ids, 3)
        generate("kv_static", model, ids, 3)
    assert type(profiling.current()) is profiling.Profiler


@pytest.mark.parametrize("window, steps", [((3, 50), [3, 4, 5, 6, 7]), ((1, 2), [1]), ((20, 30), [])])
def test_a_window_past_the_last_step_ends_with_the_generation(window: tuple[int, int], steps: list[int]) -> None:
    model = models.build("tiny-gpt2", device="cpu")
    t = trace_generation("kv_static", model, 2, 8, window=window, warmup=0)
    assert sorted(e.step for e in t.events if e.kind == STEP) == steps and t.summary["steps"] == len(steps)


@pytest.mark.gpu
@pytest.mark.parametrize("variant, syncs", [("kv_static", 1), ("cuda_graph", 1), ("cuda_graph_deferred", 1)])
def test_trace_on_cuda(variant: str, syncs: int, device: torch.device, tmp_path) -> None:
    """On a GPU the kernels are in the trace and tied to their steps, a CUDA graph's too (via cudaGraphLaunch's
    correlation); every step waits once (.item(), or the deferred check's event)."""
    model = models.build("tiny-gpt2", device=device)
    t = trace_generation(variant, model, 4, 16, window=(4, 12), path=tmp_path / "t.json")
    s = t.summary
    assert s["steps"] == 8 and s["idle_window"] == "device", s
    assert s["kernels_per_step"] >= 5 and 0 <= s["gpu_idle_share"] < 1, s
    assert s["syncs_per_step"] >= syncs, s
    write_timeline(tmp_path / "t.png", variant, [Row(variant, t.events)])
