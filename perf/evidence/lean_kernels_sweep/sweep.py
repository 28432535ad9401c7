"""Device-only probe (issue 6): (1) every kernel of one compiled lean step, in order, with its GPU time, at a few
batch sizes; (2) skinny.py's partials kernel over a grid of tile/split/warp configs per GPT-2 projection shape,
against a one-kernel read of the same weights (w.sum(0)) as the reference for "one kernel reading these bytes".
Writes JSON to argv[1]; stops the sweep at a time budget (argv[2] seconds)."""
import itertools
import json
import sys
import time

import torch
import triton

from generators import Generator, bench, models, release_sessions, skinny
from perf.lean_probe import _graph_us, _kernels

T0 = time.time()
BUDGET = float(sys.argv[2]) if len(sys.argv) > 2 else 240
out = {"machine": bench.machine_info(torch.device("cuda")), "steps": {}, "sweep": {}, "reference": {}}
torch.set_grad_enabled(False)
model = models.build("gpt2-small", dtype="float32", device="cuda")
torch.backends.cuda.matmul.allow_tf32 = True

# (1) kernels of one step: the last step of a 2+k-step compiled generation
g = Generator("lean_compiled", "", forward="lean", execution="compile")
for batch in (1, 4, 32):
    ids = bench.post_prompt(model, batch, "cuda")
    k = 4
    short, long = _kernels(g, model, ids, 2), _kernels(g, model, ids, 2 + k)
    per_step = (len(long) - len(short)) // k
    long.sort(key=lambda e: e.time_range.start)
    last = long[-per_step - 1:]  # + the finish kernels: print a little more than one step
    out["steps"][batch] = {"kernels_per_step": (len(long) - len(short)) / k,
                           "kernels": [(e.name[:90], round(e.device_time_total, 2)) for e in last]}
    print(batch, out["steps"][batch]["kernels_per_step"], flush=True)
    release_sessions()
print("steps done", round(time.time() - T0), flush=True)

# (2) the sweep
layers = model.transformer.h
shapes = {name: [layer.get_submodule(name).weight for layer in layers]
          for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
sms = torch.cuda.get_device_properties(0).multi_processor_count
for name, ws in shapes.items():
    nbytes = ws[0].numel() * 4
    us = _graph_us([lambda w=w: w.sum(0) for w in ws])
    out["reference"][name] = {"sum0_us": round(us, 2), "GBps": round(nbytes / us / 1e3)}
print(json.dumps(out["reference"]), flush=True)


def run_cfg(x, w, block_n, block_k, per_sm, warps, stages, precision, rounded):
    m, kdim = x.shape
    n = w.shape[1]
    col_blocks = -(-n // block_n)
    tiles = -(-kdim // block_k)
    want = max(1, min(tiles, -(-per_sm * sms // col_blocks)))
    per_split = -(-tiles // want)
    splits = -(-tiles // per_split)
    outb = torch.empty((splits, m, n), device="cuda", dtype=torch.float32)

    def call():
        skinny._partials_kernel[(col_blocks, splits)](
            x, w, outb, m, n, kdim, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
            K_PER_SPLIT=per_split * block_k, BLOCK_M=max(16, triton.next_power_of_2(m)), BLOCK_N=block_n,
            BLOCK_K=block_k, PRECISION=precision, ROUND_TF32=rounded, num_warps=warps, num_stages=stages)
    return call, splits


configs = list(itertools.product((32, 64, 128), (64,), (1, 2, 4), ((4, 2), (4, 3), (8, 3))))
for m in (32, 4, 64):
    for name, ws in shapes.items():
        if time.time() - T0 > BUDGET:
            break
        x = torch.randn(m, ws[0].shape[0], device="cuda")
        rows = []
        for block_n, block_k, per_sm, (warps, stages) in configs:
            if time.time() - T0 > BUDGET:
                break
            try:
                calls = []
                for w in ws:
                    c, splits = run_cfg(x, w, block_n, block_k, per_sm, warps, stages, "tf32", True)
                    calls.append(c)
                us = _graph_us(calls)
            except Exception as e:  # noqa: BLE001 (e.g. out of shared memory)
                rows.append({"cfg": [block_n, block_k, per_sm, warps, stages], "error": str(e)[:80]})
                continue
            partial_mb = splits * m * ws[0].shape[1] * 4 / 1e6
            rows.append({"cfg": [block_n, block_k, per_sm, warps, stages], "splits": splits, "us": round(us, 2),
                         "partials_MB": round(partial_mb, 2)})
        rows.sort(key=lambda r: r.get("us", 1e9))
        # the best 3 again with tf32x3 (today's precision)
        for r in rows[:3]:
            if "us" in r:
                bn, bk, ps, wa, st = r["cfg"]
                r["us_tf32x3"] = round(_graph_us([run_cfg(x, w, bn, bk, ps, wa, st, "tf32x3", False)[0]
                                                  for w in ws]), 2)
        cur = skinny.plan(m, ws[0].shape[1], ws[0].shape[0], sms)
        out["sweep"][f"M{m} {name}"] = {"today_plan": cur, "best": rows[:6],
                                        "today_cfg_us": next((r["us"] for r in rows if "us" in r and r["cfg"][:2]
                                                              == [cur[0], 64] and r["cfg"][2:] == [2, 4, 3]), None)}
        print(f"M{m} {name}", json.dumps(out["sweep"][f"M{m} {name}"]["best"][:2]),
              out["sweep"][f"M{m} {name}"]["today_cfg_us"], round(time.time() - T0), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
