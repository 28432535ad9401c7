"""See the stall: one generation under torch.profiler, and what its trace says about decode steps START..STOP-1.

    python -m generators --variants cuda_graph,cuda_graph_deferred --grid 32x100 --trace 30:50

Per variant and grid point, after every timing (a profiler session can leave CUPTI attached, slowing what runs
after it): one warm-up generation, then one traced one (profiling.TraceProfiler marks the steps). The trace is saved
for Perfetto / chrome://tracing, and reduced to:
- gpu_idle_share: the share of the window's time in which nothing runs on the device (no kernel, copy or memset);
- host_wait_us_per_step: time the host spends blocked in a synchronisation (`.item()`, an event's synchronize);
- kernels_per_step, kernel_us_per_step: the kernels the window's steps launched, and their summed GPU time.
The numbers are pure functions of (name, kind, start_us, end_us, step) events (summarize), tested on synthetic
ones; events_from_chrome reads them out of the profiler's Chrome trace. How to read them: docs/profiling.md.
"""

from __future__ import annotations

import bisect
import json
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

KERNEL, COPY, SYNC, STEP = "kernel", "copy", "sync", "step"

# Runtime and driver calls that block the host until the device has reached a point in a stream.
SYNC_CALLS = frozenset({
    "cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize", "cudaMemcpy",
    "cuStreamSynchronize", "cuEventSynchronize", "cuCtxSynchronize", "cuMemcpyDtoH", "cuMemcpyDtoH_v2",
})
_STEP_NAME = re.compile(r"decode step (\d+)$")


class Event(NamedTuple):
    name: str
    kind: str  # KERNEL, COPY (a device memcpy/memset), SYNC (the host blocked), STEP (a decode step's host range)
    start_us: float
    end_us: float
    # STEP: the decode step. KERNEL, COPY: the step whose host range launched it (None: launched outside the window).
    step: int | None = None


# --- Metrics: pure functions of events ------------------------------------------------------------------------

def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals, overlaps counted once."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def clip(intervals: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    return [(max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi]


def device_window(events: list[Event]) -> tuple[float, float, int] | None:
    """(start, end, periods): from the first device activity of the first traced step that has any to the first of
    the last one. Each of the `periods` steps in between contributes its work and the gap after it, so the share
    of idle time in this window is the steady state's, on the device's own clock. None: fewer than two such steps."""
    first: dict[int, float] = {}
    for e in events:
        if e.kind in (KERNEL, COPY) and e.step is not None:
            first[e.step] = min(first.get(e.step, e.start_us), e.start_us)
    if len(first) < 2:
        return None
    a, b = min(first), max(first)
    return first[a], first[b], b - a


def summarize(events: list[Event], device: bool) -> dict:
    """The window's numbers. `device`: device activity was recorded (CUDA); if not, the device columns are None.

    gpu_idle_share is measured over device_window() (idle_window "device"); if too few kernels can be tied to
    their steps, over the host's window, from the first step's range start to the last one's end ("host").
    host_wait_us_per_step is the union of SYNC intervals inside the host's window, per step; syncs_per_step counts
    them. kernels_per_step and kernel_us_per_step count the kernels launched by the window's steps (not copies).
    """
    steps = {e.step: e for e in events if e.kind == STEP}
    out: dict = {"steps": len(steps), "step_us": None, "host_wait_us_per_step": None, "syncs_per_step": None,
                 "gpu_idle_share": None, "idle_window": None, "kernels_per_step": None, "kernel_us_per_step": None}
    if not steps:
        return out
    n = len(steps)
    lo, hi = min(e.start_us for e in steps.values()), max(e.end_us for e in steps.values())
    waits = clip([(e.start_us, e.end_us) for e in events if e.kind == SYNC], lo, hi)
    out.update(step_us=(hi - lo) / n, host_wait_us_per_step=union_us(waits) / n, syncs_per_step=len(waits) / n)
    if not device:
        return out
    kernels = [e for e in events if e.kind == KERNEL and e.step in steps]
    out.update(kernels_per_step=len(kernels) / n, kernel_us_per_step=sum(e.end_us - e.start_us for e in kernels) / n)
    window = device_window(events)
    if window is None:
        w0, w1, where = lo, hi, "host"
    else:
        w0, w1, where = window[0], window[1], "device"
    busy = union_us(clip([(e.start_us, e.end_us) for e in events if e.kind in (KERNEL, COPY)], w0, w1))
    out.update(gpu_idle_share=1 - busy / (w1 - w0) if w1 > w0 else None, idle_window=where)
    return out


# --- Reading torch.profiler's Chrome trace ----------------------------------------------------------------------

