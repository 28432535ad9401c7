"""skinny.py: its K slabs cover K exactly, and its partial sums add up to x @ w (CUDA, or Triton's interpreter)."""


import pytest
import torch

from generators import skinny
from generators.lean import hopper

SHAPES = [(1, 768, 2304), (32, 768, 768), (5, 3072, 768), (3, 100, 70)]  # GPT-2 small's, and ragged ones


@pytest.mark.parametrize("whole_slab", [False, True], ids=["loop", "whole_slab"])
@pytest.mark.parametrize("sms", [1, 16, 132])
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_plan_covers_k_once(m: int, k: int, n: int, sms: int, whole_slab: bool) -> None:
    block_n, splits, per_split = skinny.plan(m, n, k, sms, whole_slab=whole_slab)
    assert per_split % skinny.BLOCK_K == 0
    assert (splits - 1) * per_split < k <= splits * per_split  # no empty slab, no K left out
    assert block_n in (32, 64)
    assert splits <= skinny.MAX_SPLITS  # inductor adds the partial sums in their consumer, no reduce kernel
    tiles = per_split // skinny.BLOCK_K
    assert not (whole_slab or m == 1) or tiles & (tiles - 1) == 0  # one tile: tl.arange wants a power of two


def test_the_cap_is_below_inductors_unroll_threshold() -> None:
    """inductor sums fewer than unroll_reductions_threshold slabs inside their consumer; at 8 it launched a reduce
    kernel per layer (fp32 b=32 on an H200, f1c7b9f)."""
    from torch._inductor import config  # noqa: PLC0415

    assert skinny.MAX_SPLITS < config.unroll_reductions_threshold


@pytest.mark.parametrize("m", [1, 4, 32])
def test_mlp_c_proj_is_capped_where_the_sms_ask_for_more(m: int) -> None:
    """GPT-2's MLP c_proj on an H200 (K = 3072, 132 SMs): uncapped, more slabs than inductor sums in the consumer;
    capped at MAX_SPLITS, as the lean step runs it."""
    assert skinny.plan(m, 768, 3072, 132, max_splits=skinny.UNCAPPED)[1] > skinny.MAX_SPLITS
    assert skinny.plan(m, 768, 3072, 132)[1] <= skinny.MAX_SPLITS


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("whole_slab", [False, True], ids=["loop", "whole_slab"])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv1d", "linear"])
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_partials_sum_to_matmul(device: torch.device, m: int, k: int, n: int, transposed: bool,
                                whole_slab: bool) -> None:
    """Both layouts: K in a loop of tiles, and each slab of W as one tile (read before the wait under PDL); as a
    programmatic dependent launch on a Hopper GPU."""
    torch.manual_seed(0)
    x = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device).t() if transposed else torch.randn(k, n, device=device)
    want = (x.double() @ w.double()).float()  # ieee fp32 below: comparable with a float64 product
    torch.testing.assert_close(skinny.skinny_partials(x, w, "ieee").sum(0), want, rtol=1e-4, atol=1e-3)
    block_n, splits, per_split = skinny.plan(m, n, k, skinny.sm_count(device), whole_slab=whole_slab)
    got = torch.empty(splits, m, n, device=device)
    skinny.launch(x, w, got, "ieee", block_n, per_split, pdl=hopper(device), whole_slab=whole_slab)
    torch.testing.assert_close(got.sum(0), want, rtol=1e-4, atol=1e-3)


def _tf32_rounded(t: torch.Tensor) -> torch.Tensor:
    """t to TF32's 10 mantissa bits, to nearest, ties away from zero (cuBLAS's rounding)."""
    return ((t.view(torch.int32) + 0x1000) & -8192).view(torch.float32)


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("widths", [(768, 768, 768), (64, 24, 24), (128, 64, 64)])  # Llama's, Mistral's ragged
@pytest.mark.parametrize("m", [1, 5, 32])
def test_stacked_weights_are_their_products_side_by_side(device: torch.device, m: int,
                                                          widths: tuple[int, int, int]) -> None:
    """q, k and v's weights (nn.Linear's, read transposed) in one launch: the partial sums add up to x @ [wq | wk |
    wv], each weight's columns where its own product would put them, also where a column block would straddle two
    weights (24 columns, blocks of 32)."""
    torch.manual_seed(0)
    k = widths[0] if widths[0] == 768 else 64
    x = torch.randn(m, k, device=device)
    wq, wk, wv = (torch.randn(n, k, device=device).t() for n in widths)
    parts = skinny.partials(x, wq, pdl=hopper(device), fp32="ieee", stacked=(wk, wv))
    want = (x.double() @ torch.cat([wq, wk, wv], dim=1).double()).float()
    torch.testing.assert_close(parts.sum(0), want, rtol=1e-4, atol=1e-3)


def test_stacked_weights_unlike_w_are_named(device: torch.device) -> None:
    x, w = torch.randn(2, 64, device=device), torch.randn(32, 64, device=device).t()
    for stacked in ((w,), (w, w.contiguous()), (w, torch.randn(32, 48, device=device).t())):
        with pytest.raises(ValueError, match="stacked must be two weights"):
            skinny.partials(x, w, stacked=stacked)


@pytest.mark.usefixtures("needs_triton")
def test_fp32_takes_rounded_tf32_products(device: torch.device) -> None:
    """fp32 under TF32 multiplies inputs rounded to TF32 (one product, as cuBLAS rounds them): the sums of the rounded
    inputs' products, not of the inputs' own."""
    torch.manual_seed(0)
    m, k, n = 20, 256, 96
    x, w = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    assert skinny.FP32_PRECISION == skinny.ROUNDED
    got = skinny.skinny_partials(x, w, skinny.ROUNDED).sum(0).double()
    rounded = _tf32_rounded(x).double() @ _tf32_rounded(w).double()
    torch.testing.assert_close(got, rounded, rtol=1e-5, atol=1e-4)
    assert (got - x.double() @ w.double()).abs().max() > 1e-3  # the rounding is not a no-op at this size
    assert _tf32_rounded(torch.tensor([1 + 2**-11, 1 + 2**-12, -(1 + 3 * 2**-11)])).tolist() == [
        1 + 2**-10, 1.0, -(1 + 2**-9)]  # half up, below half down, ties away from zero


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize(("block_n", "block_k", "per_sm"), [(128, 32, 4), (32, 128, 1), (64, 64, 8)])
def test_other_launch_configs_sum_to_matmul(device: torch.device, block_n: int, block_k: int, per_sm: int) -> None:
    """The configurations the probe's sweep times (plan's keywords, launch's) give the same sums: a sweep compares
    speeds of one result."""
    torch.manual_seed(0)
    m, k, n = 5, 300, 200
    x, w = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    block_n, splits, per_split = skinny.plan(m, n, k, 16, block_n=block_n, block_k=block_k, per_sm=per_sm)
    assert (splits - 1) * per_split < k <= splits * per_split
    out = torch.empty(splits, m, n, device=device)
    skinny.launch(x, w, out, "ieee", block_n, per_split, block_k=block_k, num_stages=4)
    torch.testing.assert_close(out.sum(0), (x.double() @ w.double()).float(), rtol=1e-4, atol=1e-3)
