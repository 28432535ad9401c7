"""The LM head and the greedy pick in one kernel: argmax(h @ W^T) per row, without writing the [B, vocab] logits.

Why: the LM head is GPT-2 small's largest read (154 MB of a fp32 step's 495 MB), and a lean step spends it in two
kernels, cuBLAS's GEMM and an argmax over the logits it wrote (65 + 15 us a step at b=32 on an H200,
perf/RESULTS.md "Kernels per step"). Here each program reads one [BLOCK_N, K] block of W once, multiplies all rows
by it, and keeps only each row's largest logit in the block and its index; a tiny reduction over the blocks picks
the first block holding the row's maximum, so ties go to the lowest index, as torch.argmax breaks them. With a
norm (skinny.Norm: the model's final LayerNorm or RMSNorm, from the statistics epilogue.py's last GEMM wrote), h is
normalised in the prologue, as skinny.py's NORM does, and the norm is no kernel of its own.

Exactness: fp32 inputs are multiplied as skinny.py does (rounded TF32 where torch allows TF32, else full fp32);
bf16 logits are rounded to bf16 before the pick, as the logits tensor would hold them (fp16 models: not here). A
different summation order than cuBLAS's can only part tokens at near-ties (correctness/ties.py rules on those).

CUDA (or Triton's interpreter) only; ``available()`` says whether it is used here.
"""

from __future__ import annotations

import torch

from . import skinny

BLOCK_N = 128  # vocabulary entries a program: GPT-2's 50,257 make 393 programs, about three per SM of an H200
BLOCK_K = 64

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU wheels of torch ship without triton
    triton = None


def available(h: torch.Tensor) -> bool:
    return triton is not None and h.is_cuda and h.shape[0] <= 32 and h.dtype in (torch.float32, torch.bfloat16)


if triton is not None:
    from .skinny import _normed, _rounded, _row_stats  # skinny.py's norm prologue and TF32 rounding

    @triton.jit
    def _block_argmax_kernel(h_ptr, w_ptr, max_ptr, idx_ptr, M, N, stride_hm, stride_wn, BLOCKS,
                             stats_ptr, g_ptr, b_ptr, eps,
                             K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             PRECISION: tl.constexpr, ROUND: tl.constexpr, ROUND_BF16: tl.constexpr,
                             PDL: tl.constexpr, NORM: tl.constexpr, STAT_BLOCKS: tl.constexpr):
        if PDL:  # h is the kernel before's output; the kernel after may start (it waits for us)
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        pid = tl.program_id(0)
        rows = tl.arange(0, BLOCK_M)
        cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        if NORM != "":
            mean, rstd = _row_stats(stats_ptr, rows, M, STAT_BLOCKS, eps, NORM)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            h = tl.load(h_ptr + rows[:, None] * stride_hm + ks[None, :], mask=(rows[:, None] < M) & (ks[None, :] < K),
                        other=0.0)
            if NORM != "":
                h = _normed(h, ks[None, :], K, mean[:, None], rstd[:, None], g_ptr, b_ptr, NORM)
            # bf16 tiles go in as fp32 with TF32 products, exact for bf16 values (TF32 keeps 10 mantissa bits, bf16
            # has 7); Triton's interpreter (the CPU tests) gets bf16 tl.dot wrong
            h = h.to(tl.float32)
            w = tl.load(w_ptr + cols[:, None] * stride_wn + ks[None, :], mask=(cols[:, None] < N) & (ks[None, :] < K),
                        other=0.0).to(tl.float32)
            acc = tl.dot(_rounded(h, ROUND), tl.trans(_rounded(w, ROUND)), acc, input_precision=PRECISION)
        if ROUND_BF16:  # the logits a bf16 model's lm_head would hold: fp32 to bf16, to nearest, ties to even, in
            # integer bit operations (Triton's interpreter does not round a cast to bf16 as the GPU does)
            bits = acc.to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
            acc = bits.to(tl.float32, bitcast=True)
        acc = tl.where(cols[None, :] < N, acc, float("-inf"))
        best = tl.max(acc, axis=1)
        # the first column holding the row's maximum (torch.argmax's tie break), as a global index
        first = tl.min(tl.where(acc == best[:, None], cols[None, :], N), axis=1)
        tl.store(max_ptr + rows * BLOCKS + pid, best, mask=rows < M)
        tl.store(idx_ptr + rows * BLOCKS + pid, first.to(tl.int64), mask=rows < M)


@torch.library.custom_op("decode_gate::head_argmax_blocks", mutates_args=())
def head_argmax_blocks(h: torch.Tensor, w: torch.Tensor, fp32: str, pdl: bool = False,
                       stats: torch.Tensor | None = None, norm_w: torch.Tensor | None = None,
                       norm_b: torch.Tensor | None = None, eps: float = 0.0, rms: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row and block of BLOCK_N vocabulary entries: the largest logit of h [M, K] @ w [N, K]^T (fp32) and the
    first index holding it. [M, blocks] each. fp32 inputs multiplied with `fp32` (skinny.launch's precisions); with
    stats, of norm(h) (skinny.Norm's fields)."""
    (m, k), n = h.shape, w.shape[0]
    blocks = triton.cdiv(n, BLOCK_N)
    best = torch.empty((m, blocks), device=h.device, dtype=torch.float32)
    first = torch.empty((m, blocks), device=h.device, dtype=torch.int64)
    precision = "tf32" if h.dtype == torch.bfloat16 else fp32
    pdl = pdl and h.is_cuda  # Triton's interpreter (the CPU tests) runs without
    # K, the hidden size, is a compile-time constant: Triton's interpreter (the CPU tests) cannot loop to a runtime
    # bound, and a model has one
    norm = skinny.Norm.of(stats, norm_w, norm_b, eps, rms)
    _block_argmax_kernel[(blocks,)](h, w, best, first, m, n, h.stride(0), w.stride(0), blocks,
                                    *skinny.norm_args(h, norm), K=k,
                                    BLOCK_M=max(16, triton.next_power_of_2(m)), BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                                    **skinny.dot_args(precision), ROUND_BF16=h.dtype == torch.bfloat16, PDL=pdl,
                                    **skinny.norm_constexprs(norm), num_warps=4, num_stages=3, launch_pdl=pdl)
    return best, first


@head_argmax_blocks.register_fake
def _(h: torch.Tensor, w: torch.Tensor, fp32: str, pdl: bool = False, stats: torch.Tensor | None = None,
      norm_w: torch.Tensor | None = None, norm_b: torch.Tensor | None = None, eps: float = 0.0, rms: bool = False
      ) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = -(-w.shape[0] // BLOCK_N)
    return h.new_empty((h.shape[0], blocks), dtype=torch.float32), h.new_empty((h.shape[0], blocks),
                                                                               dtype=torch.int64)


def head_argmax(h: torch.Tensor, w: torch.Tensor, pdl: bool = False, norm: skinny.Norm | None = None
                ) -> torch.Tensor:
    """argmax(h @ w.T, dim=-1) for h [M, K] and an nn.Linear weight w [N, K] (K contiguous): [M] int64; with norm,
    argmax(norm(h) @ w.T)."""
    best, first = head_argmax_blocks(h, w, skinny.matmul_precision(), pdl, *skinny.flat_norm(norm))
    return first.gather(1, best.argmax(dim=1, keepdim=True)).squeeze(1)  # argmax: the first block with the max
