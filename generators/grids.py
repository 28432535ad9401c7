"""The grid points every benchmark here runs: (batch, max_new_tokens), one definition for the main job and perf/."""

# The post's b=32 x {100, 200, 400} and a batch sweep at 100 tokens: what a GPU runs by default.
CUDA_GRID = [(32, 100), (32, 200), (32, 400), (1, 100), (4, 100), (16, 100), (64, 100)]
# A tiny model's CPU default: seconds, not minutes.
CPU_GRID = [(1, 32), (4, 32), (4, 64)]
# The perf gate's grid: the post's point and batch 1, where host overheads weigh most.
GATE_GRID = [(32, 100), (1, 100)]
