"""A timeline of a few decode steps per variant, stacked, written to PNG with plot.py's Canvas (standard library only).

Each variant gets two lanes on one time axis, its zero at the start of its first drawn step on the host:
- host: the decode steps' ranges (alternating greys) and, in red, the time the host is blocked in a synchronisation;
- GPU: kernels as bars (alternating blues by the step that launched them; grey: launched before the window),
  device copies in orange, and pale red where nothing runs on the device: the idle gaps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import trace
from .plot import BLACK, GRID, PALETTE, WHITE, Canvas, Color, axis, text_width
from .trace import COPY, KERNEL, STEP, SYNC, Event

KERNEL_COLORS: tuple[Color, Color] = (PALETTE[0], (0x6B, 0xAE, 0xD6))
OTHER_KERNEL: Color = (0x9E, 0x9E, 0x9E)
COPY_COLOR: Color = PALETTE[1]
IDLE: Color = (0xF6, 0xC4, 0xC4)
STEP_COLORS: tuple[Color, Color] = ((0xDA, 0xDA, 0xDA), (0xBD, 0xBD, 0xBD))
WAIT: Color = PALETTE[3]
NOTE: Color = (0x55, 0x55, 0x55)

PLOT_W, LEFT, RIGHT, TOP = 1400, 70, 30, 96
NAME_H, HOST_H, GAP, GPU_H, ROW_GAP = 22, 16, 4, 26, 16
ROW_H = NAME_H + HOST_H + GAP + GPU_H + ROW_GAP


class Row(NamedTuple):
    label: str  # the variant
    events: list[Event]
    note: str = ""  # e.g. its GPU idle share over the whole window
    device: bool = True  # device activity was recorded (CUDA); if not, the GPU lane says so instead of showing idle


@dataclass
class Layout:
    """Where write_timeline put things: x of a time, and each row's lanes as (y0, y1) pixel rows, end exclusive."""

    left: int
    px_per_us: float
    origins_us: list[float | None] = field(default_factory=list)  # None: the row has no step to draw
    host_lanes: list[tuple[int, int]] = field(default_factory=list)
    gpu_lanes: list[tuple[int, int]] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)

    def x(self, row: int, t_us: float) -> float:
        return self.left + (t_us - self.origins_us[row]) * self.px_per_us


def _shown(events: list[Event], steps: int) -> tuple[float, float] | None:
    """(origin, end) of the first `steps` decode steps: host ranges, and the device work those steps launched."""
    ranges = sorted((e for e in events if e.kind == STEP), key=lambda e: e.step)[:steps]
    if not ranges:
        return None
    chosen = {e.step for e in ranges}
    end = max([e.end_us for e in ranges] + [e.end_us for e in events if e.kind in (KERNEL, COPY) and e.step in chosen])
    return ranges[0].start_us, end


def _span_px(lay: Layout, row: int, e: Event, span_us: float) -> tuple[int, int]:
    """The pixel columns [x0, x1) an event touches, clipped to the axis: a column stays idle only if nothing ran in
    it at all, so gaps under a pixel do not show and every event does."""
    origin = lay.origins_us[row]
    x0 = math.floor(lay.x(row, max(e.start_us, origin)))
    return x0, max(x0 + 1, math.ceil(lay.x(row, min(e.end_us, origin + span_us))))


