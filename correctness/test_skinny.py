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


def _bits(t: torch.Tensor) -> list[int]:
    return [b & 0xFFFFFFFF for b in t.view(torch.int32).tolist()]


def _floats(bits: list[int]) -> torch.Tensor:
    return torch.tensor([b - (1 << 32) if b >= 1 << 31 else b for b in bits], dtype=torch.int32).view(torch.float32)


# fp32 bit pattern -> round_to_tf32's. A TF32 ulp is bit 13 (0x2000); half of one, 0x1000.
ROUNDINGS = {
    "on grid": (0x3F802000, 0x3F802000),  # 1 + 2^-10, already TF32: unchanged
    "zero": (0x00000000, 0x00000000),
    "minus zero": (0x80000000, 0x80000000),
    "below half": (0x3F800FFF, 0x3F800000),
    "half, to odd": (0x3F801000, 0x3F802000),  # ties away from zero, not to even (which keeps 0x3F800000)
    "half, to even": (0x3F803000, 0x3F804000),
    "above half": (0x3F801001, 0x3F802000),
    "minus half": (0xBF801000, 0xBF802000),  # away from zero: more negative, the mirror of "half, to odd"
    "minus below half": (0xBF800FFF, 0xBF800000),
    "carry into exponent": (0x3FFFF000, 0x40000000),  # 2 - 2^-11 (halfway) -> 2
    "subnormal half": (0x00001000, 0x00002000),
    "subnormal below half": (0x00000FFF, 0x00000000),
    "largest finite half": (0x7F7FF000, 0x7F800000),  # overflows to inf, as round-to-nearest does
    "inf": (0x7F800000, 0x7F800000),
    "minus inf": (0xFF800000, 0xFF800000),
    "nan": (0x7FFFFFFF, 0x7FFFFFFF),  # untouched: adding 0x1000 would wrap it to -0
}


@pytest.mark.parametrize(("before", "after"), ROUNDINGS.values(), ids=ROUNDINGS.keys())
def test_round_to_tf32_bit_patterns(before: int, after: int) -> None:
    got = _bits(skinny.round_to_tf32(_floats([before])))
    assert got == [after], f"{before:#010x} -> {got[0]:#010x}, want {after:#010x}"


def test_round_to_tf32_is_nearest_ties_away() -> None:
    """On random normal fp32 bit patterns: low 13 bits cleared, symmetric in sign, the TF32 grid left as it is, and
    the nearest TF32 value, ties away from zero, by float64 arithmetic (floor(|x| / ulp + 1/2) ulps)."""
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0x00800000, 0x7F800000, (20000,), generator=g, dtype=torch.int32)  # positive normals
    bits[:2000] = bits[:2000] & ~0x1FFF | 0x1000  # plenty of exact ties
    x = bits.view(torch.float32)
    got = skinny.round_to_tf32(x)
    assert not (got.view(torch.int32) & 0x1FFF).any()
    assert torch.equal(skinny.round_to_tf32(-x), -got)
    assert torch.equal(skinny.round_to_tf32(got), got)
    ulp = torch.ldexp(torch.ones_like(x, dtype=torch.float64), torch.frexp(x.double()).exponent - 11)
    want = torch.floor(x.double() / ulp + 0.5) * ulp
    finite = want < torch.finfo(torch.float32).max  # the top ties round to inf (see ROUNDINGS)
    assert torch.equal(got.double()[finite], want[finite])


@pytest.mark.usefixtures("needs_triton")
def test_tf32_rounded_kernel_rounds_its_tiles(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    """"tf32-rounded" gives float64's product of round_to_tf32'd inputs, to within fp32 accumulation, and not the
    unrounded product. Triton's interpreter ignores tl.dot's input_precision (numpy fp32 products), so there the
    kernel's own rounding is all that moves it; on a GPU, TF32 products of TF32 values are exact, so the same bound
    holds, and without the rounding the tensor cores' truncation fails it the other way."""
    monkeypatch.setattr(skinny, "FP32_PRECISION", "tf32-rounded")
    m, k, n = 3, 512, 70  # split K, ragged M and N
    g = torch.Generator().manual_seed(0)

    def operand(*shape: int) -> torch.Tensor:
        # In [1, 2), so a TF32 ulp is 2^-10 everywhere, with low bits at or past half an ulp: every element rounds
        # away from zero (truncation would go the other way), a third of them exact ties (ties to even would keep
        # half of those), so each output's rounding error adds up in one direction instead of averaging out.
        bits = (1 + torch.rand(*shape, generator=g)).view(torch.int32) & ~0x1FFF
        low = torch.randint(0x1000, 0x2000, shape, generator=g, dtype=torch.int32)
        low[torch.rand(*shape, generator=g) < 1 / 3] = 0x1000
        return (bits | low).view(torch.float32)

    x = operand(m, k)
    w = operand(k, n) * torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)  # negative columns: ties away, downward
    want = skinny.round_to_tf32(x).double() @ skinny.round_to_tf32(w).double()
    got = skinny.skinny_partials(x.to(device), w.to(device), True).sum(0).cpu().double()
    # fp32 accumulation of K products (exact for TF32 inputs) and the S partial sums: at most (K + S) roundings
    # of 2^-24 relative to the sum of magnitudes, the textbook bound.
    splits = skinny.plan(m, n, k, skinny._sm_count(torch.device(device)))[1]
    tol = (k + splits) * 2.0**-24 * (x.double().abs() @ w.double().abs())
    assert ((got - want).abs() <= tol).all(), f"max error / bound {((got - want).abs() / tol).max():.3g}"
    assert ((got - x.double() @ w.double()).abs() > tol).all(), "as the unrounded product: no rounding?"


@pytest.mark.usefixtures("needs_triton")
def test_tf32_rounded_kernel_keeps_nan(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN with every mantissa bit set stays NaN: adding half an ulp to its bits would wrap it to 0 or -0."""
    monkeypatch.setattr(skinny, "FP32_PRECISION", "tf32-rounded")
    x, w = torch.ones(2, 64), torch.ones(64, 32)
    x[0, 0], w[1, 0] = _floats([0xFFFFFFFF]), _floats([0x7FFFFFFF])
    got = skinny.skinny_partials(x.to(device), w.to(device), True).sum(0).cpu()
    assert got[0].isnan().all() and got[1, 0].isnan()  # row 0 meets x's NaN, column 0 w's
    assert torch.equal(got[1, 1:], torch.full((31,), 64.0))
