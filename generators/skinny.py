"""A matmul for decoding's skinny shapes: x [M, K] @ W [K, N] with M the batch (1..32), N and K the layer's.

Why: at a few rows an H200's cuBLAS picks TF32 split-K kernels that move GPT-2 small's layer weights at a fraction
of copy bandwidth (~0.85 TB/s measured at M = 32, docs/history/2026-11-lean-step.md): a decode step is four small
GEMMs per layer, each too short to fill the card. This kernel beats cuBLAS at 1-32 rows (``MIN_ROWS, MAX_ROWS``),
fp32 in rounded TF32 products (FP32_PRECISION), as cuBLAS's TF32 kernels multiply; one row multiplies on the CUDA
cores in fp32, in either dtype.
Here every program reads one [K / S, BLOCK_N] slab of W once (coalesced along N, W's contiguous axis in GPT-2's
Conv1D layout), multiplies it by all M rows with tensor cores, and writes an fp32 partial sum; S slabs per column
block give S x N / BLOCK_N programs, enough to cover every SM. The caller sums the S partials: lean.py's
``_project`` with a plain ``.sum(0)``, which inductor fuses (with the bias, activation, residual) into the kernel
that consumes the result, so a layer GEMM is one Triton kernel and no extra reduce kernel (inductor does so for up
to 7 slabs, MAX_SPLITS, where the lean step caps them); flash_decode.py's qkv kernel for c_attn. A fixed S per
shape keeps the summation order, hence the result, deterministic (no atomics). epilogue.py's GEMM runs the same
slabs and sums them itself; its statistics of x let this kernel normalise x in its prologue (NORM: GPT-2's
LayerNorm, or the Llama family's RMSNorm).
Under programmatic dependent launch (Hopper, lean.py's pdl) a program reads its slab before it waits for the
kernel before it, which writes x, never W: a GEMM's weight reads overlap that kernel (16-bit and one row; fp32
keeps its K loop, ``whole_slab``).

CUDA only; ``available()`` says whether it is used here (triton importable, a CUDA tensor, MIN_ROWS..max_rows
rows).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

# Rows (batch x tokens) for which a projection goes through this kernel; outside, through the module (cuBLAS).
# Measured on an H200, 96 lean steps in one process, this kernel / cuBLAS (docs/history/2026-11-lean-step.md): with
# "tf32x3" M=4 59.0 / 74.2 ms, M=16 62.1 / 71.6, M=32 79.5 / 80.7; with plain TF32 M=64 lost (96.6 / 86.2: the
# S x M x N partial sums grow to half the weight's bytes); with rounded TF32 M=32 50.1 / 59.3 (72e391d). M=1 runs on
# the CUDA cores (BLOCK_M == 1): 27.7 / 39.0 ms in bf16, 41.6 / 44.1 in fp32 (ef10c87, lean_graph with PDL).
MIN_ROWS, MAX_ROWS = 1, 32
BLOCK_K = 64
# The most slabs a GEMM splits K into: inductor adds fewer than 8 partial sums inside the kernel that consumes them
# (torch._inductor.config.unroll_reductions_threshold, a strict bound); more became a reduce kernel of its own, 12 a
# step (one per layer, the MLP's c_proj: K = 3072) and ~1.9 us each at one row on an H200 (perf.lean_probe, f9a6d5b).
# A call capped at 8 / uncapped on an H200 (perf/RESULTS.md): bf16 b=1 -4.3%, b=32 -5.0%; fp32 b=1 -6.5%, b=16 -1.8%,
# b=32 -1.2% (rounded TF32, 1783f31; with tf32x3's three products fp32 at b=16 was +1.4%). But 8 slabs still took
# the reduce kernels at fp32 2+ rows, whose K loop's slabs need not be a power of two: 7 / 8 at fp32 b=32, -6.9%.
MAX_SPLITS = 7
UNCAPPED = 1 << 30  # plan's max_splits when the slabs follow the SMs alone
# How fp32 inputs are multiplied when torch allows TF32 matmuls: one TF32 product of inputs rounded to nearest, as
# cuBLAS's TF32 kernels round them (Triton's "tf32" truncates). Rows of the correctness suite's tiny models whose
# greedy tokens part from naive's (cuBLAS, TF32), of 328, on an H200 (docs/history/2026-11-lean-step.md): cuBLAS's own
# kernels 9, rounded TF32 11, Triton's "tf32" 67 (the GPU suite failed its near-tie ration), "tf32x3" 30 (three
# TF32 products, fp32-accurate, the precision until 2026-12-01: further from naive's TF32, and 3x the products).
ROUNDED = "tf32-rounded"
FP32_PRECISION = ROUNDED

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU wheels of torch ship without triton
    triton = None


def available(x: torch.Tensor, max_rows: int = MAX_ROWS, min_rows: int = MIN_ROWS) -> bool:
    return triton is not None and x.is_cuda and min_rows <= x.shape[0] <= max_rows


def matmul_precision(fp32: str = FP32_PRECISION) -> str:
    """How fp32 inputs are multiplied here: `fp32` where torch's own fp32 matmuls use TF32, else in full fp32."""
    return fp32 if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def dot_args(precision: str) -> dict[str, object]:
    """A kernel's PRECISION and ROUND for `precision`: ROUNDED is Triton's "tf32" of inputs rounded first."""
    return {"PRECISION": "tf32" if precision == ROUNDED else precision, "ROUND": precision == ROUNDED}


