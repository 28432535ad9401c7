#!/bin/bash
# Seventh session, call 5: c_attn's addmm back at one row; probe b=1 and 32 (no profiler), then the GPU suite's
# shards that the lean change or the tie rule touch, or that ran out of time.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
d=/tmp/r7e; mkdir -p $d; T0=$(date +%s); S=$d/summary.txt
timeout 170 python3 -m perf.lean_probe --batch 1 32 --steps-per-graph 1 --no-profile --out $d > $d/probe.log 2>&1
echo "probe rc=$? wall=$(( $(date +%s) - T0 ))s" >> $S
L=$(( 585 - ($(date +%s) - T0) ))
P="python3 -m pytest -p no:cacheprovider -q -rfE --device cuda --hypothesis-profile=gpu"
timeout $L $P correctness/test_equivalence.py -k "naive or kv_dynamic or kv_static or lean_eager" > $d/shard_eager.log 2>&1 &
timeout $L $P correctness/test_equivalence.py -k "cuda_graph or lean_graph" > $d/shard_graphs.log 2>&1 &
timeout $L $P correctness/test_contract.py > $d/shard_contract.log 2>&1 &
timeout $L $P correctness --ignore=correctness/test_contract.py -k "not test_generator_matches_oracles or hf_generate" > $d/shard_rest.log 2>&1 &
wait
echo "suite wall=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)" >> $S
for f in $d/shard_*.log; do echo "$(basename $f): $(tail -1 $f)" >> $S; grep "^correctness near-ties" $f >> $S; done
cd $d && tar czf $OUT/res.tgz . && cat summary.txt && grep -E -A3 "ms per lean_graph|ms per 96" probe.log | head -40
