"""The perf suite's grids: (variant, batch, new_tokens, dtype) points, naive first at every grid point."""

from __future__ import annotations

from collections import Counter

from generators import GENERATORS
from generators.grids import CUDA_GRID, GATE_GRID

FASTEST = ["cuda_graph", "cuda_graph_deferred", "lean_graph", "hf_generate_static"]
# The longest grid points first: xdist hands a recording's points out in this order (its reorder keeps the order
# of points with as many rows), and the last point out sets the wall. At f15f785 the b32/400 point (121 s of 39-121)
# went out third, leaving the workers 292 s and 231 s of rows (docs/history/2026-11-gate.md, section 12).
LONGEST_FIRST = sorted(CUDA_GRID, key=lambda point: -point[1])
GRIDS = {
    "full": [(v, b, n, "float32") for b, n in LONGEST_FIRST for v in GENERATORS]
    + [(v, 32, 100, "bfloat16") for v in ["naive", *FASTEST]],
    "gate": [(v, b, n, "float32") for b, n in GATE_GRID for v in GENERATORS],
    "smoke": [(v, b, n, "float32") for b, n in [(2, 8), (4, 16)]
              for v, g in GENERATORS.items() if g.runs_on_cpu],
}


def point_id(variant: str, batch: int, new_tokens: int, dtype: str) -> str:
    """test_generate's parameter id: its benchmark is named test_generate[<id>]."""
    return f"{variant}-b{batch}-n{new_tokens}-{dtype}"


def bench_name(variant: str, batch: int, new_tokens: int, dtype: str) -> str:
    return f"test_generate[{point_id(variant, batch, new_tokens, dtype)}]"


def xdist_group(variant: str, batch: int, new_tokens: int, dtype: str, *, gate: bool) -> str:
    """The rows that one xdist worker runs together. A recording keeps a grid point together: its naive row is the
    speedup column's reference. The gate splits a point by compiled step, so that workers stay evenly loaded (two
    groups on two GPUs left one worker idle for a third of the run on 2026-11-30): variants that compile the same
    step (one cache policy) share a group, every other variant is a group of its own."""
    point = f"b{batch}-n{new_tokens}-{dtype}"
    if not gate:
        return point
    g = GENERATORS[variant]
    return f"{point}-{g.cache.__name__}-compiled" if g.compiles else f"{point}-{variant}"


def handout_order(points: list[tuple]) -> list[tuple]:
    """The gate's points in the order xdist hands them to workers: the compiled-step groups first, then the host-bound
    rows, whose rounds vary most with the host's noise, then the CUDA-graph rows, seconds each. A worker holds up to
    two rows queued behind the one it runs (xdist's low-water mark), so the last rows out should be short: at 776f252
    one worker idled 38 s at the end while the other ran a 41 s host-bound row, then the two it held."""
    group = {p: xdist_group(*p, gate=True) for p in points}
    sizes = Counter(group.values())
    return sorted(points, key=lambda p: 0 if sizes[group[p]] > 1 else 2 if GENERATORS[p[0]].captured else 1)
