"""The gate's report: what was compared with what, the runner check, and one verdict row per benchmark."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import ab, gate, store
from .grids import GRIDS, bench_name
from .record import Row

if TYPE_CHECKING:
    from .run import Gate


def judged(benchmarks: list[dict], bands: dict[str, float]) -> list[tuple[Row, gate.Verdict]]:
    """Each benchmark dict's row and its verdict (NEW where the row has no base arm); a rows log's failed rows
    (``failures``) have none."""
    results = []
    for b in benchmarks:
        if "failed" in b:
            continue
        row, name = Row.from_info(b["extra_info"]), b["name"]
        results.append((row, gate.judge(name, row.base_s, row.candidate_s, klass=row.klass, band=bands.get(name),
                                        base_mem=row.base_peak, cur_mem=row.candidate_peak)))
    return results


def failures(benchmarks: list[dict]) -> list[dict]:
    """A rows log's rows that raised before their verdict ({"name", "failed"}: perf.run.FailedRows writes them)."""
    return [b for b in benchmarks if "failed" in b]


def failed_lines(failed: list[dict], outcome: str = "**GATE FAILED**", before: str = "their verdict") -> list[str]:
    return [f"{outcome}: {len(failed)} rows raised before {before} (tracebacks: pytest's FAILURES):",
            *(f"- {f['name']}: {f['failed']}" for f in failed)] if failed else []


def gate_report(g: Gate, benchmarks: list[dict], grid: str, workers: int = 1,
                span: tuple[float, float] | None = None, failed: list[dict] = ()) -> tuple[bool, str]:
    """(passed, markdown) for the benchmark dicts of one gate run; ``span``: when the run's set-up began and when it
    ended (time.time()); ``failed``: the rows that raised instead."""
    order = {bench_name(*point): i for i, point in enumerate(GRIDS[grid])}
    benchmarks = sorted(benchmarks, key=lambda b: (order.get(b["name"], len(order)), b["name"]))
    results = judged(benchmarks, g.bands)
    names = [verdict.name for _, verdict in results]  # a rows log's failed entries have no row
    rows = [row for row, _ in results]
    base = g.base
    if base.commit == ab.SELF:
        against = "itself (--ab-base=self, an A/A run)"
    elif base.commit == g.baseline.commit and base.ref == base.commit:
        against = f"{base.commit[:12]}, the commit the stored baseline timed"
    else:
        against = f"{base.ref} ({base.commit[:12]})"
    lines = [f"### Perf gate: this tree vs {against}", ""]
    if not rows:
        lines.append("**The gate cannot judge: no benchmark ran** (a -k or test id that selects no perf row, or every "
                     "row failed). Nothing was compared, so the gate fails.")
        return False, "\n".join(lines + [""] + failed_lines(failed)) + "\n"
    lines += _runner_lines(g, rows, names)
    left_out = len(set(order) - set(names) - {f["name"] for f in failed})
    selection = f"; {left_out} rows of the {grid} grid were not selected" if left_out else ""
    took = "" if span is None else f" in {(span[1] - span[0]) / 60:.1f} min"
    lines.append(f"- Judged: {len(rows)} rows{selection}, on {g.card} x {workers}{took}, each in paired rounds (base, "
                 f"then this tree) until its CI settled the verdict ({gate.FIRST_ROUNDS} to {g.rounds} rounds; a "
                 f"change is called on >= {gate.FLAG_ROUNDS}).")
    default = (f"±{gate.DEFAULT_BAND[gate.DEVICE]:.1%} CUDA-graph loops, ±{gate.DEFAULT_BAND[gate.HOST]:.1%} the "
               f"others")
    lines.append(f"- Noise bands: {'per row from ' + store.BANDS + ', else ' if g.bands else ''}{default}. Memory: "
                 f"peak allocated up > {gate.MEMORY_SHARE:.0%} and > {gate.MEMORY_MIN_BYTES >> 20} MiB regresses.")
    spent = time_spent(rows, span)
    if spent:
        lines.append(f"- {spent}")
    injected = sorted(r.variant for r in rows if r.injected_slowdown)
    if injected:
        lines.append(f"- TEST ONLY: slowdowns injected into {', '.join(injected)} (--inject-slowdown).")
    differ = [name for name, r in zip(names, rows, strict=True) if r.same_tokens_as_base is False]
    if differ:
        lines.append(f"- Tokens differ from the base arm's in {', '.join(differ)}: a change of behaviour, not of "
                     f"speed (run `python -m pytest correctness` to see whether it is a near-tie).")
    row_verdicts = [v for _, v in results]
    lines += ["", gate.format_table(row_verdicts)]
    regressed = [v.name for v in row_verdicts if v.regressed]
    if regressed:
        lines.append(f"**GATE FAILED**: {len(regressed)} regressed: {', '.join(regressed)}")
    lines += failed_lines(failed)
    if not regressed and not failed:
        lines.append(f"**Gate passed**: no row regressed in time or memory ({len(row_verdicts)} judged).")
    return not (regressed or failed), "\n".join(lines) + "\n"


