#!/bin/bash
# Seventh session, call 1: teeth of the short-generation test, GPU tests of this session's changes, probe at b=32.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
d=/tmp/r7; mkdir -p $d; T0=$(date +%s); S=$d/summary.txt
# 1. The short-generation test without the capture room (loop.py's fix removed in a copy): must fail.
mkdir -p /tmp/broken && cp -r generators correctness perf conftest.py pyproject.toml /tmp/broken/
sed -i 's/max_new_tokens = max(max_new_tokens, CAPTURE_ROOM)/pass/' /tmp/broken/generators/loop.py
grep -c "CAPTURE_ROOM)" /tmp/broken/generators/loop.py >> $S
(cd /tmp/broken && PYTHONPATH=/tmp/site:/tmp/broken timeout 120 python3 -m pytest -p no:cacheprovider -q -x --device cuda correctness/test_contract.py -k warm_up > $d/teeth_room.log 2>&1; echo "teeth (want fail) rc=$? wall=$(( $(date +%s) - T0 ))s" >> $S)
# 2. This session's changes on the GPU.
timeout 90 python3 -m pytest -p no:cacheprovider -q -rf --device cuda correctness/test_contract.py correctness/test_bad_input.py -k "warm_up or capture_room" > $d/short_gpu.log 2>&1
echo "short/capture-room tests rc=$? wall=$(( $(date +%s) - T0 ))s" >> $S
timeout 210 python3 -m pytest -p no:cacheprovider -q -rf --device cuda --hypothesis-profile=gpu correctness/test_equivalence.py correctness/test_skinny.py correctness/test_flash_decode.py -k "lean or skinny or flash" > $d/correctness_lean.log 2>&1
echo "lean correctness rc=$? wall=$(( $(date +%s) - T0 ))s" >> $S
# 3. Probe at b=32: whole calls prefill captured vs eager, 96-step arms, every kernel of a step.
timeout $(( 585 - ($(date +%s) - T0) )) python3 -m perf.lean_probe --batch 32 --steps-per-graph 1 --out $d > $d/probe32.log 2>&1
echo "probe32 rc=$? wall=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)" >> $S
cd $d && tar czf $OUT/res.tgz . && cat summary.txt && tail -3 teeth_room.log short_gpu.log correctness_lean.log && grep -E -A3 "ms per lean_graph|ms per 96" probe32.log | head -30; grep -E "kernels_per_step|kernel_us_per_step" probe32.log
