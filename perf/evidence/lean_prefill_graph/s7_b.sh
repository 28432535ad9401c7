#!/bin/bash
# Seventh session, call 2: GPU correctness with the bias fold, captured prefill and tie dedup; the main job; probe b=1.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
d=/tmp/r7b; mkdir -p $d; T0=$(date +%s); S=$d/summary.txt
timeout 200 python3 -m pytest -p no:cacheprovider -q -rf --device cuda --hypothesis-profile=gpu correctness/test_equivalence.py correctness/test_skinny.py correctness/test_flash_decode.py -k "lean or skinny or flash" > $d/correctness_lean.log 2>&1
echo "lean correctness rc=$? wall=$(( $(date +%s) - T0 ))s" >> $S
timeout 70 python3 -m pytest -p no:cacheprovider -q -rf --device cuda correctness/test_contract.py -k "lean_graph" > $d/contract_lean_graph.log 2>&1
echo "contract lean_graph rc=$? wall=$(( $(date +%s) - T0 ))s" >> $S
timeout 240 taskset -c 2 python3 -m generators --variants cuda_graph_deferred,hf_generate_static,lean_graph --grid 1x100,4x100,16x100,32x100,64x100 --reps 5 --out $d/fp32 > $d/fp32.log 2>&1
echo "fp32 rc=$? wall=$(( $(date +%s) - T0 ))s" >> $S
timeout $(( 580 - ($(date +%s) - T0) )) taskset -c 2 python3 -m generators --dtype bfloat16 --variants cuda_graph_deferred,hf_generate_static,lean_graph --grid 32x100 --reps 5 --out $d/bf16 > $d/bf16.log 2>&1
echo "bf16 rc=$? wall=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)" >> $S
cd $d && tar czf $OUT/res.tgz . && cat summary.txt && tail -2 correctness_lean.log contract_lean_graph.log && grep "^|" fp32.log bf16.log | grep -v naive
