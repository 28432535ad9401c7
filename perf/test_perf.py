"""GPU timings of every generator over the post's grid (a tiny smoke grid on CPU), with pytest-benchmark.

Compilation and graph capture happen in warm-up rounds, never in a timing; each timed round brackets one
generation with device synchronisation. The gate (perf/conftest.py) judges these against the stored baseline,
or, with --ab-base=REF, against REF's generators timed in this same process:

A/B rounds. pytest-benchmark's `setup=` runs one timed base-arm generation before every round (warm-up rounds
included, so both arms warm up), and the round itself times the candidate: the order is B C B C ... B C, each
arm's every timed generation immediately preceded by one generation of the other arm, so both see the same
state (clocks, caches, allocator). Swapping the order every other round (B C C B ...) would break that
symmetry for nothing: the one thing a fixed order favours is slow drift across ~one generation, which the A/A
calibration (the same arrangement) measures as noise. 15 rounds per arm by default (--ab-rounds; 5 without
--ab-base; host-bound loops past 100 tokens get 5 with --ab-base, 3 without; with 3, an A/A run called a row
"improved" by 6.9%). A row those rounds leave undecided (gate.undecided) gets up to gate.AB_EXTENSIONS more
batches of as many rounds: on a busy H200 host, 15 rounds let two injected 10% slowdowns of host-bound rows pass
as "within noise" (+8.2%, +10.8%, CIs reaching below 1; perf/RESULTS.md). The PR gate grid runs 2 x 18
generations per benchmark (1 warm-up + 15 timed + 2 memory on CUDA, per arm), more for undecided rows: on an H200
the whole gate grid against a second copy of the commit took 9 min 28 s with 8 of 26 rows extended, unit tests
and compilation included (perf/RESULTS.md).
"""

from __future__ import annotations

import time

import pytest
import torch

from generators import GENERATORS, bench

from . import ab, gate
from .conftest import GRIDS, ab_bands, benchmark_class, grid_for, inject_delay, point_id

ROUNDS = 5  # timed rounds per benchmark against a stored baseline

# Naive medians of this session, for the speedup column: naive is parametrized first at every point.
_NAIVE_MEDIAN: dict[tuple, float] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "variant" in metafunc.fixturenames:
        points = GRIDS[grid_for(metafunc.config)]
        metafunc.parametrize(("variant", "batch", "new_tokens", "dtype"), points,
                             ids=[point_id(*point) for point in points])


def test_probe_host(benchmark, device: torch.device, ab_base: ab.Base | None) -> None:
    """The host probe: a fixed launch-bound workload PRs never change (see perf/gate.py).

    400 tiny kernels per round, like an eager decode loop's launches, so a slow or fast process shows here too.
    Only the stored-baseline mode uses it (and the data refuted it there); the A/B mode needs none.
    """
    if ab_base is not None:
        pytest.skip("--ab-base: both arms run in this process, no probe needed")
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
                  dtype: str, ab_base: ab.Base | None, pytestconfig: pytest.Config) -> None:
    gen = GENERATORS[variant]
    model = models_by_dtype(dtype)
    input_ids = bench.post_prompt(model, batch, device)
    eos = bench.eos_of(model)
    delay = inject_delay(benchmark, variant)  # the candidate arm only
    out, cur_times = [], []

    def one_generation() -> None:
        elapsed, tokens = bench.timed_call(variant, model, input_ids, new_tokens, eos)
        if delay:  # test-only slowdown for proving the gate (--inject-slowdown); never in generators/
            # Spin, don't sleep: a sleeping CPU drops its clock or idles, so the next generation (always the base
            # arm's, B C B C) runs slower and the measured effect falls short of the injected share. Spinning
            # keeps the host busy the way slower host code would.
            start = time.perf_counter()
            end = start + delay * elapsed
            while time.perf_counter() < end:
                pass
            elapsed += time.perf_counter() - start
        cur_times.append(elapsed)
        out[:] = [tokens]

    # Host-bound loops past 100 tokens take 1-7 s a generation on an H200; fewer rounds there keep the full grid
    # within 10 minutes. Their stored-baseline times are not gated anyway (perf/gate.py: too noisy between processes).
    klass = benchmark_class(gen)
    long_host = klass == gate.HOST and new_tokens > 100
    info = benchmark.extra_info
    paired = ab_base is not None and ab_base.has(variant)
    if paired:
        ab_rounds = pytestconfig.getoption("--ab-rounds")
        rounds, warmup, base_times = (5 if long_host else ab_rounds), 1, []

        def base_generation() -> None:  # pedantic's setup: before every round, the warm-up rounds included
            elapsed, _ = bench.timed_call(variant, model, input_ids, new_tokens, eos,
                                          registry=ab_base.package.GENERATORS)
            base_times.append(elapsed)

        ab.release(ab_base, device)
        benchmark.pedantic(one_generation, setup=base_generation, rounds=rounds, warmup_rounds=warmup, iterations=1)
        # A row the rounds could not settle gets more of them, timed the same way, B C (gate.undecided says when).
        # They are the verdict's samples (extra_info), not pytest-benchmark's: its stats keep the first `rounds`.
        band = ab_bands(pytestconfig)[1].get(benchmark.name)
        info["ab_extra_rounds"] = ab.extend_rounds(
            lambda: gate.judge(benchmark.name, base_times[warmup:], cur_times[warmup:], klass=klass,
                               band=band, paired=True),
            lambda: (base_generation(), one_generation()), rounds, gate.AB_EXTENSIONS)
        info["ab_base_s"] = base_times[warmup:]
    else:  # no --ab-base, or the variant is new (absent from the base arm): the candidate alone
        if ab_base is not None:
            ab.release(ab_base, device)
        else:
            bench.fresh_memory(device)
        rounds, warmup = (3 if long_host else ROUNDS), 1
        benchmark.pedantic(one_generation, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if ab_base is not None:  # the A/B verdict's candidate samples, timed exactly like the base arm's
        info.update(ab_base=ab_base.ref, ab_base_commit=ab_base.commit,
                    ab_candidate_s=cur_times[warmup:])

    steps = out[0].shape[1] - input_ids.shape[1]
    median = benchmark.stats.stats.median
    key = (batch, new_tokens, dtype)
    if variant == "naive":
        _NAIVE_MEDIAN[key] = median
    info.update(variant=variant, batch=batch, new_tokens=new_tokens, dtype=dtype, steps=steps,
                tokens_per_s=batch * steps / median, speedup_vs_naive=_NAIVE_MEDIAN.get(key, float("nan")) / median)
    info["class"] = klass
    if device.type == "cuda":
        if paired:  # each arm's peak from a clean slate, after the timed rounds (perf/ab.py says why)
            base_peak, cur_peak = ab.arm_peaks(ab_base, variant, model, input_ids, new_tokens, eos)
            info["ab_base_peak_above_held"], info["peak_above_held"] = base_peak, cur_peak
        # Absolute peaks of the last generation measured (with --ab-base: the candidate's, from a clean slate).
        info["peak_allocated"], info["peak_reserved"] = bench.peak_memory(device)
        info["fragmentation"] = bench.fragmentation(info["peak_allocated"], info["peak_reserved"])
    # After the peaks: the first call measures the card's copy bandwidth with 1 GiB of buffers.
    info.update(bench.roofline_info(model, batch, input_ids.shape[1], steps, median, device))