def events_from_chrome(trace: dict) -> list[Event]:
    """Steps, kernels, device copies and host waits from a torch.profiler (Kineto) Chrome trace.

    A kernel or copy belongs to the step whose "decode step i" range holds the runtime call that launched it (the
    two share args["correlation"]; a CUDA graph's kernels share their cudaGraphLaunch's). A cudaMemcpyAsync into
    pageable memory is a host wait too: it returns only once the copy is done.
    """
    complete = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    ranges = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"]), int(m.group(1)))
                    for e in complete if e.get("cat") == "user_annotation"
                    and (m := _STEP_NAME.match(e.get("name", ""))))
    starts = [r[0] for r in ranges]

    def step_at(ts: float) -> int | None:
        i = bisect.bisect_right(starts, ts) - 1
        return ranges[i][2] if i >= 0 and ts <= ranges[i][1] else None

    launches: dict[int, tuple[float, str]] = {}
    blocking_copies: set[int] = set()
    for e in complete:
        corr = e.get("args", {}).get("correlation")
        if corr is None:
            continue
        if e.get("cat") in ("cuda_runtime", "cuda_driver"):
            launches[corr] = (float(e["ts"]), e.get("name", ""))
        elif e.get("cat") == "gpu_memcpy" and "DtoH" in e.get("name", "") and "Pageable" in e.get("name", ""):
            blocking_copies.add(corr)

    events = [Event(f"decode step {s}", STEP, a, b, s) for a, b, s in ranges]
    for e in complete:
        cat, name, corr = e.get("cat"), e.get("name", ""), e.get("args", {}).get("correlation")
        start = float(e["ts"])
        end = start + float(e["dur"])
        if cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            launch = launches.get(corr)
            step = None if launch is None else step_at(launch[0])
            events.append(Event(name, KERNEL if cat == "kernel" else COPY, start, end, step))
        elif cat in ("cuda_runtime", "cuda_driver") and (name in SYNC_CALLS or corr in blocking_copies):
            events.append(Event(name, SYNC, start, end, step_at(start)))
    return events


# --- Tracing a generation --------------------------------------------------------------------------------------

class Trace(NamedTuple):
    variant: str
    batch: int
    max_new_tokens: int
    events: list[Event]
    summary: dict


def parse_window(text: str) -> tuple[int, int]:
    """--trace START:STOP, decode steps START..STOP-1 with 1 <= START < STOP (step 0 is the prefill); ValueError
    otherwise (the caller turns it into its usage error)."""
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        start = stop = 0
    if not 1 <= start < stop:
        raise ValueError(f"--trace wants START:STOP decode steps with 1 <= START < STOP, like 30:50, got {text!r}")
    return start, stop


def trace_generation(name: str, model, batch: int, max_new_tokens: int, window: tuple[int, int] = (30, 50),
                     path: str | Path | None = None, warmup: int = 1) -> Trace:
    """`warmup` untimed generations of the post's prompt (compile, capture), then one under profiling.tracing(window).

    Writes the Chrome trace to `path` if given. For the perf suite: trace_generation(...).summary["gpu_idle_share"].
    Call it after any timing: the profiler can leave CUPTI attached, which slows the kernels that run after it.
    """
    import torch

    from . import GENERATORS, bench, profiling

    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    input_ids = bench.post_prompt(model, batch, device)
    eos = bench.eos_of(model)
    for _ in range(warmup):
        GENERATORS[name](model, input_ids, max_new_tokens, eos_token_id=eos)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(path) if path is not None else Path(tmp) / "trace.json"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.unlink(missing_ok=True)  # a stale trace must not stand in for a window that never opened
        with profiling.tracing(window, cuda, on_trace_ready=lambda prof: prof.export_chrome_trace(str(file))):
            GENERATORS[name](model, input_ids, max_new_tokens, eos_token_id=eos)
        if cuda:
            torch.cuda.synchronize(device)
        chrome = json.loads(file.read_text()) if file.exists() else {}
    events = events_from_chrome(chrome)
    return Trace(name, batch, max_new_tokens, events, summarize(events, device=cuda))


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def describe(t: Trace) -> str:
    s = t.summary
    if not s["steps"]:
        return "no decode step in the window (the loop stopped before it, or the variant runs its own loop)"
    idle = "-" if s["gpu_idle_share"] is None else f"{s['gpu_idle_share']:.1%} ({s['idle_window']} window)"
    return (f"{s['steps']} steps, {s['step_us']:,.0f} us/step; GPU idle {idle}; host wait "
            f"{s['host_wait_us_per_step']:,.1f} us/step ({s['syncs_per_step']:.1f} syncs); kernels "
            f"{_fmt(s['kernels_per_step'], '.1f')}/step, {_fmt(s['kernel_us_per_step'], ',.0f')} us/step")
