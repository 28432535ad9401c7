"""A layer projection in one kernel: skinny.py's split-K GEMM that sums its own slabs, then adds the bias, applies
GELU, adds the residual or multiplies SiLU(gate) by up (two weights' slabs a program), and writes the next norm's
statistics, which the projection after it reads to normalise its input in its prologue (skinny.py's NORM).

Why: a lean fp32 GPT-2 step at b=32 ran 100 kernels on an H200, 37 of them inductor's slab sums fused with the
bias, GELU (12), the residual add and the LayerNorms (25): ~1.7 us each, plus its gap (3d672d7, perf/RESULTS.md
"Kernels per step"). Here 35 of them go into the GEMMs, and a layer is five kernels: c_attn (ln_1 in its
prologue), the attention (flash_decode.py), c_proj with the residual, c_fc (ln_2 in its prologue) with GELU, c_proj
with the residual. A Llama-family layer likewise: q, k and v in one GEMM (skinny.py's stacked weights, RMSNorm in
its prologue), RoPE and the attention, o_proj with the residual, gate and up with SiLU-and-multiply (RMSNorm in the
prologue), down_proj with the residual.

How a GEMM sums its own slabs: every program writes its fp32 partial sum as skinny.py's does, then takes a ticket
from its column block's counter; the last of the block's S programs to arrive adds the S partial sums in slab order
(the result does not depend on which program is last), applies the epilogue to the block, writes the block's
LayerNorm statistics (sum, squared deviations from its mean, columns) per row, and sets the counter back to 0, so
the next call, and a CUDA graph's next replay, find it as this one did. No other kernel touches the counters, and
under PDL a kernel takes tickets only after it has waited for the kernel before to finish.

Status: LeanModel(fused_epilogues=True) runs it; off by default until a GPU has measured it (tested in Triton's
interpreter only; perf/RESULTS.md, "Kernels per step", has the prediction for GPT-2).
"""

from __future__ import annotations

import torch

from . import skinny

# Activations the epilogue applies, by transformers' name for them (GPT-2's config.activation_function; the Llama
# family's config.hidden_act, for the gate).
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")
SILU = ("silu", "swish")
TICKETS = 1024  # column blocks a GEMM may have: N up to 32,768 at 32 columns a block

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # CPU wheels of torch ship without triton
    triton = None


def tickets(device: torch.device) -> torch.Tensor:
    """A zeroed counter per column block, for one caller's GEMMs in turn (they leave it zeroed)."""
    return torch.zeros(TICKETS, dtype=torch.int32, device=device)