if triton is not None:

    @triton.jit
    def _rounded(t, ROUND: tl.constexpr):
        """fp32 t rounded to TF32's 10 mantissa bits, to nearest (ties away from zero), where ROUND."""
        if ROUND:
            t = ((t.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
        return t

    @triton.jit
    def _row_stats(stats_ptr, rows, M, BLOCKS: tl.constexpr, eps, NORM: tl.constexpr):
        """Mean and 1 / std [BLOCK_M] of each row of a LayerNorm's input, or (NORM "rms") 0 and 1 / root mean square
        of an RMSNorm's, from BLOCKS column blocks' (sum, squared deviations from the block's mean, columns) that
        epilogue.py's GEMM wrote [BLOCKS, M, 3]."""
        mask = rows < M
        total, cols = tl.zeros(rows.shape, tl.float32), tl.zeros(rows.shape, tl.float32)
        for b in range(BLOCKS):
            total += tl.load(stats_ptr + (b * M + rows) * 3, mask=mask, other=0.0)
            cols += tl.load(stats_ptr + (b * M + rows) * 3 + 2, mask=mask, other=1.0)
        mean = total / cols
        m2 = tl.zeros(rows.shape, tl.float32)
        for b in range(BLOCKS):  # Chan's parallel variance: each block's own, plus its mean's distance to the row's
            n = tl.load(stats_ptr + (b * M + rows) * 3 + 2, mask=mask, other=1.0)
            d = tl.load(stats_ptr + (b * M + rows) * 3, mask=mask, other=0.0) / n - mean
            m2 += tl.load(stats_ptr + (b * M + rows) * 3 + 1, mask=mask, other=0.0) + n * d * d
        if NORM == "rms":  # mean(x^2) = variance + mean^2; rsqrt, as LlamaRMSNorm takes it
            return tl.zeros_like(mean), tl.rsqrt(m2 / cols + mean * mean + eps)
        return mean, 1.0 / tl.sqrt(m2 / cols + eps)

    @triton.jit
    def _normed(x, ks, K, mean, rstd, g_ptr, b_ptr, NORM: tl.constexpr):
        """x's columns ks of the norm (weight g; a LayerNorm's bias b) applied, in x's dtype as the norm's output
        would be; columns past K stay 0. ks, mean and rstd come shaped to broadcast against x."""
        if NORM == "layer":
            g = tl.load(g_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)
            x = ((x.to(tl.float32) - mean) * rstd * g + b).to(x.dtype)
        elif NORM == "rms":  # LlamaRMSNorm: normalised in fp32, cast to x's dtype, then times the weight
            g = tl.load(g_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)
            x = (g * (x.to(tl.float32) * rstd).to(x.dtype).to(tl.float32)).to(x.dtype)
        return x

    @triton.jit
    def _slab_dot(x_ptr, w_ptr, M, N, K, stride_xm, stride_xk, stride_wk, stride_wn, pid_n, split,
                  stats_ptr, g_ptr, b_ptr, eps,
                  K_PER_SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  PRECISION: tl.constexpr, ROUND: tl.constexpr, WHOLE_SLAB: tl.constexpr, PDL: tl.constexpr,
                  NORM: tl.constexpr, STAT_BLOCKS: tl.constexpr):
        """[BLOCK_M, BLOCK_N] fp32: x's rows times W's slab `split` of K, columns of block pid_n. NORM ("layer" or
        "rms"; "" for none): x is that norm's input, normalised here from STAT_BLOCKS blocks of statistics
        (_row_stats), as the next projection's prologue."""
        rows = tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        if BLOCK_M == 1:  # one row: products on the CUDA cores, exact in fp32 (tl.dot would pad the row to 16),
            # the slab as one tile read before the wait, as below
            ks = split * K_PER_SPLIT + tl.arange(0, K_PER_SPLIT)
            w = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
                        mask=(ks[:, None] < K) & (cols[None, :] < N), other=0.0).to(tl.float32)
            if PDL:
                tl.extra.cuda.gdc_wait()
            x = tl.load(x_ptr + ks * stride_xk, mask=ks < K, other=0.0)
            if NORM != "":
                mean, rstd = _row_stats(stats_ptr, rows, M, STAT_BLOCKS, eps, NORM)
                x = _normed(x, ks, K, tl.sum(mean, axis=0), tl.sum(rstd, axis=0), g_ptr, b_ptr, NORM)
            if PDL:
                tl.extra.cuda.gdc_launch_dependents()
            acc = tl.sum(x.to(tl.float32)[:, None] * w, axis=0)[None, :]
        elif WHOLE_SLAB:  # W's slab as one tile, read before waiting: no kernel writes W, so under PDL its reads
            # overlap the kernel before
            ks = split * K_PER_SPLIT + tl.arange(0, K_PER_SPLIT)
            w = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
                        mask=(ks[:, None] < K) & (cols[None, :] < N), other=0.0)
            if PDL:
                tl.extra.cuda.gdc_wait()  # x is the kernel before's output
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk,
                        mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
            if NORM != "":
                mean, rstd = _row_stats(stats_ptr, rows, M, STAT_BLOCKS, eps, NORM)
                x = _normed(x, ks[None, :], K, mean[:, None], rstd[:, None], g_ptr, b_ptr, NORM)
            if PDL:
                tl.extra.cuda.gdc_launch_dependents()
            acc = tl.dot(_rounded(x, ROUND), _rounded(w, ROUND), input_precision=PRECISION)
        else:
            if PDL:  # x is the kernel before's output; the kernel after may start (it waits for us)
                tl.extra.cuda.gdc_wait()
                tl.extra.cuda.gdc_launch_dependents()
            if NORM != "":
                mean, rstd = _row_stats(stats_ptr, rows, M, STAT_BLOCKS, eps, NORM)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, K_PER_SPLIT, BLOCK_K):
                ks = split * K_PER_SPLIT + k0 + tl.arange(0, BLOCK_K)
                x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk,
                            mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
                if NORM != "":
                    x = _normed(x, ks[None, :], K, mean[:, None], rstd[:, None], g_ptr, b_ptr, NORM)
                w = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
                            mask=(ks[:, None] < K) & (cols[None, :] < N), other=0.0)
                acc = tl.dot(_rounded(x, ROUND), _rounded(w, ROUND), acc, input_precision=PRECISION)
        return acc

    @triton.jit
    def _partials_kernel(x_ptr, w_ptr, M, N, K, stride_xm, stride_xk, stride_wk, stride_wn,
                         stats_ptr, g_ptr, b_ptr, eps, out_ptr, w2_ptr, w3_ptr, N2, N3,
                         K_PER_SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, ROUND: tl.constexpr,
                         WHOLE_SLAB: tl.constexpr, PDL: tl.constexpr, NORM: tl.constexpr,
                         STAT_BLOCKS: tl.constexpr, STACKED: tl.constexpr):
        pid_n, split = tl.program_id(0), tl.program_id(1)
        w, n, col0, block, width = w_ptr, N, 0, pid_n, N
        if STACKED:  # three weights' products side by side in out (q, k, v): w's column blocks, w2's, w3's
            width, col0 = N + N2 + N3, N * 0
            first, second = tl.cdiv(N, BLOCK_N), tl.cdiv(N2, BLOCK_N)
            if pid_n >= first + second:
                w, n, col0, block = w3_ptr, N3, N + N2, pid_n - first - second
            elif pid_n >= first:
                w, n, col0, block = w2_ptr, N2, N, pid_n - first
        acc = _slab_dot(x_ptr, w, M, n, K, stride_xm, stride_xk, stride_wk, stride_wn, block, split,
                        stats_ptr, g_ptr, b_ptr, eps, K_PER_SPLIT, BLOCK_M, BLOCK_N, BLOCK_K,
                        PRECISION, ROUND, WHOLE_SLAB, PDL, NORM, STAT_BLOCKS)
        rows = tl.arange(0, BLOCK_M)
        cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(out_ptr + split * M * width + rows[:, None] * width + col0 + cols[None, :], acc,
                 mask=(rows[:, None] < M) & (cols[None, :] < n))


