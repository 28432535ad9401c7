"""The perf suite's grids: (variant, batch, new_tokens, dtype) points, naive first at every grid point."""

from __future__ import annotations

from generators import GENERATORS
from generators.grids import CUDA_GRID, GATE_GRID

FASTEST = ["cuda_graph", "cuda_graph_deferred", "lean_graph", "hf_generate_static"]
GRIDS = {
    "full": [(v, b, n, "float32") for b, n in CUDA_GRID for v in GENERATORS]
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
