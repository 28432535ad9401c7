#!/bin/bash
# Seventh session, call 4: lean_probe at b=32 (with the profiler: every kernel) and b=1 (whole-call and 96-step A/Bs).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
d=/tmp/r7d; mkdir -p $d/b32 $d/b1; T0=$(date +%s); S=$d/summary.txt
timeout 300 python3 -m perf.lean_probe --batch 32 --steps-per-graph 1 --out $d/b32 > $d/probe32.log 2>&1
echo "probe32 rc=$? wall=$(( $(date +%s) - T0 ))s" >> $S
timeout $(( 585 - ($(date +%s) - T0) )) python3 -m perf.lean_probe --batch 1 --steps-per-graph 1 --no-profile --out $d/b1 > $d/probe1.log 2>&1
echo "probe1 rc=$? wall=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)" >> $S
cd $d && tar czf $OUT/res.tgz . && cat summary.txt && grep -E -A3 "ms per lean_graph|ms per 96" probe32.log probe1.log | head -40; grep -E "kernels_per_step|kernel_us_per_step" probe32.log
