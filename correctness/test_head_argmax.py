"""head_argmax.py: the LM head's greedy pick without the logits, as torch.argmax picks, the final norm folded in
or not (CUDA, or Triton's interpreter)."""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from generators import head_argmax, skinny

pytestmark = pytest.mark.usefixtures("needs_triton")


@pytest.mark.parametrize(("m", "k", "n"), [(1, 100, 300), (5, 64, 129), (32, 96, 256)])  # ragged K and N
def test_picks_the_largest_logit(device: torch.device, m: int, k: int, n: int) -> None:
    torch.manual_seed(0)
    h, w = torch.randn(m, k, device=device), torch.randn(n, k, device=device)
    best, _ = head_argmax.head_argmax_blocks(h, w, "ieee")
    exact = h.double() @ w.double().T
    assert torch.equal(head_argmax.head_argmax(h, w), exact.argmax(-1))
    torch.testing.assert_close(best.max(1).values.double(), exact.max(-1).values, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tf32", [True, False])
def test_fp32_follows_torchs_tf32_setting(device: torch.device, tf32: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under TF32 the logits are products of inputs rounded to TF32, as skinny.py and cuBLAS multiply; without,
    full fp32 products."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    torch.manual_seed(0)
    h, w = torch.randn(4, 256, device=device), torch.randn(200, 256, device=device)
    results = []
    blocks = head_argmax.head_argmax_blocks
    monkeypatch.setattr(head_argmax, "head_argmax_blocks", lambda *args: results.append(blocks(*args)) or results[0])
    head_argmax.head_argmax(h, w)
    best = results[0][0].max(1).values.double()

    def rounded(t: torch.Tensor) -> torch.Tensor:
        return ((t.view(torch.int32) + 0x1000) & -8192).view(torch.float32).double() if tf32 else t.double()

    want = (rounded(h) @ rounded(w).T).max(-1).values
    torch.testing.assert_close(best, want, rtol=1e-5, atol=1e-4)


def test_ties_go_to_the_lowest_index_across_blocks(device: torch.device) -> None:
    """Row 0's maximum sits at 3 and in another block at 200; row 1's at 130 and 131: torch.argmax takes the
    first."""
    k, n = 8, 300
    w = torch.zeros(n, k, device=device)
    w[3, 0] = w[200, 0] = 2.0
    w[130, 1] = w[131, 1] = 2.0
    h = torch.tensor([[1.0] + [0.0] * 7, [0.0, 1.0] + [0.0] * 6], device=device)
    assert head_argmax.head_argmax(h, w).tolist() == [3, 130]


def test_bf16_picks_among_the_logits_as_rounded(device: torch.device) -> None:
    """257 and 256 are one bf16 value (256): the bf16 logits tie and the first index wins, where fp32 would pick
    257's."""
    k, n = 4, 140
    w = torch.zeros(n, k, device=device)
    w[3, 0], w[135, 0], w[135, 1] = 256.0, 256.0, 1.0  # logits 256 at 3, 257 at 135
    h = torch.tensor([[1.0, 1.0, 0.0, 0.0]], device=device)
    assert head_argmax.head_argmax(h, w).tolist() == [135]
    assert head_argmax.head_argmax(h.bfloat16(), w.bfloat16()).tolist() == [3]
    assert torch.nn.functional.linear(h.bfloat16(), w.bfloat16()).argmax(-1).tolist() == [3]


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-qwen3"])
def test_lean_step_with_fused_head_picks_the_tokens_of_the_step_without(device: torch.device, family: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A few decode steps of LeanModel(fused_head=True) against fused_head=False: the same tokens."""
    from generators.caches import lean_decode_one_token  # noqa: PLC0415
    from generators.decoding import Decoding, append_token  # noqa: PLC0415
    from generators.lean import LeanModel  # noqa: PLC0415
    from generators.models import build  # noqa: PLC0415

    calls = []
    if device.type != "cuda":  # the interpreter runs the kernel on CPU
        monkeypatch.setattr(head_argmax, "available", lambda h: True)
    counted = head_argmax.head_argmax
    monkeypatch.setattr(head_argmax, "head_argmax", lambda *args: calls.append(1) or counted(*args))
    model = build(family, device=device)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 4), device=device)

    def run(fused: bool) -> torch.Tensor:
        lean = LeanModel(model, fused_head=fused)
        d = Decoding.allocate(3, 4, 6, None, None, device)
        d.reset(ids)
        caches = lean.new_cache(3, 10)
        with torch.inference_mode():
            append_token(d, lean(d.tokens[:, :4], torch.arange(4, device=device), caches))
            for _ in range(5):
                lean_decode_one_token(lean, caches, d)
        return d.tokens

    assert torch.equal(run(True), run(False))
    assert len(calls) == 5  # every decode step went through the kernel


def _block_stats(h: torch.Tensor, blocks: int) -> torch.Tensor:
    """epilogue.py's statistics of h [M, K] over `blocks` column blocks: (sum, squared deviations, columns)."""
    out = []
    for part in h.float().chunk(blocks, dim=1):
        mean = part.mean(1, keepdim=True)
        out.append(torch.stack([part.sum(1), ((part - mean) ** 2).sum(1), torch.full_like(mean[:, 0], part.shape[1])],
                               dim=-1))
    return torch.stack(out)  # [blocks, M, 3]


@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 96, 300), (7, 128, 257)])
def test_the_final_norm_folds_into_the_prologue(device: torch.device, m: int, k: int, n: int, kind: str) -> None:
    """With the final norm's statistics (three column blocks), the pick and its logit are those of the norm module's
    output times the head: GPT-2's LayerNorm (ln_f) or the Llama family's RMSNorm."""
    torch.manual_seed(0)
    h, w = torch.randn(m, k, device=device) + 2.0, torch.randn(n, k, device=device)
    module = (torch.nn.LayerNorm(k) if kind == "layer" else LlamaRMSNorm(k, eps=1e-6)).to(device)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_()
    eps = module.eps if kind == "layer" else module.variance_epsilon
    norm = skinny.Norm(_block_stats(h, 3), module.weight, getattr(module, "bias", None), eps, rms=kind == "rms")
    best, _ = head_argmax.head_argmax_blocks(h, w, "ieee", False, *norm)
    exact = module(h).double() @ w.double().T
    torch.testing.assert_close(best.max(1).values.double(), exact.max(-1).values, rtol=1e-5, atol=1e-4)
    assert torch.equal(head_argmax.head_argmax(h, w, norm=norm), exact.argmax(-1))
