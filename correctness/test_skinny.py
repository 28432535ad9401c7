"""skinny.py: its K slabs cover K exactly, and its partial sums add up to x @ w (CUDA, or Triton's interpreter)."""


import pytest
import torch

from generators import skinny

SHAPES = [(1, 768, 2304), (32, 768, 768), (5, 3072, 768), (3, 100, 70)]  # GPT-2 small's, and ragged ones


@pytest.mark.parametrize("sms", [1, 16, 132])
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_plan_covers_k_once(m: int, k: int, n: int, sms: int) -> None:
    block_n, splits, per_split = skinny.plan(m, n, k, sms)
    assert per_split % skinny.BLOCK_K == 0
    assert (splits - 1) * per_split < k <= splits * per_split  # no empty slab, no K left out
    assert block_n in (32, 64)


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("transposed", [False, True], ids=["conv1d", "linear"])
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_partials_sum_to_matmul(device: torch.device, m: int, k: int, n: int, transposed: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device).t() if transposed else torch.randn(k, n, device=device)
    got = skinny.skinny_partials(x, w, False).sum(0)  # ieee fp32: comparable with a float64 product
    torch.testing.assert_close(got, (x.double() @ w.double()).float(), rtol=1e-4, atol=1e-3)
