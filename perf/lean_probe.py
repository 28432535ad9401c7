"""Evidence for the lean step (issue 6): where a decode step's GPU time goes, whether several steps per CUDA
graph pay, and what skinny.py's matmul and flash_decode.py's attention give.

    python -m perf.lean_probe --batch 1 32 --out out/

Kernels per step: CUDA kernels (memcpy/memset excluded) the profiler sees in a compiled, not captured, generation
of 2 + K steps minus one of 2 steps, divided by K, so the prefill does not count; the same profile gives each
kernel's GPU time per step. Steps per graph: one captured graph holding S lean steps, replayed N / S times with no
stop check, against the same N steps as single-step replays; the same with the lean step's projections through
their modules (cuBLAS) instead of skinny.py, with its attention as reductions instead of flash_decode.py, and
without fused_qkv (GPT-2's K/V cache writes and q as kernels of their own before the attention kernel, instead of
c_attn's output or partial sums straight into it).
Whole calls: lean_graph as the main job times it, with its prefill captured in a CUDA graph (the default) or run
eagerly, calls of the two alternating.
GEMMs: GPT-2 small's four layer projections at M = batch rows, each shape as one graph of 12 calls over the 12
layers' own weights (distinct tensors, so L2 holds none of them between calls), replayed; cuBLAS as the model calls
it (addmm on the [in, out] weight), cuBLAS on a transposed contiguous copy (F.linear, nn.Linear's layout), and
skinny.py's kernel (partial sums only: their sum is fused into the next kernel in the compiled step).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from generators import Generator, bench, loop, models, release_sessions, skinny

COMPILED = {
    "hf": Generator("static_compiled", "", execution="compile"),
    "lean": Generator("lean_compiled", "", forward="lean", execution="compile"),
}


def _kernels(g: Generator, model: torch.nn.Module, ids: torch.Tensor, n: int) -> list:
    g(model, ids, n)  # compile outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        g(model, ids, n)
        torch.cuda.synchronize()
    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
            and not any(s in e.name.lower() for s in ("memcpy", "memset"))]


def per_step(long: list, short: list, k: int) -> dict[str, dict[str, float]]:
    """Launches and GPU us per decode step of each kernel name, from the events of a generation of 2 + k steps and
    one of 2 (the difference is k decode steps, no prefill), largest time first."""
    per_name: dict[str, list[float]] = {}
    for events, sign in ((long, 1), (short, -1)):
        for e in events:
            launches_us = per_name.setdefault(e.name[:80], [0.0, 0.0])
            launches_us[0] += sign / k
            launches_us[1] += sign * e.device_time_total / k
    ranked = sorted(per_name.items(), key=lambda kv: -kv[1][1])
    return {name: {"launches": round(n, 2), "us": round(us, 2)} for name, (n, us) in ranked
            if abs(n) > 1e-9 or abs(us) > 1e-9}


def step_profile(g: Generator, model: torch.nn.Module, batch: int, k: int = 10, top: int = 8) -> dict:
    ids = bench.post_prompt(model, batch, "cuda")
    short, long = _kernels(g, model, ids, 2), _kernels(g, model, ids, 2 + k)
    by_name = per_step(long, short, k)  # every kernel, so a change in the count can be traced to its kernels
    busy = sum(e.device_time_total for e in long) - sum(e.device_time_total for e in short)
    return {"kernels_per_step": (len(long) - len(short)) / k, "kernel_us_per_step": busy / k,
            "top_kernels_us_per_step": {name: v["us"] for name, v in list(by_name.items())[:top]},
            "kernels_by_name_per_step": by_name}


def _graph_us(calls: list, reps: int = 20) -> float:
    """Median us per call of `calls` captured in one graph and replayed."""
    graph = loop.capture(lambda: [c() for c in calls])
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return sorted(times)[len(times) // 2]


def gemm_table(model: torch.nn.Module, rows: int) -> dict[str, dict[str, float]]:
    """us per call and GB/s of weights read, per layer projection shape, at M = rows."""
    out = {}
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        mods = [layer.get_submodule(name) for layer in model.transformer.h]
        x = torch.randn(rows, mods[0].weight.shape[0], device="cuda", dtype=mods[0].weight.dtype)
        transposed = [m.weight.t().contiguous() for m in mods]
        arms = {
            "cublas_addmm": [lambda m=m, x=x: torch.addmm(m.bias, x, m.weight) for m in mods],
            "cublas_linear_transposed": [lambda m=m, w=w, x=x: F.linear(x, w, m.bias)
                                         for m, w in zip(mods, transposed, strict=True)],
            "skinny_partials": [lambda m=m, x=x: skinny.partials(x, m.weight) for m in mods],
        }
        nbytes = mods[0].weight.numel() * mods[0].weight.element_size()
        k, n = mods[0].weight.shape
        shape = f"{name} {(k, n)} plan {skinny.plan(rows, n, k, skinny._sm_count(x.device))}"
        out[shape] = {}
        for arm, calls in arms.items():
            us = _graph_us(calls)
            out[shape][arm] = {"us": round(us, 2), "GBps": round(nbytes / us / 1e3, 1)}
        del transposed
    return out


def steps_per_graph(model: torch.nn.Module, batch: int, n: int, s_values: list[int], **lean_flags: bool
                    ) -> dict[int, float]:
    """Median ms of n lean steps as n / s replays of a graph holding s steps; lean_flags set LeanModel's
    skinny_matmul / flash_attention / fused_qkv (before the first trace: dynamo guards on them)."""
    ids = bench.post_prompt(model, batch, "cuda")
    session = loop.LeanSession(model, ids, n + max(s_values), None, None, "compile")
    for flag, value in lean_flags.items():
        setattr(session.lean, flag, value)
    out = {}
    for s in s_values:
        session.reset(ids)  # capture() runs loop.CAPTURE_WARMUP steps: n + max(s) leaves room for them
        session.prefill()
        graph = loop.capture(session.step, s)
        times = []
        for _ in range(7):
            session.reset(ids)
            session.prefill()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n // s):
                graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        out[s] = sorted(times)[len(times) // 2]
    return out


def generation_ms(model: torch.nn.Module, batch: int, n: int, reps: int = 9) -> dict[str, float]:
    """Median ms of lean_graph's whole call as the main job times it (bench.timed_call: input checks, reset,
    prefill, n - 1 step replays with the deferred stop check, the trim), prefill captured (the default) or eager;
    the arms alternate call by call, each with its own session, so drift in the machine hits both alike."""
    ids, eos = bench.post_prompt(model, batch, "cuda"), bench.eos_of(model)
    arms = {"prefill captured": True, "prefill eager": False}
    sessions, times = {}, {arm: [] for arm in arms}
    for _ in range(reps + 1):  # the first round warms up (compile, capture)
        for arm, captured in arms.items():
            loop.LeanSession.capture_prefill = captured
            loop._SESSIONS.clear()  # release_sessions() without dropping the other arm's session, kept here
            loop._SESSIONS.update(sessions.get(arm, {}))
            elapsed, _ = bench.timed_call("lean_graph", model, ids, n, eos)
            sessions[arm] = dict(loop._SESSIONS)
            times[arm].append(elapsed * 1e3)
    loop.LeanSession.capture_prefill = True
    release_sessions()
    return {arm: round(sorted(t[1:])[reps // 2], 2) for arm, t in times.items()}


@torch.inference_mode()  # as every generator runs: the skinny matmul has no autograd formula
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default="out")
    parser.add_argument("--steps-per-graph", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler (kernel counts)")
    args = parser.parse_args()
    model = models.build("gpt2-small", dtype=args.dtype, device="cuda")
    result = {"machine": bench.machine_info(torch.device("cuda")), "dtype": args.dtype, "rows": []}
    for batch in args.batch:
        # Graph timings first: a profiler session can leave CUPTI attached, which slows later kernels.
        row = {"batch": batch,
               "ms per lean_graph call, 100 new tokens": generation_ms(model, batch, 100),
               "ms per 96 lean steps by steps per graph": steps_per_graph(model, batch, 96, args.steps_per_graph),
               "ms per 96 lean steps, projections through cuBLAS": steps_per_graph(model, batch, 96, [1],
                                                                                  skinny_matmul=False),
               "ms per 96 lean steps, attention as reductions": steps_per_graph(model, batch, 96, [1],
                                                                                flash_attention=False),
               "ms per 96 lean steps, K/V writes and q as kernels of their own": steps_per_graph(
                   model, batch, 96, [1], fused_qkv=False)}
        release_sessions()
        row["gemm_us"] = gemm_table(model, batch)
        for label, g in {} if args.no_profile else COMPILED.items():
            row[label] = step_profile(g, model, batch)
            release_sessions()
        print(json.dumps(row, indent=1), flush=True)
        result["rows"].append(row)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"lean_probe_{args.dtype}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
