"""The main job's outputs: the post's table (markdown) and a tokens/s plot."""

from __future__ import annotations

from pathlib import Path

from .plot import write_bar_chart

MiB = 2**20
COLUMNS = ["variant", "batch", "new tokens", "median ms", "std ms", "min ms", "max ms", "tokens/s", "vs naive",
           "MB/step", "floor ms", "of floor", "GPU idle", "peak alloc MiB", "reserved MiB", "fragmentation", "tokens"]


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v / MiB:,.0f}"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _tokens(r: dict) -> str:
    """same / near-tie / DIFFERS against naive (results.json from before the near-tie rule: same / DIFFERS)."""
    verdict = r.get("tokens_vs_naive", "same" if r["same_tokens_as_naive"] else "differs")
    return {None: "-", "differs": "DIFFERS"}.get(verdict, verdict)


def table(results: list[dict]) -> str:
    """One markdown table, grouped by grid point. "median ms" is the median of the timed generations (the statistic
    the progress lines print, and tokens/s and the speedup against naive at the same point use).

    MB/step, floor ms and "of floor" are bench.roofline()'s: the bytes a step must move, the time that takes at
    the card's copy bandwidth, and the share of that limit the variant reaches. GPU idle is trace.py's share of a
    traced window with nothing running on the device (--trace on CUDA). Rows without them show "-".
    """
    naive = {(r["batch"], r["max_new_tokens"]): r["median_ms"] for r in results if r["variant"] == "naive"}
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        base = naive.get((r["batch"], r["max_new_tokens"]))
        frag = r["fragmentation"]
        step_bytes = r.get("bytes_per_step")  # .get: results.json from before the roofline columns lack these
        cells = [
            r["variant"], r["batch"], r["steps"],
            f"{r['median_ms']:.1f}", f"{r['std_ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['max_ms']:.1f}",
            f"{r['tokens_per_s']:,.0f}", "-" if base is None else f"{base / r['median_ms']:.2f}x",
            _fmt(None if step_bytes is None else step_bytes / 1e6, ",.2f"), _fmt(r.get("floor_ms"), ",.2f"),
            _fmt(r.get("bandwidth_utilisation"), ".1%"), _fmt(r.get("gpu_idle_share"), ".1%"),
            _mib(r["peak_allocated"]), _mib(r["peak_reserved"]), "-" if frag is None else f"{frag:.1%}",
            _tokens(r),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    """tokens/s by variant (bars) and grid point (groups), on a log axis: variants span ~100x."""
    groups = list(dict.fromkeys(f"b={r['batch']} n={r['max_new_tokens']}" for r in results))
    series: dict[str, list[float | None]] = {}
    for r in results:
        values = series.setdefault(r["variant"], [None] * len(groups))
        values[groups.index(f"b={r['batch']} n={r['max_new_tokens']}")] = r["tokens_per_s"]
    write_bar_chart(path, title, groups, series, y_label="tokens/s", log_y=True)
