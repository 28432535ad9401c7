"""LeanModel's options that follow the weights' dtype (the kernels they pick are tested in test_head_argmax.py and
test_skinny.py; their tokens by the equivalence suite on the GPU)."""

import pytest
import torch

from generators.lean import LeanModel, hopper
from generators.models import build


@pytest.mark.parametrize(("dtype", "fused", "max_rows"), [("bfloat16", True, 32), ("float32", False, 32)])
def test_fused_head_and_skinny_rows_default_by_dtype(dtype: str, fused: bool, max_rows: int) -> None:
    """fused_head is on in bf16 only, where the step's A/B measured it faster; skinny.py takes 32 rows in both; an
    option given wins."""
    model = build("tiny-gpt2", dtype=dtype)
    lean = LeanModel(model)
    assert (lean.fused_head, lean.skinny_max_rows) == (fused, max_rows)
    lean = LeanModel(model, fused_head=not fused, skinny_max_rows=8)
    assert (lean.fused_head, lean.skinny_max_rows) == (not fused, 8)


def test_pdl_needs_hopper() -> None:
    """pdl asked for where there is no Hopper GPU is refused by name, never silently off."""
    model = build("tiny-gpt2", dtype="float32")
    assert not LeanModel(model).pdl
    with pytest.raises(ValueError, match="pdl=True needs a CUDA device"):
        LeanModel(model, pdl=True)


def test_pdl_where_hopper_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """LeanKV turns pdl on wherever it runs: a CUDA device of compute capability 9.0 or newer."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert hopper(cuda) and not hopper(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))
    assert not hopper(cuda)
