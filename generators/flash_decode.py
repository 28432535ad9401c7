"""One query's attention over the filled part of a static KV cache, in one Triton kernel (flash-decoding's
inner loop, without its split over the sequence: at these cache lengths one program per row and head is enough).

Why: lean.py's decode attention as plain reductions is three inductor kernels per layer that read the whole
preallocated cache (~130 us a step at b=32 on an H200, docs/history/2026-11-lean-step.md), although on average half of
it is still empty. Here the filled length is read on the device (``position + 1``) and every load past it is masked
off, so the kernel reads only the filled slots while one CUDA graph still replays every step (fixed shapes).
Online softmax in fp32, as the reductions and the fused SDPA kernels accumulate.

``decode_attention_qkv`` (GPT-2, lean.py's ``fused_qkv``, on by default: 4-7% off a lean step on an H200) goes one step
further: it takes c_attn's output, or skinny.py's fp32 partial sums of it, adds them and the bias for this row and
head, writes K and V into the cache in place and attends with them from registers. That is one kernel where the
unfused step runs four or five (the qkv sum and bias fused into two cache writes and one or two copies of q, then
the attention): measured on an H200, the ones before the attention took 39-48 us of a step at b=4-32
(docs/history/2026-11-lean-step.md).

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
    def _attend_filled(q, k_ptr, v_ptr, base, stride_kl, d, position, k_new, v_new, scale, LENGTH: tl.constexpr,
                       D: tl.constexpr, BLOCK: tl.constexpr, NEW_IN_REGISTERS: tl.constexpr):
        """softmax(q k^T * scale) v over cache slots 0..position, online, in fp32. NEW_IN_REGISTERS: the slot at
        `position` is k_new / v_new (this step's, being written by this same kernel), not a load from the cache."""
        top = tl.full((), float("-inf"), tl.float32)  # running max of the scores
        total = tl.zeros((), tl.float32)  # running sum of exp(score - top)
        acc = tl.zeros(d.shape, tl.float32)
        # LENGTH, the cache's, is a compile-time constant: one kernel per cache length, like the compiled step
        # itself (and Triton's interpreter, which the CPU tests use, cannot loop to a runtime bound).
        for start in range(0, LENGTH, BLOCK):  # past `position` every load is masked off: no memory is read
            slots = start + tl.arange(0, BLOCK)
            live = slots <= position
            stored = slots < position if NEW_IN_REGISTERS else live
            offsets = base + slots[:, None] * stride_kl + d[None, :]
            inside = stored[:, None] & (d[None, :] < D)
            k = tl.load(k_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            if NEW_IN_REGISTERS:
                now = (slots == position)[:, None]
                k = tl.where(now, k_new[None, :], k)
                v = tl.where(now, v_new[None, :], v)
            scores = tl.where(live, tl.sum(k * q[None, :], 1) * scale, float("-inf"))
            new_top = tl.maximum(top, tl.max(scores, 0))
            shrink = tl.exp(top - new_top)
            p = tl.exp(scores - new_top)
            total = total * shrink + tl.sum(p, 0)
            acc = acc * shrink + tl.sum(p[:, None] * v, 0)
            top = new_top
        return acc / total

    @triton.jit
    def _kernel(q_ptr, k_ptr, v_ptr, pos_ptr, out_ptr, stride_qb, stride_qh, stride_kb, stride_kh, stride_kl,
                scale, LENGTH: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                BLOCK: tl.constexpr, PDL: tl.constexpr):
        if PDL:  # every input may be the kernel before's output; the kernel after may start (it waits for us)
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        row, head = tl.program_id(0), tl.program_id(1)
        kv_head = head // GROUP  # grouped-query attention: GROUP query heads read one K/V head
        d = tl.arange(0, D_PAD)
        q = tl.load(q_ptr + row * stride_qb + head * stride_qh + d, mask=d < D, other=0.0).to(tl.float32)
        position = tl.load(pos_ptr)  # slots 0..position: the step's own K/V is already written
        out = _attend_filled(q, k_ptr, v_ptr, row * stride_kb + kv_head * stride_kh, stride_kl, d, position,
                             q, q, scale, LENGTH, D, BLOCK, False)  # (q, q: k_new, v_new, unused here)
        tl.store(out_ptr + (row * tl.num_programs(1) + head) * D + d, out.to(out_ptr.dtype.element_ty), mask=d < D)

    @triton.jit
    def _projected(parts_ptr, bias_ptr, row_offset, cols, mask, stride_ps, SPLITS: tl.constexpr,
                   HAS_BIAS: tl.constexpr, DTYPE: tl.constexpr):
        """Columns `cols` of one row of the qkv projection, as lean.py's _project makes them: the fp32 partial sums
        added, rounded to the model's dtype, plus the bias in that dtype."""
        acc = tl.zeros(cols.shape, tl.float32)
        for s in tl.static_range(SPLITS):
            acc += tl.load(parts_ptr + s * stride_ps + row_offset + cols, mask=mask, other=0.0).to(tl.float32)
        y = acc.to(DTYPE)
        if HAS_BIAS:  # in fp32, rounded once, as torch adds two bf16 tensors
            y = (y.to(tl.float32) + tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)).to(DTYPE)
        return y

    @triton.jit
    def _qkv_kernel(parts_ptr, bias_ptr, k_ptr, v_ptr, pos_ptr, out_ptr, stride_ps, stride_pb, stride_kb, stride_kh,
                    stride_kl, scale, SPLITS: tl.constexpr, HAS_BIAS: tl.constexpr, LENGTH: tl.constexpr,
                    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        if PDL:  # as in _kernel
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        row, head = tl.program_id(0), tl.program_id(1)
        width = tl.num_programs(1) * D  # GPT-2's c_attn output: [q heads | k heads | v heads]
        d = tl.arange(0, D_PAD)
        inside = d < D
        dtype = k_ptr.dtype.element_ty
        cols = head * D + d
        q = _projected(parts_ptr, bias_ptr, row * stride_pb, cols, inside, stride_ps, SPLITS, HAS_BIAS, dtype)
        k_new = _projected(parts_ptr, bias_ptr, row * stride_pb, width + cols, inside, stride_ps, SPLITS, HAS_BIAS,
                           dtype)
        v_new = _projected(parts_ptr, bias_ptr, row * stride_pb, 2 * width + cols, inside, stride_ps, SPLITS,
                           HAS_BIAS, dtype)
        position = tl.load(pos_ptr)
        base = row * stride_kb + head * stride_kh
        tl.store(k_ptr + base + position * stride_kl + d, k_new, mask=inside)  # the cache write, in place
        tl.store(v_ptr + base + position * stride_kl + d, v_new, mask=inside)
        out = _attend_filled(q.to(tl.float32), k_ptr, v_ptr, base, stride_kl, d, position, k_new.to(tl.float32),
                             v_new.to(tl.float32), scale, LENGTH, D, BLOCK, True)
        tl.store(out_ptr + (row * tl.num_programs(1) + head) * D + d, out.to(out_ptr.dtype.element_ty), mask=inside)


@torch.library.custom_op("decode_gate::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor,
                     scale: float, pdl: bool = False) -> torch.Tensor:
    """q [B, heads, 1, D], caches [B, kv_heads, L, D] (last dim contiguous), position [1] on the device:
    softmax(q k^T * scale) v over cache slots 0..position, as [B, heads, 1, D] in the cache's dtype. pdl: launched
    as a programmatic dependent launch (Hopper; skinny.py)."""
    b, heads, _, d = q.shape
    if k_cache.stride(-1) != 1 or v_cache.stride() != k_cache.stride() or q.stride(-1) != 1:
        raise ValueError("decode_attention wants the caches alike and every last dimension contiguous")
    out = torch.empty((b, heads, 1, d), device=q.device, dtype=k_cache.dtype)
    pdl = pdl and q.is_cuda  # Triton's interpreter (the CPU tests) runs without
    _kernel[(b, heads)](q, k_cache, v_cache, position, out, q.stride(0), q.stride(1), k_cache.stride(0),
                        k_cache.stride(1), k_cache.stride(2), scale, LENGTH=k_cache.shape[2],
                        GROUP=heads // k_cache.shape[1], D=d, D_PAD=triton.next_power_of_2(d), BLOCK=BLOCK_L,
                        PDL=pdl, num_warps=4, launch_pdl=pdl)
    return out


@decode_attention.register_fake
def _(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor,
      scale: float, pdl: bool = False) -> torch.Tensor:
    return q.new_empty(q.shape, dtype=k_cache.dtype)


@torch.library.custom_op("decode_gate::decode_attention_qkv", mutates_args=("k_cache", "v_cache"))
def decode_attention_qkv(parts: torch.Tensor, bias: torch.Tensor | None, k_cache: torch.Tensor,
                         v_cache: torch.Tensor, position: torch.Tensor, scale: float, pdl: bool = False
                         ) -> torch.Tensor:
    """GPT-2's step attention straight from its c_attn projection, in one kernel instead of four (the qkv sum and
    bias for q, K and V, the two cache writes, the attention): ``parts`` [S, B, 3 * heads * D] holds S partial sums
    of the projection without its bias (skinny.py's, fp32; or S = 1, cuBLAS's mm in the model's dtype), or S = 1
    finished output (the bias already in, ``bias`` None). Writes this step's K and V into the caches [B, heads, L, D]
    at ``position`` and returns decode_attention's result."""
    splits, b, width = parts.shape
    _, heads, _, d = k_cache.shape
    if width != 3 * heads * d or k_cache.shape[0] != b or v_cache.shape != k_cache.shape:
        raise ValueError(f"decode_attention_qkv wants parts [S, B, 3 * heads * D] for caches [B, heads, L, D], got "
                         f"{tuple(parts.shape)} and {tuple(k_cache.shape)}")
    if parts.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride() != k_cache.stride():
        raise ValueError("decode_attention_qkv wants the caches alike and every last dimension contiguous")
    out = torch.empty((b, heads, 1, d), device=parts.device, dtype=k_cache.dtype)
    pdl = pdl and parts.is_cuda  # as in decode_attention
    _qkv_kernel[(b, heads)](parts, parts if bias is None else bias, k_cache, v_cache, position, out, parts.stride(0),
                            parts.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), scale,
                            SPLITS=splits, HAS_BIAS=bias is not None, LENGTH=k_cache.shape[2], D=d,
                            D_PAD=triton.next_power_of_2(d), BLOCK=BLOCK_L, PDL=pdl, num_warps=4,
                            launch_pdl=pdl)
    return out


@decode_attention_qkv.register_fake
def _(parts: torch.Tensor, bias: torch.Tensor | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
      position: torch.Tensor, scale: float, pdl: bool = False) -> torch.Tensor:
    b, heads, _, d = k_cache.shape
    return k_cache.new_empty((b, heads, 1, d))
