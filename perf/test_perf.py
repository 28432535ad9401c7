"""GPU timings of every generator over the post's grid (a tiny smoke grid on CPU), with pytest-benchmark.

Compilation and graph capture happen in warm-up rounds, never in a timing; each timed round brackets one
generation with device synchronisation. The gate (perf/conftest.py) judges these against the stored baseline.
"""

from __future__ import annotations

import time

import pytest
import torch

from generators import GENERATORS, bench

from .conftest import GRIDS, benchmark_class, grid_for, inject_delay

# Naive medians of this session, for the speedup column: naive is parametrized first at every point.
_NAIVE_MEDIAN: dict[tuple, float] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "variant" in metafunc.fixturenames:
        points = GRIDS[grid_for(metafunc.config)]
        metafunc.parametrize(("variant", "batch", "new_tokens", "dtype"), points,
                             ids=[f"{v}-b{b}-n{n}-{d}" for v, b, n, d in points])


def test_probe_host(benchmark, device: torch.device) -> None:
    """The host probe: a fixed launch-bound workload PRs never change (see perf/gate.py).

    400 tiny kernels per round, like an eager decode loop's launches, so a slow or fast process shows here too.
    """
    x = torch.ones(64, device=device)

    def probe() -> None:
        y = x
        for _ in range(200):
            y = y * 1.0001 + 0.5
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    benchmark.extra_info["class"] = "probe"
    benchmark.pedantic(probe, rounds=20, warmup_rounds=3, iterations=1)


def test_generate(benchmark, models_by_dtype, device: torch.device, variant: str, batch: int, new_tokens: int,
                  dtype: str) -> None:
    gen = GENERATORS[variant]
    model = models_by_dtype(dtype)
    input_ids = bench.post_prompt(model, batch, device)
    eos = bench.eos_of(model)
    delay = inject_delay(benchmark, variant)
    out = []

    def one_generation() -> None:
        elapsed, tokens = bench.timed_call(variant, model, input_ids, new_tokens, eos)
        if delay:  # test-only slowdown for proving the gate (--inject-slowdown); never in generators/
            time.sleep(delay * elapsed)
        out[:] = [tokens]

    bench.fresh_memory(device)
    rounds = 3 if variant == "naive" and new_tokens > 100 else 5
    benchmark.pedantic(one_generation, rounds=rounds, warmup_rounds=1, iterations=1)

    steps = out[0].shape[1] - input_ids.shape[1]
    median = benchmark.stats.stats.median
    key = (batch, new_tokens, dtype)
    if variant == "naive":
        _NAIVE_MEDIAN[key] = median
    info = benchmark.extra_info
    info.update(variant=variant, batch=batch, new_tokens=new_tokens, dtype=dtype, steps=steps,
                tokens_per_s=batch * steps / median, speedup_vs_naive=_NAIVE_MEDIAN.get(key, float("nan")) / median)
    info["class"] = benchmark_class(gen)
    if device.type == "cuda":
        info["peak_allocated"], info["peak_reserved"] = bench.peak_memory(device)
        info["fragmentation"] = 1 - info["peak_allocated"] / info["peak_reserved"]
