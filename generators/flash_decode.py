"""One query's attention over the filled part of a static KV cache, in one Triton kernel (flash-decoding's
inner loop, without its split over the sequence: at these cache lengths one program per row and head is enough).

Why: lean.py's decode attention as plain reductions is three inductor kernels per layer that read the whole
preallocated cache (~130 us a step at b=32 on an H200, perf/RESULTS.md), although on average half of it is
still empty. Here the filled length is read on the device (``position + 1``) and every load past it is masked
off, so the kernel reads only the filled slots while one CUDA graph still replays every step (fixed shapes).
Online softmax in fp32, as the reductions and the fused SDPA kernels accumulate.

CUDA only; ``available()`` says whether it is used here.
"""

from __future__ import annotations

import torch

BLOCK_L = 64  # cache positions per loop iteration

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU wheels of torch ship without triton
    triton = None


def available(q: torch.Tensor) -> bool:
    return triton is not None and q.is_cuda


if triton is not None:

    @triton.jit
    def _kernel(q_ptr, k_ptr, v_ptr, pos_ptr, out_ptr, stride_qb, stride_qh, stride_kb, stride_kh, stride_kl,
                scale, LENGTH: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                BLOCK: tl.constexpr):
        row, head = tl.program_id(0), tl.program_id(1)
        kv_head = head // GROUP  # grouped-query attention: GROUP query heads read one K/V head
        d = tl.arange(0, D_PAD)
        q = tl.load(q_ptr + row * stride_qb + head * stride_qh + d, mask=d < D, other=0.0).to(tl.float32)
        filled = tl.load(pos_ptr) + 1  # slots 0..position: the step's own K/V is already written
        base = row * stride_kb + kv_head * stride_kh
        top = tl.full((), float("-inf"), tl.float32)  # running max of the scores
        total = tl.zeros((), tl.float32)  # running sum of exp(score - top)
        acc = tl.zeros((D_PAD,), tl.float32)
        # LENGTH, the cache's, is a compile-time constant: one kernel per cache length, like the compiled step
        # itself (and Triton's interpreter, which the CPU tests use, cannot loop to a runtime bound).
        for start in range(0, LENGTH, BLOCK):  # past `filled` every load is masked off: no memory is read
            slots = start + tl.arange(0, BLOCK)
            live = slots < filled
            offsets = base + slots[:, None] * stride_kl + d[None, :]
            inside = live[:, None] & (d[None, :] < D)
            k = tl.load(k_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            scores = tl.where(live, tl.sum(k * q[None, :], 1) * scale, float("-inf"))
            new_top = tl.maximum(top, tl.max(scores, 0))
            shrink = tl.exp(top - new_top)
            p = tl.exp(scores - new_top)
            v = tl.load(v_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            total = total * shrink + tl.sum(p, 0)
            acc = acc * shrink + tl.sum(p[:, None] * v, 0)
            top = new_top
        out = acc / total
        tl.store(out_ptr + (row * tl.num_programs(1) + head) * D + d, out.to(out_ptr.dtype.element_ty), mask=d < D)


@torch.library.custom_op("decode_gate::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """q [B, heads, 1, D], caches [B, kv_heads, L, D] (last dim contiguous), position [1] on the device:
    softmax(q k^T * scale) v over cache slots 0..position, as [B, heads, 1, D] in the cache's dtype."""
    b, heads, _, d = q.shape
    if k_cache.stride(-1) != 1 or v_cache.stride() != k_cache.stride() or q.stride(-1) != 1:
        raise ValueError("decode_attention wants the caches alike and every last dimension contiguous")
    out = torch.empty((b, heads, 1, d), device=q.device, dtype=k_cache.dtype)
    _kernel[(b, heads)](q, k_cache, v_cache, position, out, q.stride(0), q.stride(1), k_cache.stride(0),
                        k_cache.stride(1), k_cache.stride(2), scale, LENGTH=k_cache.shape[2],
                        GROUP=heads // k_cache.shape[1], D=d, D_PAD=triton.next_power_of_2(d), BLOCK=BLOCK_L,
                        num_warps=4)
    return out


@decode_attention.register_fake
def _(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor,
      scale: float) -> torch.Tensor:
    return q.new_empty(q.shape, dtype=k_cache.dtype)
