"""The Triton kernels compile for Hopper (sm_90) as the lean step launches them: PDL on, both dtypes, one row and 32.

Why: the kernels' other tests run on CPU in Triton's interpreter, which executes the Python and never compiles, so a
kernel it runs can still fail in Triton's compiler (an early return, a constexpr a branch does not take, a helper's
types). Here each launch is recorded on CPU tensors, with the plan an H200 gets (132 SMs), and compiled ahead of
time to a cubin by triton.compile (ptxas ships in triton's wheel): no GPU needed. Runs where triton is importable
and its interpreter is off (.ci/run's third pytest, ci.yml's "Triton kernels, compiled").
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (CPU wheels of torch ship without it)")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("Triton's interpreter is on: its kernels are Python, nothing to compile", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from generators import epilogue, flash_decode, head_argmax, skinny  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
POINTERS = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.int32: "*i32", torch.int64: "*i64"}
LAUNCH_OPTIONS = ("num_warps", "num_stages")


class Recorder:
    """Stands in for a @triton.jit kernel: kernel[grid](...) records the launch instead of running it."""

    def __init__(self, kernel: object, launches: list) -> None:
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid: tuple):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


def compiled(kernel: object, args: tuple, kwargs: dict) -> object:
    """triton.compile of one recorded launch for sm_90, as a Hopper runs it: PDL on, libdevice's tanh."""
    values = dict(zip(kernel.arg_names, args, strict=False)) | kwargs
    values |= {k: True for k in ("PDL", "LIBDEVICE") if k in values}  # CPU tensors turned them off
    signature, constants = {}, {}
    for param, name in zip(kernel.params, kernel.arg_names, strict=True):
        value = values[name]
        if param.is_constexpr:
            signature[name], constants[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = POINTERS[value.dtype]
        else:
            signature[name] = {bool: "i1", int: "i32", float: "fp32"}[type(value)]
    options = {k: v for k, v in kwargs.items() if k in LAUNCH_OPTIONS} | {"launch_pdl": True}
    return triton.compile(ASTSource(kernel, signature, constants), target=HOPPER, options=options)


def lean_launches(dtype: torch.dtype, rows: int) -> None:
    """One call of every kernel a lean step can launch, at GPT-2 small's and llama-110m's shapes: skinny.py's GEMM
    plain, with each norm folded in, and q, k and v stacked; epilogue.py's with each epilogue, the LM head with each
    final norm, and both attention kernels."""
    hidden, vocab, heads, length = 768, 32000, 12, 128

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape).to(dtype)

    x, ones, zeros = randn(rows, hidden), randn(hidden), randn(hidden)
    stats = torch.zeros(24, rows, 3)
    layer, rms = skinny.Norm(stats, ones, zeros, 1e-5), skinny.Norm(stats, ones, None, 1e-5, rms=True)
    tickets = epilogue.tickets(torch.device("cpu"))
    for norm in (None, layer, rms):
        skinny.partials(x, randn(hidden, 3 * hidden), pdl=True, norm=norm)
        head_argmax.head_argmax(x, randn(vocab, hidden), pdl=True, norm=norm)
    q, k, v = (randn(n, hidden).t() for n in (hidden, 256, 256))  # nn.Linear's, read transposed; GQA's narrower k, v
    skinny.partials(x, q, pdl=True, norm=rms, stacked=(k, v))
    epilogue.linear(randn(rows, 4 * hidden), randn(4 * hidden, hidden), zeros, tickets, residual=x, pdl=True)
    epilogue.linear(x, randn(hidden, 4 * hidden), randn(4 * hidden), tickets, gelu=True, norm=layer, pdl=True)
    gate_up = randn(hidden, 2 * 2048)  # Phi-3's gate_up_proj halves: strided views, as Llama's two weights read
    epilogue.linear(x, gate_up[:, :2048], None, tickets, up=gate_up[:, 2048:], norm=rms, pdl=True)
    cache, position = randn(rows, heads, length, 64), torch.zeros(1, dtype=torch.int64)
    flash_decode.decode_attention(randn(rows, heads, 1, 64), cache, cache.clone(), position, 0.125, True)
    parts = torch.zeros(skinny.MAX_SPLITS, rows, 3 * hidden)
    flash_decode.decode_attention_qkv(parts, randn(3 * hidden), cache, cache.clone(), position, 0.125, True)


@pytest.mark.parametrize("rows", [1, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_lean_kernel_compiles_for_hopper(dtype: torch.dtype, rows: int, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    launches = []
    for module, name in ((skinny, "_partials_kernel"), (epilogue, "_linear_kernel"),
                         (head_argmax, "_block_argmax_kernel"), (flash_decode, "_kernel"),
                         (flash_decode, "_qkv_kernel")):
        monkeypatch.setattr(module, name, Recorder(getattr(module, name), launches))
    monkeypatch.setattr(skinny, "sm_count", lambda device: 132)  # an H200's plan
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)  # fp32 in rounded TF32, as the lean step
    lean_launches(dtype, rows)
    assert len(launches) == 12  # 4 GEMMs, 3 heads, 3 epilogues, 2 attentions
    for kernel, args, kwargs in launches:
        assert compiled(kernel, args, kwargs).asm["cubin"], kernel.__name__