@functools.cache
def sm_count(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter (TRITON_INTERPRET=1, tests): few programs run faster
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(m: int, n: int, k: int, sms: int, *, block_n: int | None = None, block_k: int = BLOCK_K,
         per_sm: int = 2, whole_slab: bool = False, max_splits: int = MAX_SPLITS) -> tuple[int, int, int]:
    """(BLOCK_N, splits, K per split) for one shape: about `per_sm` programs per SM, at most `max_splits` slabs, each
    K slab a whole number of block_k tiles. Wide outputs take 64 columns a program, narrow ones 32, so a narrow N
    still spreads out. The keywords are the probe's sweep and variants (perf.lean_probe); the lean step takes the
    defaults. whole_slab: a program loads its slab as one tile, whose length Triton wants a power of two (at least
    as many programs, unless max_splits binds)."""
    block_n = block_n or (64 if n >= 2048 else 32)
    col_blocks = -(-n // block_n)
    tiles = -(-k // block_k)
    want = max(1, min(tiles, -(-per_sm * sms // col_blocks), max_splits))
    per_split = -(-tiles // want)  # tiles per split; the last split may be shorter (masked)
    if whole_slab or m == 1:  # one row: the kernel's BLOCK_M == 1 branch reads the slab as one tile
        per_split = 1 << (per_split.bit_length() - 1)
        if -(-tiles // per_split) > max_splits:
            per_split *= 2
    return block_n, -(-tiles // per_split), per_split * block_k


class Norm(NamedTuple):
    """A norm folded into the projection after it: x's statistics [blocks, M, 3] as epilogue.py's GEMM that wrote x
    left them, and the norm's weight, bias and eps: a LayerNorm (GPT-2's), or with rms an RMSNorm (the Llama
    family's: no mean taken, no bias)."""

    stats: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float
    rms: bool = False

    @staticmethod
    def of(stats: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
           rms: bool) -> Norm | None:
        """The Norm a custom op's flat arguments describe; None without statistics."""
        return None if stats is None else Norm(stats, weight, bias, eps, rms)


def flat_norm(norm: Norm | tuple | None) -> tuple:
    """A custom op's flat norm arguments (stats, weight, bias, eps, rms); a plain (stats, weight, bias, eps) is a
    LayerNorm's."""
    return (None, None, None, 0.0, False) if norm is None else tuple(Norm(*norm))


def norm_args(x: torch.Tensor, norm: Norm | None) -> tuple:
    """A kernel's (stats, weight, bias, eps) arguments for the folded norm: x where NORM reads no tensor."""
    stats, g, b, eps = (x, x, x, 0.0) if norm is None else norm[:4]
    return stats, g, x if b is None else b, eps


def norm_constexprs(norm: Norm | None) -> dict[str, object]:
    """A kernel's NORM ("", "layer" or "rms") and STAT_BLOCKS for the folded norm."""
    return {"NORM": "" if norm is None else "rms" if norm.rms else "layer",
            "STAT_BLOCKS": 0 if norm is None else norm.stats.shape[0]}


def kernel_args(x: torch.Tensor, w: torch.Tensor, norm: Norm | None) -> tuple:
    """The arguments every kernel over _slab_dot takes first: x, W, their shapes and strides, the folded norm."""
    (m, k), n = x.shape, w.shape[1]
    return x, w, m, n, k, x.stride(0), x.stride(1), w.stride(0), w.stride(1), *norm_args(x, norm)


def constexprs(x: torch.Tensor, fp32: str, block_n: int, per_split: int, block_k: int, whole_slab: bool, pdl: bool,
               norm: Norm | None) -> dict[str, object]:
    """_slab_dot's compile-time arguments for x [M, K]."""
    m = x.shape[0]
    return dict(K_PER_SPLIT=per_split, BLOCK_M=1 if m == 1 else max(16, triton.next_power_of_2(m)), BLOCK_N=block_n,
                BLOCK_K=block_k, **dot_args(fp32 if x.dtype == torch.float32 else "ieee"), WHOLE_SLAB=whole_slab,
                PDL=pdl, **norm_constexprs(norm))


def launch(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, fp32: str, block_n: int, per_split: int, *,
           block_k: int = BLOCK_K, num_warps: int = 4, num_stages: int = 3, pdl: bool = False,
           whole_slab: bool = False, norm: Norm | None = None, stacked: tuple[torch.Tensor, ...] = ()) -> None:
    """The kernel into out [S, M, N], S = out.shape[0] slabs of per_split rows of K each, fp32 inputs multiplied
    with `fp32` ("ieee", "tf32x3" or ROUNDED). pdl: launched as a programmatic dependent launch (Hopper; CUDA only,
    Triton's interpreter runs without). whole_slab: a program's slab of W read as one tile, before it waits for the
    kernel before (plan(whole_slab=True)'s slabs). norm: x is that norm's input, normalised in the kernel. stacked:
    two more weights like w, whose products follow w's in out's columns."""
    pdl = pdl and x.is_cuda
    w2, w3 = stacked or (w, w)
    widths = (w.shape[1], *(t.shape[1] for t in stacked))
    blocks = sum(triton.cdiv(n, block_n) for n in widths)
    _partials_kernel[(blocks, out.shape[0])](
        *kernel_args(x, w, norm), out, w2, w3, *(widths[1:] if stacked else (0, 0)),
        **constexprs(x, fp32, block_n, per_split, block_k, whole_slab, pdl, norm), STACKED=bool(stacked),
        num_warps=num_warps, num_stages=num_stages, launch_pdl=pdl)


def whole_slab(x: torch.Tensor, pdl: bool) -> bool:
    """Under PDL, 16-bit inputs load their slab as one tile; fp32 keeps the loop: as one tile at 32 rows in tf32x3
    it ran 5x slower on an H200 (lean_graph at b=32, 67.5 -> 357 ms a call, perf/RESULTS.md; rounded TF32 as one
    tile not measured). One row always takes the one tile (plan)."""
    return pdl and x.element_size() == 2


@torch.library.custom_op("decode_gate::skinny_partials", mutates_args=())
def skinny_partials(x: torch.Tensor, w: torch.Tensor, fp32: str, pdl: bool = False, max_splits: int = MAX_SPLITS,
                    stats: torch.Tensor | None = None, norm_w: torch.Tensor | None = None,
                    norm_b: torch.Tensor | None = None, eps: float = 0.0, rms: bool = False,
                    w2: torch.Tensor | None = None, w3: torch.Tensor | None = None) -> torch.Tensor:
    """[S, M, N] fp32 partial sums of x @ w over S <= max_splits slabs of K (see the module docstring); with stats,
    of LayerNorm(x) (weight norm_w, bias norm_b, eps), or with rms of RMSNorm(x), x's statistics in stats (Norm);
    with w2 and w3, of x @ [w | w2 | w3] (N their widths' sum)."""
    (m, k), n = x.shape, _width(w, w2, w3)
    slab = whole_slab(x, pdl)
    block_n, splits, per_split = plan(m, n, k, sm_count(x.device), whole_slab=slab, max_splits=max_splits)
    out = torch.empty((splits, m, n), device=x.device, dtype=torch.float32)
    launch(x, w, out, fp32, block_n, per_split, pdl=pdl, whole_slab=slab,
           norm=Norm.of(stats, norm_w, norm_b, eps, rms), stacked=() if w2 is None else (w2, w3))
    return out


@skinny_partials.register_fake
def _(x: torch.Tensor, w: torch.Tensor, fp32: str, pdl: bool = False, max_splits: int = MAX_SPLITS,
      stats: torch.Tensor | None = None, norm_w: torch.Tensor | None = None, norm_b: torch.Tensor | None = None,
      eps: float = 0.0, rms: bool = False, w2: torch.Tensor | None = None, w3: torch.Tensor | None = None
      ) -> torch.Tensor:
    (m, k), n = x.shape, _width(w, w2, w3)
    _, splits, _ = plan(m, n, k, sm_count(x.device), whole_slab=whole_slab(x, pdl), max_splits=max_splits)
    return x.new_empty((splits, m, n), dtype=torch.float32)


def _width(*weights: torch.Tensor | None) -> int:
    return sum(w.shape[1] for w in weights if w is not None)


def partials(x: torch.Tensor, w: torch.Tensor, pdl: bool = False, max_splits: int = MAX_SPLITS,
             fp32: str = FP32_PRECISION, norm: Norm | None = None, stacked: tuple[torch.Tensor, ...] = ()
             ) -> torch.Tensor:
    """skinny_partials of x [M, K] @ w [K, N] (any strides), fp32 inputs multiplied with `fp32` (FP32_PRECISION, or
    another of tl.dot's input precisions) exactly when torch's own fp32 matmuls use TF32, else in full fp32 ("ieee");
    with norm, of that norm of x; with stacked, two more weights [K, N_i] like w, of x @ [w | stacked...] in one
    launch (a Llama layer's q, k and v)."""
    if stacked and (len(stacked) != 2 or any(t.shape[0] != w.shape[0] or t.stride() != w.stride()
                                             or t.dtype != w.dtype for t in stacked)):
        raise ValueError(f"partials: stacked must be two weights [{w.shape[0]}, N] with w's strides "
                         f"{list(w.stride())} and dtype {w.dtype}, got "
                         f"{[(list(t.shape), list(t.stride()), t.dtype) for t in stacked]}")
    return skinny_partials(x, w, matmul_precision(fp32), pdl, max_splits, *flat_norm(norm), *(stacked or (None, None)))
