"""Timings of every generator over the post's grid (a tiny smoke grid on CPU), with pytest-benchmark.

Compilation and graph capture happen in a warm-up round, never in a timing; each timed round brackets one generation
with device synchronisation. Under the gate (--benchmark-compare) every round is a pair, the base arm's generation
then this tree's, B C B C ..., so each arm's generation follows one of the other's; rounds stop as soon as the row's
verdict is settled (perf/gate.py). Without it, the rows are timed alone: a baseline recording.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from generators import GENERATORS, bench, trace

from . import ab, gate
from .conftest import GATE, grid_for
from .grids import GRIDS, point_id, xdist_group
from .record import Row
from .run import Gate

RECORD_ROUNDS = 5  # timed rounds per row of a baseline: the runner check compares their median
LONG_HOST_ROUNDS = 3  # host-bound loops past 100 tokens take 1-7 s a generation on an H200

# Naive medians of this run, for the speedup column: naive is parametrized first at every point.
_NAIVE_MEDIAN: dict[tuple, float] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "variant" in metafunc.fixturenames:
        points = GRIDS[grid_for(metafunc.config)]
        g = metafunc.config.stash.get(GATE, None)
        gating = g is not None and g.compare
        metafunc.parametrize(("variant", "batch", "new_tokens", "dtype"),
                             [pytest.param(v, b, n, d, id=point_id(v, b, n, d),
                                           marks=pytest.mark.xdist_group(xdist_group(v, b, n, d, gate=gating)))
                              for v, b, n, d in points])


def klass_of(variant: str) -> str:
    """CUDA-graph loops are bound by the GPU, the others by the host's launches: their bands differ."""
    return gate.DEVICE if GENERATORS[variant].captured else gate.HOST


def test_generate(benchmark, models_by_dtype, device: torch.device, variant: str, batch: int, new_tokens: int,
                  dtype: str, perf_gate: Gate, pytestconfig: pytest.Config) -> None:
    started, row_started_at = time.perf_counter(), time.time()
    model = models_by_dtype(dtype)
    input_ids = bench.post_prompt(model, batch, device)
    eos = bench.eos_of(model)
    row = Row(variant, batch, new_tokens, dtype, klass_of(variant),
              injected_slowdown=perf_gate.injected.get(variant, 0.0), worker=os.environ.get("PYTEST_XDIST_WORKER"),
              started_at=row_started_at)
    out = []

    def candidate() -> None:
        elapsed, tokens = bench.timed_call(variant, model, input_ids, new_tokens, eos)
        if row.injected_slowdown:  # test-only (--inject-slowdown); never in generators/
            # Spin, don't sleep: a sleeping CPU drops its clock, so the next generation (the base arm's) would run
            # slower too and the measured effect fall short of the injected share.
            start = time.perf_counter()
            while time.perf_counter() < start + row.injected_slowdown * elapsed:
                pass
            elapsed += time.perf_counter() - start
        row.candidate_s.append(elapsed)
        out[:] = [tokens]

    base = perf_gate.base
    if base is not None and base.has(variant):
        row.base_ref, row.base_commit, row.base_s = base.ref, base.commit, []
        base_out = []

        def base_arm() -> None:  # pedantic's setup: before every round, the warm-up round included
            elapsed, tokens = bench.timed_call(variant, model, input_ids, new_tokens, eos,
                                               registry=base.package.GENERATORS)
            row.base_s.append(elapsed)
            base_out[:] = [tokens]

        ab.release(base, device)
        benchmark.pedantic(candidate, setup=base_arm, rounds=gate.FIRST_ROUNDS, warmup_rounds=1, iterations=1)
        row.warmup_s = row.base_s[0] + row.candidate_s[0]
        del row.base_s[0], row.candidate_s[0]  # the warm-up round: compilation and capture
        judged = lambda: gate.judge(benchmark.name, row.base_s, row.candidate_s, klass=row.klass,  # noqa: E731
                                    band=perf_gate.bands.get(benchmark.name))
        gate.sequential_rounds(judged, lambda: (base_arm(), candidate()), len(row.candidate_s), perf_gate.rounds)
        for t in row.candidate_s[gate.FIRST_ROUNDS:]:  # pytest-benchmark's stats hold every round too
            benchmark.stats.stats.update(t)
        row.same_tokens_as_base = torch.equal(base_out[0], out[0])
    else:  # a recording, or a variant the base arm lacks (judged "new")
        if base is not None:
            ab.release(base, device)
        else:
            bench.fresh_memory(device)
        long_host = row.klass == gate.HOST and new_tokens > 100
        benchmark.pedantic(candidate, rounds=LONG_HOST_ROUNDS if long_host else RECORD_ROUNDS, warmup_rounds=1,
                           iterations=1)
        row.warmup_s = row.candidate_s[0]
        del row.candidate_s[0]

    row.steps = out[0].shape[1] - input_ids.shape[1]
    median = benchmark.stats.stats.median
    if variant == "naive":
        _NAIVE_MEDIAN[batch, new_tokens, dtype] = median
    row.tokens_per_s = batch * row.steps / median
    row.speedup_vs_naive = _NAIVE_MEDIAN.get((batch, new_tokens, dtype), float("nan")) / median
    if device.type == "cuda":
        if row.base_s is not None:  # each arm's peak from a clean slate, after the timed rounds (perf/ab.py)
            peaks_started = time.perf_counter()
            row.base_peak, row.candidate_peak, row.peak_generations = ab.arm_peaks(base, variant, model, input_ids,
                                                                                  new_tokens, eos)
            row.peaks_s = time.perf_counter() - peaks_started
        row.peak_allocated, row.peak_reserved = bench.peak_memory(device)
        row.fragmentation = bench.fragmentation(row.peak_allocated, row.peak_reserved)
    # After the peaks: the first call measures the card's copy bandwidth with 1 GiB of buffers.
    roof = bench.roofline_info(model, batch, input_ids.shape[1], row.steps, median, device)
    row.bytes_per_step, row.floor_ms = roof["bytes_per_step"], roof["floor_ms"]
    row.bandwidth_utilisation, row.copy_GBps = roof["bandwidth_utilisation"], roof["copy_GBps"]
    if perf_gate.trace:  # after every timing of the row: the profiler never touches a timed generation
        summary = trace.trace_generation(variant, model, batch, new_tokens, perf_gate.trace, warmup=0).summary
        row.gpu_idle_share, row.host_wait_us_per_step = summary["gpu_idle_share"], summary["host_wait_us_per_step"]
    row.wall_s = time.perf_counter() - started
    benchmark.extra_info.update(row.info())
    if pytestconfig.getoption("--rows-log"):  # one short append per row: workers share the file safely
        with open(pytestconfig.getoption("--rows-log"), "a") as f:
            f.write(json.dumps({"name": benchmark.name, "extra_info": row.info()}) + "\n")
