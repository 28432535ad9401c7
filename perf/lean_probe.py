"""Evidence for the lean step (issue 6): where a decode step's GPU time goes, whether several steps per CUDA
graph pay, what skinny.py's matmul gives against cuBLAS, and what fusing c_attn's output into the attention gives.

    python -m perf.lean_probe --batch 1 32 --out out/

Kernels per step: CUDA kernels (memcpy/memset excluded) the profiler sees in a compiled, not captured, generation
of 2 + K steps minus one of 2 steps, divided by K, so the prefill does not count; the same profile gives each
kernel's GPU time per step. Steps per graph: one captured graph holding S lean steps, replayed N / S times with no
stop check, against the same N steps as single-step replays; the same without fused_qkv (GPT-2's K/V cache writes
and q as kernels of their own before the attention kernel, instead of c_attn's output or partial sums straight
into it).
Whole calls: lean_graph and cuda_graph_deferred (the same CUDA graph and stop check over Hugging Face's forward) as
the main job times them, calls of the two alternating.
GEMMs: GPT-2 small's four layer projections at M = batch rows, each shape as one graph of 12 calls over the 12
layers' own weights (distinct tensors, so L2 holds none of them between calls), replayed; cuBLAS as the model calls
it (addmm on the [in, out] weight), cuBLAS on a transposed contiguous copy (F.linear, nn.Linear's layout), and
skinny.py's kernel (partial sums only: their sum is fused into the next kernel in the compiled step).
Each of these runs alone, instead of the above: --pdl, inductor's programmatic dependent launch off and on
(pdl_ab); --head, the LM head and argmax as cuBLAS + argmax against head_argmax.py (head_table); --gemm, the GEMM
table alone; --skinny-sweep, skinny.py's launch configurations (skinny_sweep); --ab NAME..., lean_graph against each
of LeanModel's variants (VARIANTS) in turn (variant_ab), with each arm's kernels per step unless --no-profile.
The model is GPT-2 small; --ab, --pdl and --head take another (--model, e.g. llama-110m).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from generators import (
    COMPILE,
    GENERATORS,
    Generator,
    bench,
    caches,
    head_argmax,
    loop,
    models,
    release_sessions,
    skinny,
)
from generators.execution import capture
from generators.timer import cuda_seconds

COMPILED = {
    "hf": GENERATORS["static_compiled"],
    "lean": Generator("lean_compiled", "lean forward, compiled step", cache=caches.LeanKV, execution=COMPILE),
}


# LeanModel's options that --ab sets, by name; "a+b" sets both.
VARIANTS = {"unfused_head": {"fused_head": False},  # cuBLAS's LM head, then argmax over the logits
            "skinny_16": {"skinny_max_rows": 16}, "skinny_32": {"skinny_max_rows": 32},
            "tf32x3": {"skinny_fp32": "tf32x3", "skinny_max_rows": 16},  # fp32 as until 2026-12-01
            "unfused_qkv": {"fused_qkv": False},  # GPT-2's K/V writes and q as kernels of their own
            "fused_epilogues": {"fused_epilogues": True},  # bias, activation, residual and norms in the GEMMs
            "pdl": {"pdl": True}, "no_pdl": {"pdl": False},  # programmatic dependent launch: lean's and inductor's
            "gemv": {"skinny_min_rows": 1}, "no_gemv": {"skinny_min_rows": 2},  # one row through skinny.py or not
            "many_slabs": {"skinny_max_splits": skinny.UNCAPPED},  # skinny.plan's slabs uncapped, as before f9a6d5b
            "eight_slabs": {"skinny_max_splits": 8}}  # the cap as f9a6d5b..f1c7b9f had it


def variant_cache(name: str) -> type[caches.LeanKV]:
    """LeanKV over LeanModel with the options of `name`: one of VARIANTS, or several joined by "+"."""
    options = {}
    for part in name.split("+"):
        if part not in VARIANTS:
            raise ValueError(f"--ab {name}: {part!r} is not one of {', '.join(VARIANTS)}")
        options |= VARIANTS[part]
    return type(f"LeanKV_{name}", (caches.LeanKV,), {"lean_options": options})


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
    graph = capture(lambda: [c() for c in calls])
    times = [cuda_seconds(graph.replay) * 1e6 / len(calls) for _ in range(reps)]
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
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        shape = f"{name} {(k, n)} plan {skinny.plan(rows, n, k, sms)}"
        out[shape] = {}
        for arm, calls in arms.items():
            us = _graph_us(calls)
            out[shape][arm] = {"us": round(us, 2), "GBps": round(nbytes / us / 1e3, 1)}
        del transposed
    return out


def _skinny_config_us(x: torch.Tensor, mods: list, block_n: int | None, block_k: int, per_sm: int,
                      stages: int) -> dict:
    """us a call of skinny.py's kernel over `mods`' weights at one launch configuration (plan's and launch's
    keywords), 12 calls a graph as gemm_table times them."""
    (m, k), n = x.shape, mods[0].weight.shape[1]
    sms = skinny.sm_count(x.device)  # 4 in Triton's interpreter
    bn, splits, per_split = skinny.plan(m, n, k, sms, block_n=block_n, block_k=block_k, per_sm=per_sm)
    bufs = [torch.empty(splits, m, n, device=x.device) for _ in mods]
    fp32 = skinny.matmul_precision()
    us = _graph_us([lambda w=mod.weight, b=b: skinny.launch(x, w, b, fp32, bn, per_split, block_k=block_k,
                                                            num_stages=stages)
                    for mod, b in zip(mods, bufs, strict=True)])
    return {"us": round(us, 2), "block_n": bn, "block_k": block_k, "per_sm": per_sm, "stages": stages,
            "splits": splits}


def skinny_sweep(model: torch.nn.Module, rows: int, top: int = 3) -> dict[str, dict]:
    """skinny.py's kernel over launch configurations (BLOCK_N, BLOCK_K, programs per SM, pipeline stages), per layer
    shape at M = rows; the plan in use against the `top` fastest. A config's splits are how many partial sums the
    next kernel reads: fewer is cheaper there, which this does not time."""
    out = {}
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        mods = [layer.get_submodule(name) for layer in model.transformer.h]
        w = mods[0].weight
        x = torch.randn(rows, w.shape[0], device=w.device, dtype=w.dtype)
        configs = [_skinny_config_us(x, mods, bn, bk, per_sm, stages) for bn in (32, 64, 128)
                   for bk in (32, 64, 128) for per_sm in (1, 2, 4) for stages in (3, 4)]
        shape = f"{name} {tuple(w.shape)}"
        out[shape] = {"in use": _skinny_config_us(x, mods, None, skinny.BLOCK_K, 2, 3),
                      "fastest": sorted(configs, key=lambda c: c["us"])[:top], "configs": len(configs)}
        print(json.dumps({"rows": rows, shape: out[shape]}), flush=True)  # progress: the sweep compiles 54 kernels
    return out


def head_table(model: torch.nn.Module, rows: int, samples: int = 64) -> dict:
    """The LM head and the greedy pick at M = rows: cuBLAS's GEMM then argmax over the logits (the lean step's two
    kernels) against head_argmax.py's one kernel, us per call (12 calls a graph over the model's own weight) and
    GB/s of weight read; and over `samples` random hidden states, the rows whose picks differ, with the cuBLAS
    logits' gap between the two picks (a near-tie is small against the logits' spread)."""
    w = model.lm_head.weight  # [V, K], GPT-2's tied wte
    x = torch.randn(rows, w.shape[1], device="cuda", dtype=w.dtype)
    arms = {"cublas_then_argmax": lambda: F.linear(x, w).argmax(-1),
            "head_argmax": lambda: head_argmax.head_argmax(x, w)}
    out = {"rows": rows, "dtype": str(w.dtype).removeprefix("torch.")}
    for arm, call in arms.items():
        us = _graph_us([call] * 12)
        out[arm] = {"us": round(us, 2), "GBps": round(w.numel() * w.element_size() / us / 1e3, 1)}
    differ, gaps = 0, []
    for _ in range(samples):
        h = torch.randn(rows, w.shape[1], device="cuda", dtype=w.dtype)
        logits = F.linear(h, w).float()
        ours, theirs = head_argmax.head_argmax(h, w), logits.argmax(-1)
        for r in (ours != theirs).nonzero().flatten().tolist():
            differ += 1
            gaps.append(round((logits[r, theirs[r]] - logits[r, ours[r]]).item(), 6))
    out["picks differing"] = f"{differ} of {rows * samples} rows"
    out["their gaps"] = gaps[:20]
    out["logit spread (std)"] = round(logits.std().item(), 4)
    return out


def steps_per_graph(model: torch.nn.Module, batch: int, n: int, s_values: list[int],
                    cache: type[caches.Cache] = caches.LeanKV) -> dict[int, float]:
    """Median ms of n lean steps (compiled, no stop check) as n / s replays of a graph holding s steps."""
    ids = bench.post_prompt(model, batch, "cuda")
    session = loop.Session(cache, COMPILE, model, ids, n + max(s_values), None, None)
    out = {}
    for s in s_values:
        session.reset(ids)  # capture() runs execution.CAPTURE_WARMUP steps: n + max(s) leaves room for them
        session.prefill()
        graph = capture(session.step, s)

        def replays(graph: torch.cuda.CUDAGraph = graph, s: int = s) -> None:
            for _ in range(n // s):
                graph.replay()

        times = []
        for _ in range(7):
            session.reset(ids)
            session.prefill()
            times.append(1e3 * cuda_seconds(replays))
        out[s] = sorted(times)[len(times) // 2]
    return out


def generation_ms(model: torch.nn.Module, batch: int, n: int, reps: int = 9,
                  arms: tuple[str, ...] = ("lean_graph", "cuda_graph_deferred")) -> dict[str, float]:
    """Median ms of whole calls as the main job times them (bench.timed_call: input checks, reset, prefill, n - 1
    step replays with the stop check, the trim); the arms alternate call by call, so drift in the machine hits them
    alike. Each arm keeps its session (loop.MAX_SESSIONS holds two)."""
    return alternating_calls(model, batch, n, reps, {arm: GENERATORS[arm] for arm in arms})[0]


def alternating_calls(model: torch.nn.Module, batch: int, n: int, reps: int, registry: dict[str, Generator]
                      ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """generation_ms over the generators of `registry`, and each one's tokens of its last call."""
    ids, eos = bench.post_prompt(model, batch, "cuda"), bench.eos_of(model)
    release_sessions()
    times, tokens = {name: [] for name in registry}, {}
    for _ in range(reps + 1):  # the first round warms up (compile, capture)
        for name in registry:
            elapsed, tokens[name] = bench.timed_call(name, model, ids, n, eos, registry=registry)
            times[name].append(elapsed * 1e3)
    release_sessions()
    return {name: round(sorted(t[1:])[reps // 2], 2) for name, t in times.items()}, tokens


def variant_ab(model: torch.nn.Module, batch: int, variant: str, reps: int = 9, profile: bool = True) -> dict:
    """lean_graph against lean_graph over one of VARIANTS: whole calls alternating as generation_ms times them, 96
    replayed steps, the rows whose 100 tokens differ (a near-tie parts them; the correctness suite rules), and with
    profile each arm's kernels per compiled step (step_profile), after the timings as in the default run."""
    other = dataclasses.replace(GENERATORS["lean_graph"], name=f"lean_graph_{variant}", cache=variant_cache(variant))
    registry = {"lean_graph": GENERATORS["lean_graph"], other.name: other}
    ms, tokens = alternating_calls(model, batch, 100, reps, registry)
    plain, ours = tokens.values()
    differ = (plain != ours).any(dim=1)
    row = {"batch": batch, "variant": variant, "ms per call": ms,
           "ms per 96 steps": {n: round(steps_per_graph(model, batch, 96, [1], g.cache)[1], 2)
                               for n, g in registry.items()},
           "rows whose tokens differ": f"{int(differ.sum())} of {batch}",
           "first differing position": int((plain != ours).any(dim=0).nonzero()[0]) if differ.any() else None}
    if profile:
        row["kernels per step"] = {}
        for name, g in registry.items():
            p = step_profile(Generator(f"{name}_compiled", "", cache=g.cache, execution=COMPILE), model, batch)
            row["kernels per step"][name] = {k: p[k] for k in ("kernels_per_step", "kernel_us_per_step")}
            release_sessions()
    return row


def pdl_ab(model: torch.nn.Module, batch: int, repeats: int = 2) -> dict:
    """Programmatic dependent launch (Hopper) in inductor's Triton kernels, off and on, in alternation: whole
    lean_graph calls (generation_ms) and 96 replayed lean steps, each arm compiled afresh (inductor decides PDL when
    it generates a kernel); and whether each arm's tokens are the first arm's. PDL lets a kernel start its launch
    and prologue while the one before it finishes; the kernels wait (gdc_wait) before they read its outputs."""
    config = torch._inductor.config.triton
    if not hasattr(config, "enable_pdl"):
        return {"batch": batch, "skipped": f"torch {torch.__version__} has no inductor config triton.enable_pdl"}
    lean = {"lean_graph": GENERATORS["lean_graph"]}
    runs, reference = [], None
    for _ in range(repeats):
        for pdl in (False, True):
            config.enable_pdl = pdl
            release_sessions()  # the graphs go before the compiled code they replay
            torch._dynamo.reset()
            ms, last = alternating_calls(model, batch, 100, 5, lean)
            steps = steps_per_graph(model, batch, 96, [1])[1]
            tokens = last["lean_graph"]
            reference = tokens if reference is None else reference
            runs.append({"pdl": pdl, "ms per call": ms["lean_graph"], "ms per 96 steps": round(steps, 2),
                         "tokens as the first arm's": bool(torch.equal(tokens, reference))})
            print(json.dumps({"batch": batch, **runs[-1]}), flush=True)
    config.enable_pdl = False
    release_sessions()
    torch._dynamo.reset()
    return {"batch": batch, "runs": runs}


@torch.inference_mode()  # as every generator runs: the skinny matmul has no autograd formula
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model", default="gpt2-small",
                        help="a models.MODELS name or a local directory (not gpt2-small: --ab, --pdl or --head)")
    parser.add_argument("--out", default="out")
    parser.add_argument("--steps-per-graph", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler (kernel counts)")
    parser.add_argument("--pdl", action="store_true", help="only the A/B of inductor's PDL (pdl_ab), per batch")
    parser.add_argument("--head", action="store_true", help="only the LM head and argmax table (head_table)")
    parser.add_argument("--gemm", action="store_true", help="only the layer GEMM table (gemm_table)")
    parser.add_argument("--skinny-sweep", action="store_true",
                        help="only skinny.py's launch configurations per layer shape (skinny_sweep)")
    parser.add_argument("--ab", nargs="+", default=[], metavar="NAME",
                        help=f"only lean_graph against each variant (variant_ab): {', '.join(VARIANTS)}, or a+b")
    args = parser.parse_args()
    for name in args.ab:  # a misspelt name fails here, not after minutes of the others
        try:
            variant_cache(name)
        except ValueError as e:
            parser.error(str(e))
    if args.model != "gpt2-small" and not (args.ab or args.pdl or args.head):
        parser.error(f"--model {args.model}: the GEMM tables and the default run read GPT-2's layers; "
                     "other models go with --ab, --pdl or --head")
    model = models.build(args.model, dtype=args.dtype, device="cuda")
    result = {"machine": bench.machine_info(torch.device("cuda")), "model": args.model, "dtype": args.dtype,
              "rows": []}
    for flag, probe in (("pdl", pdl_ab), ("head", head_table), ("gemm", gemm_table), ("skinny_sweep", skinny_sweep),
                        ("ab", variant_ab)):
        if getattr(args, flag):
            for batch in args.batch:
                for variant in args.ab if flag == "ab" else [None]:
                    row = (probe(model, batch) if variant is None
                           else probe(model, batch, variant, profile=not args.no_profile))
                    result["rows"].append({"batch": batch, **row})  # gemm_table's and skinny_sweep's lack it
                    print(json.dumps(result["rows"][-1]), flush=True)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            model_tag = "" if args.model == "gpt2-small" else f"_{Path(args.model).name}"
            (Path(args.out) / f"{flag}{model_tag}_{args.dtype}.json").write_text(json.dumps(result, indent=1))
            return
    for batch in args.batch:
        # Graph timings first: a profiler session can leave CUPTI attached, which slows later kernels.
        row = {"batch": batch,
               "ms per call, 100 new tokens": generation_ms(model, batch, 100),
               "ms per 96 lean steps by steps per graph": steps_per_graph(model, batch, 96, args.steps_per_graph),
               "ms per 96 lean steps, K/V writes and q as kernels of their own": steps_per_graph(
                   model, batch, 96, [1], variant_cache("unfused_qkv"))}
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
