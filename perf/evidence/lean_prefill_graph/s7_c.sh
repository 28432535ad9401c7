#!/bin/bash
# Seventh session, call 3: the whole GPU correctness suite (4 shards at once), then the main job fp32 + bf16.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
d=/tmp/r7c; mkdir -p $d; T0=$(date +%s); S=$d/summary.txt
P="python3 -m pytest -p no:cacheprovider -q -rfE --device cuda --hypothesis-profile=gpu"
timeout 330 $P correctness/test_equivalence.py -k "naive or kv_dynamic or kv_static or lean_eager" > $d/shard_eager.log 2>&1 &
timeout 330 $P correctness/test_equivalence.py -k "static_compiled or pipelined" > $d/shard_compiled.log 2>&1 &
timeout 330 $P correctness/test_equivalence.py -k "cuda_graph or lean_graph" > $d/shard_graphs.log 2>&1 &
timeout 330 $P correctness -k "not test_generator_matches_oracles or hf_generate" > $d/shard_rest.log 2>&1 &
wait
echo "suite wall=$(( $(date +%s) - T0 ))s" >> $S
for f in $d/shard_*.log; do echo "$(basename $f): $(tail -1 $f)" >> $S; grep "^correctness near-ties" $f >> $S; done
timeout 200 taskset -c 2 python3 -m generators --variants cuda_graph_deferred,hf_generate_static,lean_graph --grid 1x100,4x100,16x100,32x100,64x100 --reps 5 --out $d/fp32 > $d/fp32.log 2>&1
echo "fp32 rc=$? wall=$(( $(date +%s) - T0 ))s" >> $S
timeout $(( 585 - ($(date +%s) - T0) )) taskset -c 2 python3 -m generators --dtype bfloat16 --variants cuda_graph_deferred,hf_generate_static,lean_graph --grid 32x100 --reps 5 --out $d/bf16 > $d/bf16.log 2>&1
echo "bf16 rc=$? wall=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)" >> $S
cd $d && tar czf $OUT/res.tgz . && cat summary.txt && grep "^|" fp32.log bf16.log | grep -v naive
