"""The main job: the post's benchmark on the device at hand.

    python -m generators                      # GPU: GPT-2 small, the post's grid; CPU: tiny model, small grid
    python -m generators --expandable-segments --variants naive,kv_dynamic
    python -m generators --profile-steps 30:50  # NVTX ranges + an nsys capture window (see profiling.py)
    python -m generators --trace 30:50          # GPU idle, host waits, kernels per step; trace JSON, timeline PNG

Prints the post's table, checks every variant's tokens against naive, and writes results.json and a PNG plot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

# The grids: (batch, max_new_tokens). The post's b=32 x {100, 200, 400} and a batch sweep at 100 tokens.
CUDA_GRID = [(32, 100), (32, 200), (32, 400), (1, 100), (4, 100), (16, 100), (64, 100)]
CPU_GRID = [(1, 32), (4, 32), (4, 64)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m generators", description=__doc__.split("\n")[0])
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--model", help="gpt2-small, tiny-gpt2, tiny-llama or a local directory "
                                   "(default: gpt2-small on CUDA, tiny-gpt2 on CPU)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--variants", help="comma-separated generator names (default: all that run on the device; "
                                      "on CPU the compiled ones are left out unless named, they compile per model)")
    p.add_argument("--grid", help="comma-separated BATCHxTOKENS points, e.g. 32x100,1x100 (default: the post's)")
    p.add_argument("--reps", type=int, default=3, help="timed generations per point (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed generations first (compile, capture)")
    p.add_argument("--expandable-segments", action="store_true",
                   help="PYTORCH_ALLOC_CONF=expandable_segments:True, set before CUDA initialises")
    p.add_argument("--profile-steps", help="START:STOP decode steps to capture for nsys, with NVTX ranges")
    p.add_argument("--trace", metavar="START:STOP",
                   help="after the timings, one more generation of each named variant with decode steps START..STOP-1 "
                        "under torch.profiler: GPU idle share, host wait, kernels per step, a trace JSON and a "
                        "timeline PNG per grid point (docs/profiling.md)")
    p.add_argument("--out", default="out", help="folder for results.json and tokens_per_s.png (default: out)")
    args = p.parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        p.error("--reps must be >= 1 and --warmup >= 0")
    return args


def parse_grid(text: str) -> list[tuple[int, int]]:
    try:
        points = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        points = []
    if not points or any(len(pt) != 2 or min(pt) < 1 for pt in points):
        raise SystemExit(f"--grid wants BATCHxTOKENS points like 32x100,1x100, got {text!r}")
    return points


def parse_capture(text: str) -> tuple[int, int]:
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise SystemExit(f"--profile-steps wants START:STOP decode steps like 30:50, got {text!r}") from None
    return start, stop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.expandable_segments:  # the allocator reads this when CUDA initialises, so before any CUDA call
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
    import torch

    from . import GENERATORS, bench, models, profiling, report, trace

    window = trace.parse_window(args.trace) if args.trace else None
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch.cuda.is_available() is False")
    on_cuda = device.type == "cuda"
    if not on_cuda:
        # The CPU grid's model is tiny: one thread is faster, and steadier on a busy machine, than several.
        torch.set_num_threads(1)
    model_name = args.model or ("gpt2-small" if on_cuda else "tiny-gpt2")
    grid = parse_grid(args.grid) if args.grid else (CUDA_GRID if on_cuda else CPU_GRID)
    if args.variants:
        names = args.variants.split(",")
        unknown = [n for n in names if n not in GENERATORS]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; known: {', '.join(GENERATORS)}")
    else:
        names = [n for n, g in GENERATORS.items() if on_cuda or (not g.requires_cuda and g.execution == "eager")]
    # --profile-steps profiles what was asked for: naive, added below only as the reference, would otherwise open
    # nsys's capture window first, and nsys's default --capture-range-end (stop-shutdown) ends the run there.
    requested = set(names)
    if "naive" not in names:
        names.insert(0, "naive")  # the speedup column and the token check are against naive
    skipped = [n for n in GENERATORS if n not in names]

    model = models.build(model_name, dtype=args.dtype, device=device)
    # The copy bandwidth is what the table's roofline columns (floor ms, of floor) are computed against.
    info = bench.machine_info(device) | {"model": model_name, "dtype": args.dtype,
                                         "copy_GBps": round(bench.copy_bandwidth(device) / 1e9, 1)}
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    if skipped:
        print(f"# not run here: {', '.join(skipped)}" + ("" if on_cuda else " (the compiled ones compile per "
              "model: name them with --variants to include them; the CUDA-only ones need a GPU)"), flush=True)

    capture = parse_capture(args.profile_steps) if args.profile_steps else None
    results, failed, total, start = [], [], len(grid) * len(names), time.perf_counter()
    for batch, new_tokens in grid:
        naive_tokens = None
        for name in names:
            done = len(results) + 1
            print(f"[{done}/{total}] {name:<24} b={batch:<3} n={new_tokens:<4} ", end="", flush=True, file=sys.stderr)
            try:
                with profiling.enabled(capture) if capture and name in requested else contextlib.nullcontext():
                    m = bench.measure(name, model, batch, new_tokens, reps=args.reps, warmup=args.warmup)
            except Exception as e:  # report it and go on: one broken variant must not hide the others' numbers
                failed.append(f"{name} b={batch} n={new_tokens}: {type(e).__name__}: {e}")
                print(f"FAILED: {failed[-1]}", flush=True, file=sys.stderr)
                continue
            if name == "naive":
                naive_tokens = m.tokens
            same = naive_tokens is not None and torch.equal(m.tokens, naive_tokens)
            row = m.summary() | {"same_tokens_as_naive": same}
            results.append(row)
            print(f"{row['median_ms']:9.1f} ms  (warm-up {m.warmup_s:.1f} s, elapsed "
                  f"{time.perf_counter() - start:.0f} s)", flush=True, file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if window:  # after every timing: a profiler can leave CUPTI attached, which slows the kernels run after it
        trace.trace_results(results, requested, model, out, window, f"{model_name} {args.dtype} on "
                            f"{info.get('gpu', 'cpu')}")
    (out / "results.json").write_text(json.dumps({"machine": info, "results": results}, indent=1))
    report.plot(results, out / "tokens_per_s.png", title=f"{model_name} {args.dtype} on {info.get('gpu', 'cpu')}")
    print(report.table(results))
    print(f"\nwrote {out / 'results.json'} and {out / 'tokens_per_s.png'}")
    mismatched = [f"{r['variant']} b={r['batch']} n={r['max_new_tokens']}" for r in results
                  if not r["same_tokens_as_naive"]]
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    if mismatched:
        print(f"TOKENS DIFFER FROM NAIVE: {'; '.join(mismatched)} (run pytest correctness to see if they are "
              "near-ties)", file=sys.stderr)
    return 1 if mismatched or failed else 0


if __name__ == "__main__":
    sys.exit(main())
