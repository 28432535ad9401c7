"""Real code changes, each A/B'd against the commit it patches: the gate's power on changes a pull request could make.

    python -m perf.changes --out DIR [--only NAME ...] [--rows ROW ...]   # on a GPU runner, from a clean checkout
    python -m perf.changes --out DIR --tabulate                          # the table of rows logs already there

Each change is a patch in perf/changes/. It is applied to a temporary worktree of HEAD, and the gate runs there with
--ab-base=HEAD on a panel of rows that the change touches and rows it does not. The table says, per row, whether the
verdict is the one the change should get: flagged where it slows a row past the bar (3% in a CUDA-graph loop, 8% in
the others) or grows its peak memory past 5%, and no alarm where it touches nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import gate, report
from .grids import point_id

ROOT = Path(__file__).resolve().parents[1]
PATCHES = Path(__file__).parent / "changes"
PANEL = [point_id(v, b, 100, "float32") for b in (32, 1)
         for v in ("cuda_graph", "cuda_graph_deferred", "lean_graph", "lean_eager", "static_compiled")]
_STATIC_HF = frozenset({"kv_static", "static_compiled", "pipelined", "static_compiled_no_eos", "cuda_graph",
                        "cuda_graph_deferred", "cuda_graph_every_8"})


@dataclass(frozen=True)
class Change:
    name: str  # perf/changes/<name>.patch
    what: str
    touches: frozenset[str]  # the variants whose code it changes


CHANGES = [
    Change("host_wait_per_step", "a host wait for every step in the deferred stop check (the post's own regression)",
           frozenset({"cuda_graph_deferred", "lean_graph"})),
    Change("fused_qkv_off", "the lean step's fused q/k/v path switched off", frozenset({"lean_eager", "lean_graph"})),
    Change("extra_copy_per_step", "a transposed copy of the key cache made after every step of the static-cache loop",
           _STATIC_HF),
    Change("cache_twice_as_long", "the static cache allocated for twice the positions", _STATIC_HF),
    Change("docs_only", "a docs-only edit (docs/ci.md): the base arm shares this tree's generators/", frozenset()),
    Change("docstring_only", "a docstring edit in generators/loop.py: two copies of the same code, compiled apart",
           frozenset()),
]


def expected(change: Change, variant: str, v: gate.Verdict) -> str:
    """'flag', 'quiet' or 'either' (a touched row whose effect stayed under the bar)."""
    if variant not in change.touches:
        return "quiet"
    big_time = v.ratio is not None and v.ratio - 1 >= gate.BAR[v.klass]
    big_memory = v.memory_ratio is not None and v.memory_ratio - 1 >= gate.MEMORY_SHARE
    return "flag" if big_time or big_memory else "either"


def table(results: list[tuple[Change, str, gate.Verdict]]) -> tuple[str, dict]:
    """Markdown rows and the tally: required flags caught, false alarms among untouched rows."""
    lines = ["| change | row | touched | effect | 95% CI | memory Δ | verdict | as required |",
             "|---|---|---|---|---|---|---|---|"]
    tally = {"flag": 0, "flagged": 0, "quiet": 0, "false_alarms": 0}
    for change, variant, v in results:
        need = expected(change, variant, v)
        ok = {"flag": v.regressed, "quiet": not v.regressed, "either": True}[need]
        if need == "flag":
            tally["flag"] += 1
            tally["flagged"] += v.regressed
        elif need == "quiet":
            tally["quiet"] += 1
            tally["false_alarms"] += v.regressed
        c = gate.cells(v)
        lines.append(f"| {change.name} | {v.name.removeprefix('test_generate[').removesuffix(']')} | "
                     f"{'yes' if variant in change.touches else 'no'} | {c['effect']} | {c['95% CI']} | "
                     f"{c['memory Δ']} | {c['verdict']} | {'yes' if ok else 'NO'} ({need}) |")
    return "\n".join(lines) + "\n", tally


def run_change(change: Change, rows: list[str], out: Path) -> list[tuple[Change, str, gate.Verdict]]:
    """Apply the patch to a fresh worktree of HEAD and run the gate there against HEAD."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    tree = Path(tempfile.mkdtemp(prefix=f"change-{change.name}-"))
    try:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), head], check=True)
        subprocess.run(["git", "-C", str(tree), "apply", str(PATCHES / f"{change.name}.patch")], check=True)
        log = rows_log(out, change)
        log.unlink(missing_ok=True)  # the rows log appends: an earlier run's rows must not be judged again
        cmd = [sys.executable, "-m", "pytest", "perf/test_perf.py", "--benchmark-compare", f"--ab-base={head}",
               "-n", "auto", "-p", "no:cacheprovider", "-q", "-k", " or ".join(rows),
               f"--benchmark-json={out / f'{change.name}.json'}", f"--gate-report={out / f'{change.name}.md'}",
               f"--rows-log={log}"]
        subprocess.run(cmd, cwd=tree, check=False)  # exit 1 is a flagged regression: the verdicts say which
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(tree, ignore_errors=True)
    return judged(change, log)


def rows_log(out: Path, change: Change) -> Path:
    return out / f"{change.name}.jsonl"


def judged(change: Change, log: Path) -> list[tuple[Change, str, gate.Verdict]]:
    """The verdicts of the rows in a change's rows log: every row its run measured, also when the run was stopped
    before its report (a time limit)."""
    return [(change, row.variant, v) for row, v in report.judged(report.read_rows(log) if log.is_file() else [], {})]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.changes", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for each change's gate report and the summary changes.md")
    p.add_argument("--only", nargs="+", choices=[c.name for c in CHANGES], help="these changes (default: all)")
    p.add_argument("--rows", nargs="+", default=PANEL, help="test ids of the panel (default: 5 variants at b=32, 1)")
    p.add_argument("--tabulate", action="store_true",
                   help="run nothing: the table of the rows logs already in --out (runs stopped by a time limit)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not out.is_dir():
        p.error(f"--out {out}: not a folder")
    results, unmeasured = [], []
    for change in [c for c in CHANGES if not args.only or c.name in args.only]:
        if args.tabulate:
            got = judged(change, rows_log(out, change))
        else:
            print(f"# {change.name}: {change.what}", flush=True)
            got = run_change(change, args.rows, out)
        unmeasured += [] if got else [change.name]
        results += got
        (out / "changes.md").write_text(table(results)[0])  # after every change: a late failure keeps what ran
    text, tally = table(results)
    print(text)
    print(f"required flags caught: {tally['flagged']} of {tally['flag']}; false alarms: {tally['false_alarms']} "
          f"of {tally['quiet']} untouched rows")
    if unmeasured:  # a change that measured nothing proves nothing: never a pass
        print(f"no row measured for {', '.join(unmeasured)}: see its {out}/<change>.md or the run's output")
        return 1
    return 0 if tally["flagged"] == tally["flag"] and not tally["false_alarms"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