if triton is not None:
    from .skinny import _slab_dot

    @triton.jit
    def _linear_kernel(x_ptr, w_ptr, M, N, K, stride_xm, stride_xk, stride_wk, stride_wn,
                       stats_ptr, g_ptr, b_ptr, eps,
                       part_ptr, ticket_ptr, bias_ptr, res_ptr, up_ptr, y_ptr, stats_out_ptr,
                       K_PER_SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, ROUND: tl.constexpr,
                       WHOLE_SLAB: tl.constexpr, PDL: tl.constexpr, NORM: tl.constexpr,
                       STAT_BLOCKS: tl.constexpr, SPLITS: tl.constexpr, HAS_BIAS: tl.constexpr,
                       GELU: tl.constexpr, RESIDUAL: tl.constexpr, GATED: tl.constexpr, LIBDEVICE: tl.constexpr):
        pid_n, split = tl.program_id(0), tl.program_id(1)
        acc = _slab_dot(x_ptr, w_ptr, M, N, K, stride_xm, stride_xk, stride_wk, stride_wn, pid_n, split,
                        stats_ptr, g_ptr, b_ptr, eps, K_PER_SPLIT, BLOCK_M, BLOCK_N, BLOCK_K,
                        PRECISION, ROUND, WHOLE_SLAB, PDL, NORM, STAT_BLOCKS)
        rows = tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        at = rows[:, None] * N + cols[None, :]
        tl.store(part_ptr + split * M * N + at, acc, mask=mask)
        if GATED:  # up's slab of the same columns (w's strides), after gate's: PDL's wait is behind us
            acc = _slab_dot(x_ptr, up_ptr, M, N, K, stride_xm, stride_xk, stride_wk, stride_wn, pid_n, split,
                            stats_ptr, g_ptr, b_ptr, eps, K_PER_SPLIT, BLOCK_M, BLOCK_N, BLOCK_K,
                            PRECISION, ROUND, WHOLE_SLAB, False, NORM, STAT_BLOCKS)
            tl.store(part_ptr + (SPLITS + split) * M * N + at, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial sum stored before the ticket releases them
        if tl.atomic_add(ticket_ptr + pid_n, 1, sem="acq_rel", scope="gpu") == SPLITS - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(0, SPLITS):  # slab order, whichever program came last
                total += tl.load(part_ptr + s * M * N + at, mask=mask, other=0.0, cache_modifier=".cg")
            dtype = y_ptr.dtype.element_ty
            if HAS_BIAS:  # the projection's output in the model's dtype, as the module would return it
                total += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
            y = total.to(dtype).to(tl.float32)
            if GELU:  # transformers' NewGELUActivation, tanh as inductor computes it (libdevice)
                u = 0.7978845608028654 * (y + 0.044715 * y * y * y)
                if LIBDEVICE:
                    t = libdevice.tanh(u)
                else:  # Triton's interpreter has no libdevice
                    t = 2.0 * tl.sigmoid(2.0 * u) - 1.0
                y = (0.5 * y * (1.0 + t)).to(dtype).to(tl.float32)
            if GATED:  # act_fn(gate_proj(x)) * up_proj(x), each rounded to the model's dtype as the modules round
                up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for s in range(SPLITS, 2 * SPLITS):
                    up += tl.load(part_ptr + s * M * N + at, mask=mask, other=0.0, cache_modifier=".cg")
                y = (y * tl.sigmoid(y)).to(dtype).to(tl.float32)
                y = (y * up.to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
            if RESIDUAL:
                y = (y + tl.load(res_ptr + at, mask=mask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
            tl.store(y_ptr + at, y.to(dtype), mask=mask)
            # The block's LayerNorm statistics per row, of the values as stored
            n = tl.minimum(N - pid_n * BLOCK_N, BLOCK_N).to(tl.float32)
            y = tl.where(mask, y, 0.0)
            mean = tl.sum(y, axis=1) / n
            d = tl.where(mask, y - mean[:, None], 0.0)
            out = stats_out_ptr + (pid_n * M + rows) * 3
            tl.store(out, tl.sum(y, axis=1), mask=rows < M)
            tl.store(out + 1, tl.sum(d * d, axis=1), mask=rows < M)
            tl.store(out + 2, tl.zeros_like(mean) + n, mask=rows < M)
            tl.atomic_xchg(ticket_ptr + pid_n, 0)  # zeroed for the next call


@torch.library.custom_op("decode_gate::skinny_linear", mutates_args=())
def skinny_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                  up: torch.Tensor | None, ticket: torch.Tensor, gelu: bool, fp32: str, pdl: bool = False,
                  max_splits: int = skinny.MAX_SPLITS, stats: torch.Tensor | None = None,
                  norm_w: torch.Tensor | None = None, norm_b: torch.Tensor | None = None, eps: float = 0.0,
                  rms: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [M, N] in x's dtype, y's norm statistics [blocks, M, 3]): y = residual + (x @ w + bias), gelu_tanh(x @ w
    + bias), or silu(x @ w) * (x @ up); x normalised first with stats (skinny.Norm). `ticket` holds a zero per
    column block and is left so (the module docstring); its counters are not changed by the call."""
    (m, k), n = x.shape, w.shape[1]
    slab = skinny.whole_slab(x, pdl)
    block_n, splits, per_split = skinny.plan(m, n, k, skinny.sm_count(x.device), whole_slab=slab,
                                             max_splits=max_splits)
    blocks = triton.cdiv(n, block_n)
    if blocks > ticket.numel():
        raise ValueError(f"skinny_linear: {blocks} column blocks, more than the ticket's {ticket.numel()} counters")
    part = torch.empty((splits * (1 if up is None else 2), m, n), device=x.device, dtype=torch.float32)
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    stats_out = torch.empty((blocks, m, 3), device=x.device, dtype=torch.float32)
    norm = skinny.Norm.of(stats, norm_w, norm_b, eps, rms)
    pdl = pdl and x.is_cuda
    _linear_kernel[(blocks, splits)](  # tensors an epilogue does not read: x in their place
        *skinny.kernel_args(x, w, norm), part, ticket, x if bias is None else bias,
        x if residual is None else residual, x if up is None else up, y, stats_out,
        **skinny.constexprs(x, fp32, block_n, per_split, skinny.BLOCK_K, slab, pdl, norm),
        SPLITS=splits, HAS_BIAS=bias is not None, GELU=gelu, RESIDUAL=residual is not None, GATED=up is not None,
        LIBDEVICE=x.is_cuda, num_warps=4, num_stages=3,
        launch_pdl=pdl)
    return y, stats_out


@skinny_linear.register_fake
def _(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
      up: torch.Tensor | None, ticket: torch.Tensor, gelu: bool, fp32: str, pdl: bool = False,
      max_splits: int = skinny.MAX_SPLITS, stats: torch.Tensor | None = None, norm_w: torch.Tensor | None = None,
      norm_b: torch.Tensor | None = None, eps: float = 0.0, rms: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    (m, k), n = x.shape, w.shape[1]
    block_n, _, _ = skinny.plan(m, n, k, skinny.sm_count(x.device), whole_slab=skinny.whole_slab(x, pdl),
                                max_splits=max_splits)
    return x.new_empty((m, n)), x.new_empty((-(-n // block_n), m, 3), dtype=torch.float32)


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, ticket: torch.Tensor, *,
           residual: torch.Tensor | None = None, gelu: bool = False, up: torch.Tensor | None = None,
           norm: skinny.Norm | None = None, pdl: bool = False, max_splits: int = skinny.MAX_SPLITS,
           fp32: str = skinny.FP32_PRECISION) -> tuple[torch.Tensor, torch.Tensor]:
    """skinny_linear of x [M, K] @ w [K, N] (any strides), fp32 multiplied as skinny.partials multiplies it. up:
    the up projection's weight beside the gate's w, for silu(x @ w) * (x @ up) (the Llama family's MLP)."""
    if sum((gelu, residual is not None, up is not None)) > 1:
        raise ValueError("linear: gelu, residual and up: an epilogue applies one of them")
    if x.dim() != 2 or w.dim() != 2 or w.shape[0] != x.shape[1]:
        raise ValueError(f"linear: x [M, K] and w [K, N], got x {list(x.shape)} and w {list(w.shape)}")
    (m, _), n = x.shape, w.shape[1]
    norm = None if norm is None else skinny.Norm(*norm)  # a plain (stats, weight, bias, eps) is a LayerNorm
    if bias is not None and (bias.shape != (n,) or up is not None):
        raise ValueError(f"linear: bias must be [{n}] (w's columns) and without up, got {list(bias.shape)}"
                         f"{' with up' if up is not None else ''}")
    if up is not None and (up.shape != w.shape or up.stride() != w.stride() or up.dtype != w.dtype):
        raise ValueError(f"linear: up must be a weight like w ({list(w.shape)}, strides {list(w.stride())}, "
                         f"{w.dtype}), got {list(up.shape)}, strides {list(up.stride())}, {up.dtype}")
    if residual is not None and (residual.shape != (m, n) or residual.dtype != x.dtype):
        raise ValueError(f"linear: residual must be [{m}, {n}] in {x.dtype}, got {list(residual.shape)} in "
                         f"{residual.dtype}")
    if ticket.dtype != torch.int32 or ticket.dim() != 1:
        raise ValueError(f"linear: ticket must be tickets()'s zeroed int32 counters, got {ticket.dtype} "
                         f"{list(ticket.shape)}")
    if norm is not None and (norm.stats.dim() != 3 or norm.stats.shape[1:] != (m, 3)):
        raise ValueError(f"linear: norm's statistics must be [blocks, {m}, 3], got {list(norm.stats.shape)}")
    if norm is not None and (norm.bias is None) != norm.rms:
        raise ValueError("linear: norm's bias must be given for a LayerNorm and None for an RMSNorm (rms)")
    return skinny_linear(x, w, bias, residual, up, ticket, gelu, skinny.matmul_precision(fp32), pdl, max_splits,
                         *skinny.flat_norm(norm))
