"""flash_decode.py's kernel against lean.py's reductions (CUDA, or Triton's interpreter with TRITON_INTERPRET=1)."""

import os

import pytest
import torch

from generators import flash_decode
from generators.lean import LeanModel
from generators.models import build


@pytest.mark.skipif(flash_decode.triton is None, reason="triton is not installed (CPU wheels of torch ship without it)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("position", [0, 5, 63, 64, 99])  # one slot, within a block, on and past a block edge
@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])  # llama: grouped-query attention
def test_kernel_matches_the_reductions(device: torch.device, family: str, position: int, dtype: torch.dtype) -> None:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("a Triton kernel: needs CUDA, or TRITON_INTERPRET=1 to run on CPU")
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