def write_timeline(path: str | os.PathLike, title: str, rows: list[Row], steps: int = 3) -> Layout:
    """Draw the first `steps` decode steps of every row on one axis (microseconds) and write the PNG."""
    if not rows:
        raise ValueError("need at least one row")
    shown = [_shown(r.events, steps) for r in rows]
    span = max((end - origin for origin, end in filter(None, shown)), default=1.0) or 1.0
    _, hi, ticks = axis([span], log_y=False)
    height = TOP + len(rows) * ROW_H + 56
    cv = Canvas(LEFT + PLOT_W + RIGHT, height)
    lay = Layout(LEFT, PLOT_W / hi, size=(cv.w, cv.h))

    t_scale = 3 if text_width(title, 3) <= cv.w - 20 else 2
    cv.text((cv.w - text_width(title, t_scale)) // 2, 14, title, BLACK, t_scale)
    legend = [(KERNEL_COLORS[0], "kernel, step i"), (KERNEL_COLORS[1], "kernel, step i+1"), (COPY_COLOR, "copy"),
              (IDLE, "GPU idle"), (STEP_COLORS[0], "host: decode step"), (WAIT, "host: blocked in a sync")]
    lx = LEFT
    for color, label in legend:
        cv.rect(lx, 56, lx + 16, 72, color)
        cv.text(lx + 22, 57, label, BLACK)
        lx += 22 + text_width(label, 2) + 28

    base = TOP + len(rows) * ROW_H
    for t in ticks:  # grid lines first: the lanes draw over them
        cv.rect(round(LEFT + t * lay.px_per_us), TOP, round(LEFT + t * lay.px_per_us) + 1, base, GRID)
    for i, (row, window) in enumerate(zip(rows, shown, strict=True)):
        y = TOP + i * ROW_H
        host, gpu = (y + NAME_H, y + NAME_H + HOST_H), (y + NAME_H + HOST_H + GAP, y + NAME_H + HOST_H + GAP + GPU_H)
        lay.origins_us.append(None if window is None else window[0])
        lay.host_lanes.append(host)
        lay.gpu_lanes.append(gpu)
        cv.text(LEFT, y + 2, row.label, BLACK)
        note = row.note if window is not None else "no decode step traced"
        if note:
            cv.text(LEFT + text_width(row.label, 2) + 18, y + 2, note, NOTE)
        cv.text(LEFT - 8 - text_width("host", 2), host[0] + 1, "host", BLACK)
        cv.text(LEFT - 8 - text_width("GPU", 2), gpu[0] + 6, "GPU", BLACK)
        if window is None:
            continue
        origin = window[0]
        visible = [e for e in row.events if e.end_us > origin and e.start_us < origin + hi]
        if row.device:
            cv.rect(LEFT, gpu[0], LEFT + PLOT_W, gpu[1], IDLE)  # what no device event covers stays idle
        else:
            cv.text(LEFT + 8, gpu[0] + 6, "no device trace: the GPU lane needs CUDA", NOTE)
        for e in visible:
            x0, x1 = _span_px(lay, i, e, hi)
            if e.kind == STEP:
                cv.rect(x0, host[0], x1, host[1], STEP_COLORS[e.step % 2])
                cv.rect(x0, host[0], x0 + 1, host[1], WHITE)  # a seam between consecutive steps
            elif e.kind == KERNEL:
                color = OTHER_KERNEL if e.step is None else KERNEL_COLORS[e.step % 2]
                cv.rect(x0, gpu[0], x1, gpu[1], color)
            elif e.kind == COPY:
                cv.rect(x0, gpu[0], x1, gpu[1], COPY_COLOR)
        for e in visible:  # waits last, over the step ranges
            if e.kind == SYNC:
                x0, x1 = _span_px(lay, i, e, hi)
                cv.rect(x0, host[0] + 3, x1, host[1] - 3, WAIT)

    for t in ticks:
        x = round(LEFT + t * lay.px_per_us)
        cv.rect(x, base, x + 1, base + 6, BLACK)
        label = f"{t:g}"
        cv.text(x - text_width(label, 2) // 2, base + 10, label, BLACK)
    cv.rect(LEFT, base, LEFT + PLOT_W, base + 1, BLACK)
    axis_label = "time since the first drawn step began on the host (us)"
    cv.text(LEFT + (PLOT_W - text_width(axis_label, 2)) // 2, base + 32, axis_label, BLACK)
    with open(os.fspath(path), "wb") as f:
        f.write(cv.png())
    return lay


def _note(s: dict) -> str:
    """A timeline row's note: the whole window's numbers."""
    if not s["steps"]:
        return ""
    idle = "" if s["gpu_idle_share"] is None else f"GPU idle {s['gpu_idle_share']:.1%}, "
    return f"{idle}host wait {s['host_wait_us_per_step']:,.0f} us/step, step {s['step_us']:,.0f} us"


def trace_results(results: list[dict], variants: set[str], model, out: Path, window: tuple[int, int],
                  title: str) -> None:
    """The main job's --trace: trace every row of `variants` in `results` (adding the summary's numbers to the row),
    save out/trace-<variant>-b<B>-n<N>.json and a timeline of the first steps, out/timeline-b<B>-n<N>.png."""
    cuda = next(model.parameters()).device.type == "cuda"
    if not cuda:
        print("# --trace on CPU: CPU activities only; GPU idle, kernels per step need CUDA (shown as -)")
    by_point: dict[tuple[int, int], list[trace.Trace]] = {}
    for row in results:
        if row["variant"] not in variants:
            continue
        b, n = row["batch"], row["max_new_tokens"]
        path = out / f"trace-{row['variant']}-b{b}-n{n}.json"
        t = trace.trace_generation(row["variant"], model, b, n, window, path=path)
        row.update({k: t.summary[k] for k in ("gpu_idle_share", "host_wait_us_per_step", "syncs_per_step",
                                              "kernels_per_step", "kernel_us_per_step", "step_us", "idle_window")})
        row["traced_steps"], row["trace_file"] = t.summary["steps"], str(path) if path.exists() else None
        by_point.setdefault((b, n), []).append(t)
        print(f"# trace {t.variant} b={b} n={n}: {trace.describe(t)}", flush=True)
    for (b, n), traces in by_point.items():
        rows = [Row(t.variant, t.events, _note(t.summary), device=cuda) for t in traces]
        png = out / f"timeline-b{b}-n{n}.png"
        write_timeline(png, f"{title}, b={b} n={n}: first decode steps of {window[0]}-{window[1] - 1}", rows)
        print(f"# wrote {png}")