def _runner_lines(g: Gate, rows: list[Row], names: list[str]) -> list[str]:
    b = g.baseline
    where = f"{b.path.name}, recorded {b.recorded[:10]} at {b.commit[:12]}"
    if g.base.commit == ab.SELF:  # this tree: its generators/ is a commit's only if nothing in it changed
        base_tree = None if store.generators_dirty() else store.generators_tree("HEAD")
    else:
        base_tree = store.generators_tree(g.base.commit)
    if base_tree != b.tree:
        return [f"- Runner check: not run: the base arm's generators/ is not the code the stored baseline timed "
                f"({where}); its times today have nothing stored to compare with."]
    today = {name: row.base_s for name, row in zip(names, rows, strict=True) if row.base_s}
    classes = {name: row.klass for name, row in zip(names, rows, strict=True)}
    host = gate.runner_check(today, b.samples, classes, gate.HOST)
    return [f"- Runner check: base arm today vs its stored times ({where}): "
            f"{gate.runner_check(today, b.samples, classes).line()}.",
            f"- Host speed, base arm today vs its stored times: {host.line()}."]


def time_spent(rows: list[Row], span: tuple[float, float] | None = None) -> str | None:
    """Where the rows' time went, so that a slow gate says whether it was the rounds, the compiler or the memory
    passes; with the run's ``span`` (time.time() at its set-up and at its end), also the time outside the rows, which
    more workers do not share out. None: no row measured its wall time."""
    measured = [r for r in rows if r.wall_s is not None]
    if not measured:
        return None
    wall = sum(r.wall_s for r in measured)
    timed = sum(sum(r.candidate_s) + sum(r.base_s or []) for r in measured)
    warmup = sum(r.warmup_s or 0.0 for r in measured)
    peaks = sum(r.peaks_s or 0.0 for r in measured)
    line = (f"Time: the rows took {wall:.0f} s in all: {timed:.0f} s in timed rounds, {warmup:.0f} s in warm-up rounds "
            f"(compilation and capture), {peaks:.0f} s in peak-memory passes, {wall - timed - warmup - peaks:.0f} s "
            f"in the rest (collections, the roofline probe).")
    busy: dict[str, float] = {}
    for r in measured:
        if r.worker is not None:
            busy[r.worker] = busy.get(r.worker, 0.0) + r.wall_s
    if len(busy) > 1:  # how evenly the rows spread over the GPUs: the run ends with the busiest worker
        line += " Rows per worker: " + ", ".join(f"{w} {s:.0f} s" for w, s in sorted(busy.items())) + "."
    stamped = [r for r in measured if r.started_at is not None]
    if span is not None and stamped:
        first = min(r.started_at for r in stamped)
        last = max(r.started_at + r.wall_s for r in stamped)
        before = "workers' start-up, imports, the base arm, collection" if len(busy) > 1 else "collection"
        line += (f" Outside the rows: {first - span[0]:.0f} s from the set-up to the first row ({before}), "
                 f"{span[1] - last:.0f} s after the last.")
    return line


def read_rows(path: Path) -> list[dict]:
    """Benchmark dicts from a --benchmark-json file or a --rows-log file (JSON lines). A rows log's last line cut
    short (the run was killed while a worker wrote it) is left out with a note on stderr; a cut line elsewhere is an
    error."""
    text = path.read_text()
    if path.suffix != ".jsonl":
        return json.loads(text)["benchmarks"]
    lines = [line for line in text.splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines[:-1]]
    try:
        rows += [json.loads(line) for line in lines[-1:]]
    except ValueError:
        if text.endswith("\n"):  # a whole line that does not parse: not a cut, a corrupt log
            raise
        print(f"perf.report: {path}: its last line is cut short (the run was stopped while writing it); that row "
              f"is left out", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m perf.report RUN.json|ROWS.jsonl ...``: the verdict table of rows a gate run measured, e.g. the rows
    log of a run stopped by a time limit. Exit 1 if a row regressed or raised, and always with --stopped."""
    p = argparse.ArgumentParser(prog="python -m perf.report", description=main.__doc__.split(":")[0].strip("`"))
    p.add_argument("runs", nargs="+", type=Path, help="--benchmark-json or --rows-log files of gate runs")
    p.add_argument("--bands", type=Path, help="a bands.json to judge against (default: the default bands)")
    p.add_argument("--stopped", action="store_true",
                   help="head the table as a gate run's report that its run never wrote (a time limit, a crash)")
    args = p.parse_args(argv)
    if args.stopped:  # the run ended before judging: whatever these rows say, the gate did not pass
        print("### Perf gate stopped before its report\n\n**GATE FAILED**: the run ended early (a time limit, a "
              "crash), so not every row was judged. The rows it measured, judged as they stand:\n")
    try:
        bands = store.load_bands(args.bands) if args.bands else {}
        benchmarks = [b for path in args.runs for b in read_rows(path)]
        results = judged(benchmarks, bands)
    except (OSError, ValueError, KeyError, TypeError, store.GateError) as e:
        if args.stopped:  # the header above stays the report: a summary must never come out empty
            print(f"The rows could not be read either: {type(e).__name__}: {e}")
            return 2
        p.error(f"cannot read the runs: {type(e).__name__}: {e}")
    paired = [v for row, v in results if row.base_s is not None]
    print(gate.format_table(paired))
    regressed = [v.name for v in paired if v.regressed]
    print(f"{len(paired)} rows judged ({len(results) - len(paired)} without a base arm); regressed: {len(regressed)}")
    failed = failures(benchmarks)
    for line in failed_lines(failed):
        print(line)
    return 1 if regressed or failed or args.stopped else 0  # a stopped run never passes (its header says so)


if __name__ == "__main__":
    raise SystemExit(main())
