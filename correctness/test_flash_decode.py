"""flash_decode.py's kernel against lean.py's reductions (CUDA, or Triton's interpreter with TRITON_INTERPRET=1)."""

import pytest
import torch

from correctness import lean_steps
from generators import flash_decode
from generators.lean import LeanModel
from generators.models import build

pytestmark = pytest.mark.usefixtures("needs_triton")  # every test here runs a Triton kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("position", [0, 5, 63, 64, 99])  # one slot, within a block, on and past a block edge
# llama: grouped-query attention; mistral: four query heads a K/V head, head_dim 24 (padded to 32); qwen3: head_dim 32
@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama", "tiny-mistral", "tiny-qwen3"])
def test_kernel_matches_the_reductions(device: torch.device, family: str, position: int, dtype: torch.dtype) -> None:
    lean = LeanModel(build(family, device=device))
    torch.manual_seed(position)
    b, length = 3, 100
    k_cache, v_cache = (torch.randn(b, lean.n_kv_head, length, lean.head_dim, device=device, dtype=dtype)
                        for _ in range(2))
    q = torch.randn(b, lean.n_head, 1, lean.head_dim, device=device, dtype=dtype)
    pos = torch.tensor([position], device=device)
    mask = torch.arange(length, device=device)[None, :] <= pos[:, None]
    want = lean._decode_attention(q, k_cache, v_cache, mask, 0.125)
    got = flash_decode.decode_attention(q, k_cache, v_cache, pos, 0.125)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("position", [0, 5, 64, 99])
# (1, False): c_attn's output, bias in (one row, no skinny.py); (1, True): cuBLAS's mm + the bias (more rows than
# skinny.py takes); (3, True): skinny.py's fp32 partial sums + the bias
@pytest.mark.parametrize(("splits", "with_bias"), [(1, False), (1, True), (3, True)])
def test_qkv_kernel_is_the_projection_the_cache_write_and_the_attention(device: torch.device, splits: int,
                                                                        with_bias: bool, position: int,
                                                                        dtype: torch.dtype) -> None:
    torch.manual_seed(position)
    b, heads, d, length = 3, 4, 16, 100
    parts = torch.randn(splits, b, 3 * heads * d, device=device, dtype=torch.float32 if splits > 1 else dtype)
    bias = torch.randn(3 * heads * d, device=device, dtype=dtype) if with_bias else None
    k_cache, v_cache = (torch.randn(b, heads, length, d, device=device, dtype=dtype) for _ in range(2))
    pos = torch.tensor([position], device=device)
    # lean.py's unfused path: _project (partial sums added, rounded, bias), the cache writes, decode_attention
    qkv = parts.float().sum(0).to(dtype) + (0 if bias is None else bias)
    q, k, v = (t.view(b, 1, heads, d).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want_k[:, :, pos], want_v[:, :, pos] = k, v
    want = flash_decode.decode_attention(q.contiguous(), want_k, want_v, pos, 0.125)
    got = flash_decode.decode_attention_qkv(parts, bias, k_cache, v_cache, pos, 0.125)
    # fp32: the same arithmetic, bit for bit. bf16 under the interpreter: it rounds fp32 -> bf16 toward zero (the GPU
    # to nearest, as torch), so the kernel's one rounding of the projection may land one bf16 ulp off.
    exact = dtype == torch.float32 or device.type == "cuda"
    tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(k_cache, want_k, **tol)  # written in place, at `position` only
    torch.testing.assert_close(v_cache, want_v, **tol)
    torch.testing.assert_close(got, want, **tol)


def test_qkv_kernel_rejects_a_projection_that_does_not_fit_the_cache(device: torch.device) -> None:
    cache = torch.zeros(2, 4, 8, 16, device=device)
    with pytest.raises(ValueError, match=r"parts \[S, B, 3 \* heads \* D\]"):
        flash_decode.decode_attention_qkv(torch.zeros(1, 2, 3 * 4 * 8, device=device), None, cache, cache.clone(),
                                          torch.tensor([0], device=device), 1.0)


@pytest.mark.parametrize("compiled", [False, True])
def test_lean_step_with_fused_qkv_is_the_unfused_step(device: torch.device, compiled: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens and caches of a few GPT-2 decode steps with fused_qkv on and off, eager or fullgraph-compiled (the
    compiled kernel must write the caches in place, as the CUDA graph replays them)."""
    if device.type != "cuda":
        monkeypatch.setattr(flash_decode, "available", lambda q: True)  # the interpreter runs the kernels on CPU
    model = build("tiny-gpt2", device=device)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 4), device=device)

    def run(fused: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return lean_steps.run(LeanModel(model, fused_qkv=fused), ids, 5, compiled)

    (tokens, caches), (want_tokens, want_caches) = run(True), run(False)
    assert torch.equal(tokens, want_tokens)
    for got, want in zip(caches, want_caches, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# tiny-llama's step is tiny-mistral's with other shapes (the GPU suite runs it through the kernels).
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("family", ["tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-phi3"])
def test_llama_family_step_through_the_kernels(device: torch.device, family: str, rows: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A Llama-family prefill and decode steps as the GPU runs them (skinny.py's matmul for every projection, this
    module's attention) against the same steps through the modules and reductions: same tokens, logits and caches
    to fp32 rounding (TF32 off). Covers what each family feeds the kernels (Phi-3's split qkv, partial rotary,
    Qwen3's head norms, Qwen2's biases added to skinny.py's sums, head_dim 24 and 32)."""
    from generators import skinny  # noqa: PLC0415
    from generators.decoding import Decoding, append_token  # noqa: PLC0415

    attention_on, matmul_on = flash_decode.available, skinny.available
    if device.type != "cuda":  # the interpreter runs the kernels on CPU
        attention_on = lambda q: True  # noqa: E731
        matmul_on = lambda x, max_rows=skinny.MAX_ROWS, min_rows=skinny.MIN_ROWS: (  # noqa: E731
            min_rows <= x.shape[0] <= max_rows)
    model = build(family, device=device)  # (sets TF32 on for fp32 matmuls)
    # Full fp32 on a GPU too: cuBLAS's TF32 and skinny.py's rounded TF32 would part by more than the summation order.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (rows, 3), device=device)  # 1 row: skinny.py's BLOCK_M == 1

    def run(kernels: bool) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        # The kernels on, or both paths through the modules and reductions.
        monkeypatch.setattr(flash_decode, "available", attention_on if kernels else lambda q: False)
        monkeypatch.setattr(skinny, "available", matmul_on if kernels else lambda *args: False)
        lean = LeanModel(model)
        d = Decoding.allocate(rows, 3, 3, None, None, device)
        d.reset(ids)
        caches = lean.new_cache(rows, 6)
        logits = []
        with torch.inference_mode():
            logits.append(lean(d.tokens[:, :3], torch.arange(3, device=device), caches))
            append_token(d, logits[-1])
            for _ in range(2):
                logits.append(lean(d.tokens.index_select(1, d.last), d.last, caches))
                append_token(d, logits[-1])
        return d.tokens, logits, [t for kv in caches for t in kv]

    (tokens, logits, caches), (want_tokens, want_logits, want_caches) = run(True), run(False)
    assert torch.equal(tokens, want_tokens)
    for got, want in zip(logits + caches, want_logits + want_caches, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
