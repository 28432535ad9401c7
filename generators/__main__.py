"""The main job: the post's benchmark on the device at hand.

    python -m generators                      # GPU: GPT-2 small, the post's grid; CPU: tiny model, small grid
    python -m generators --expandable-segments --variants naive,kv_dynamic
    python -m generators --profile-steps 30:50  # NVTX ranges + an nsys capture window (see profiling.py)
    python -m generators --trace 30:50          # GPU idle, host waits, kernels per step; trace JSON, timeline PNG

Prints the post's table, checks every variant's tokens against naive (same, near-tie or differs: the rule of
generators/ties.py), and writes results.json (row by row, as rows finish) and a PNG plot.
Exit status: 0 when every row ran and no tokens differ; 1 otherwise; 2 for a usage error; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .grids import CPU_GRID, CUDA_GRID

if TYPE_CHECKING:  # torch is imported in main(), after the allocator's environment variable is set
    import torch

    from . import bench


def _points(grid: list[tuple[int, int]]) -> str:
    return ",".join(f"{b}x{n}" for b, n in grid)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m generators", description=__doc__.split("\n")[0])
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda if available)")
    p.add_argument("--model", help="gpt2-small, llama-110m, a tiny one (generators/models.py) or a local directory "
                                   "(default: gpt2-small on CUDA, tiny-gpt2 on CPU)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--variants", help="comma-separated generator names (default: all that run on the device; "
                                      "on CPU the compiled ones are left out unless named, they compile per model)")
    p.add_argument("--grid", help=f"comma-separated BATCHxTOKENS points (default on CUDA, the post's: "
                                  f"{_points(CUDA_GRID)}; on CPU: {_points(CPU_GRID)})")
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
    return p


def parse_grid(text: str) -> list[tuple[int, int]] | None:
    """BATCHxTOKENS points, or None if `text` is not a list of them."""
    try:
        points = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        return None
    if not points or any(len(pt) != 2 or min(pt) < 1 for pt in points):
        return None
    return points


def parse_capture(text: str) -> tuple[int, int] | None:
    """START:STOP with 0 <= START < STOP, or None."""
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        return None
    return (start, stop) if 0 <= start < stop else None


def check_out(p: argparse.ArgumentParser, text: str) -> Path:
    """--out must be a folder we can write results.json into: found out now, not after the timing."""
    out = Path(text)
    if not text.strip():
        p.error("--out is empty; it names a folder for results.json and tokens_per_s.png")
    if out.exists() and not out.is_dir():
        p.error(f"--out {out}: is a file; --out names a folder for results.json and tokens_per_s.png")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        p.error(f"--out {out}: cannot write there ({e.strerror or e})")
    for name in ("results.json", "tokens_per_s.png"):
        if (out / name).is_dir():
            p.error(f"--out {out}: {out / name} is a folder, so the results cannot be written")
    return out


def pick_device(p: argparse.ArgumentParser, text: str | None) -> torch.device:
    import torch

    try:
        device = torch.device(text or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        p.error(f"--device wants cuda, cuda:N or cpu, got {text!r}")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device wants cuda, cuda:N or cpu, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {text}: torch.cuda.is_available() is False (is this a CPU build of torch?)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        p.error(f"--device {text}: there are {torch.cuda.device_count()} CUDA devices")
    return device


def pick_variants(p: argparse.ArgumentParser, text: str | None, device: torch.device) -> list[str]:
    """The named generators, or by default all that run on `device` (on CPU, the eager ones)."""
    from . import GENERATORS

    on_cuda = device.type == "cuda"
    if text is None:
        return [n for n, g in GENERATORS.items() if on_cuda or g.runs_on_cpu]
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        p.error(f"--variants names no generator: got {text!r}; known: {', '.join(GENERATORS)}")
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(GENERATORS)}")
    cuda_only = [n for n in names if GENERATORS[n].requires_cuda]
    if cuda_only and not on_cuda:
        p.error(f"--variants: {', '.join(cuda_only)}: CUDA only, and the device is {device}")
    return names


def write_results(path: Path, info: dict, results: list[dict]) -> None:
    """Replace results.json whole (a crash mid-write leaves the previous version, not half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        p.error("--reps must be >= 1 and --warmup >= 0")
    grid = None if args.grid is None else parse_grid(args.grid)
    if args.grid is not None and grid is None:
        p.error(f"--grid wants BATCHxTOKENS points like 32x100,1x100, got {args.grid!r}")
    capture = None if args.profile_steps is None else parse_capture(args.profile_steps)
    if args.profile_steps is not None and capture is None:
        p.error(f"--profile-steps wants START:STOP decode steps with 0 <= START < STOP, like 30:50, "
                f"got {args.profile_steps!r}")
    if args.expandable_segments:  # the allocator reads this when CUDA initialises, so before any CUDA call
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
    import torch

    from . import GENERATORS, bench, models, profiling, report, timeline, trace

    try:
        window = trace.parse_window(args.trace) if args.trace else None
    except ValueError as e:
        p.error(str(e))
    device = pick_device(p, args.device)
    on_cuda = device.type == "cuda"
    model_name = args.model or ("gpt2-small" if on_cuda else "tiny-gpt2")
    if model_name not in models.MODELS and not os.path.isdir(model_name):
        p.error(f"--model wants one of {', '.join(models.MODELS)} or a local directory, got {model_name!r}")
    grid = grid or (CUDA_GRID if on_cuda else CPU_GRID)
    names = pick_variants(p, args.variants, device)
    out = check_out(p, args.out)
    if not on_cuda:
        # The CPU grid's model is tiny: one thread is faster, and steadier on a busy machine, than several.
        torch.set_num_threads(1)
    # --profile-steps profiles what was asked for: naive, added below only as the reference, would otherwise open
    # nsys's capture window first, and nsys's default --capture-range-end (stop-shutdown) ends the run there.
    requested = set(names)
    names = ["naive", *(n for n in names if n != "naive")]  # first: the speedup and the token check are against it
    skipped = [n for n in GENERATORS if n not in names]

    try:
        model = models.build(model_name, dtype=args.dtype, device=device)
    except (ValueError, OSError) as e:
        p.error(f"--model {model_name}: {e}")
    # The copy bandwidth is what the table's roofline columns (floor ms, of floor) are computed against.
    info = bench.machine_info(device) | {"model": model_name, "dtype": args.dtype,
                                         "copy_GBps": round(bench.copy_bandwidth(device) / 1e9, 1)}
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    if skipped:
        print(f"# not run here: {', '.join(skipped)}" + ("" if on_cuda else " (the compiled ones compile per "
              "model: name them with --variants to include them; the CUDA-only ones need a GPU)"), flush=True)

    results_path, plot_path = out / "results.json", out / "tokens_per_s.png"
    results, failed, total, start = [], [], len(grid) * len(names), time.perf_counter()
    done, interrupted = 0, False
    try:
        for batch, new_tokens in grid:
            naive_tokens = None
            for name in names:
                done += 1
                where = f"[{done}/{total}] {name:<24} b={batch:<3} n={new_tokens:<4}"
                try:
                    with profiling.enabled(capture) if capture and name in requested else contextlib.nullcontext():
                        m = bench.measure(name, model, batch, new_tokens, reps=args.reps, warmup=args.warmup)
                except Exception as e:  # report it and go on: one broken variant must not hide the others' numbers
                    failed.append(f"{name} b={batch} n={new_tokens}: {type(e).__name__}: {e}")
                    print(f"{where} FAILED: {type(e).__name__}: {e}", flush=True, file=sys.stderr)
                    continue
                if name == "naive":
                    naive_tokens = m.tokens
                row = m.summary() | token_check(naive_tokens, m, model, f"{name} b={batch} n={new_tokens}")
                results.append(row)
                write_results(results_path, info, results)
                # One whole line after the measurement: a warning printed during it cannot land mid-line.
                print(f"{where} median {row['median_ms']:9.1f} ms  tokens {row['tokens_vs_naive'] or '-':<8}  "
                      f"(warm-up {m.warmup_s:.1f} s, elapsed {time.perf_counter() - start:.0f} s)",
                      flush=True, file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted: {len(results)} of {total} rows measured", file=sys.stderr)

    if window and results and not interrupted:  # after every timing: a profiler can leave CUPTI attached
        timeline.trace_results(results, requested, model, out, window, f"{model_name} {args.dtype} on "
                            f"{info.get('gpu', 'cpu')}")
        write_results(results_path, info, results)
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    if not results:
        print(f"no row ran: nothing to tabulate or plot ({len(failed)} of {total} failed)", file=sys.stderr)
        return 130 if interrupted else 1
    report.plot(results, plot_path, title=f"{model_name} {args.dtype} on {info.get('gpu', 'cpu')}")
    print(report.table(results))
    print(f"\nwrote {results_path} and {plot_path}")
    differ = [r for r in results if r["tokens_vs_naive"] == "differs"]
    tied = [r for r in results if r["tokens_vs_naive"] == "near-tie"]
    for r in tied:
        print(f"near-tie, not a failure: {'; '.join(r['token_check'])}", file=sys.stderr)
    for r in differ:
        lines = r["token_check"][0].splitlines()  # the middle lines are the two whole rows: in results.json
        print(f"TOKENS DIFFER FROM NAIVE: {lines[0]}" + (f"\n  {lines[-1].strip()}" if len(lines) > 1 else ""),
              file=sys.stderr)
    if interrupted:
        return 130
    return 1 if differ or failed else 0


def token_check(naive: torch.Tensor | None, m: bench.Measurement, model: torch.nn.Module, label: str) -> dict:
    """A row's token columns: exact equality with naive, and the verdict under the near-tie rule (same, near-tie,
    differs) with the ties found or why the tokens differ."""
    import torch

    from . import ties

    if naive is None:  # naive failed at this point: nothing to compare with
        return {"same_tokens_as_naive": False, "tokens_vs_naive": None, "token_check": []}
    result = ties.compare_tokens(naive, m.tokens, model=model, prompt_len=m.tokens.shape[1] - m.steps,
                                 eos=model.config.eos_token_id, pad=None, label=label)
    return {"same_tokens_as_naive": bool(torch.equal(naive, m.tokens)), "tokens_vs_naive": result.verdict,
            "token_check": [result.failure] if result.failure else result.ties}


if __name__ == "__main__":
    sys.exit(main())
