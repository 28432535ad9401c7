"""head_argmax.py: the LM head's greedy pick without the logits, as torch.argmax picks (CUDA, or Triton's
interpreter)."""

import pytest
import torch

from generators import head_argmax

pytestmark = pytest.mark.usefixtures("needs_triton")


@pytest.mark.parametrize(("m", "k", "n"), [(1, 100, 300), (5, 64, 129), (32, 96, 256)])  # ragged K and N
def test_picks_the_largest_logit(device: torch.device, m: int, k: int, n: int) -> None:
    torch.manual_seed(0)
    h, w = torch.randn(m, k, device=device), torch.randn(n, k, device=device)
    best, _ = head_argmax.head_argmax_blocks(h, w, False)
    exact = h.double() @ w.double().T
    assert torch.equal(head_argmax.head_argmax(h, w), exact.argmax(-1))
    torch.testing.assert_close(best.max(1).values.double(), exact.max(-1).values, rtol=1e-5, atol=1e-4)


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
