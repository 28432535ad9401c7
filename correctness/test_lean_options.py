"""LeanModel's options and their defaults (the kernels they pick are tested in test_head_argmax.py and test_skinny.py;
their tokens by the equivalence suite on the GPU)."""

import pytest
import torch

from generators import skinny
from generators.lean import LeanModel, hopper
from generators.models import build


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_fused_head_skinny_rows_and_slabs_by_default(dtype: str) -> None:
    """In both dtypes, where the step's A/B measured each faster: fused_head on, skinny.py to 32 rows, at most
    skinny.MAX_SPLITS slabs; an option given wins."""
    model = build("tiny-gpt2", dtype=dtype)
    lean = LeanModel(model)
    assert (lean.fused_head, lean.skinny_max_rows, lean.skinny_max_splits) == (True, 32, skinny.MAX_SPLITS)
    lean = LeanModel(model, fused_head=False, skinny_max_rows=8, skinny_max_splits=skinny.UNCAPPED)
    assert (lean.fused_head, lean.skinny_max_rows, lean.skinny_max_splits) == (False, 8, skinny.UNCAPPED)


def test_fused_epilogues_where_asked_and_the_activation_is_a_tanh_gelu() -> None:
    """Off by default (not yet measured on a GPU); asked for, on for GPT-2's "gelu_new", which epilogue.py applies,
    and off, not wrong, without fused_qkv's attention or for an activation it does not apply (the step then runs the
    model's own modules)."""
    model = build("tiny-gpt2", dtype="float32")
    assert not LeanModel(model).fused_epilogues
    assert model.config.activation_function == "gelu_new" and LeanModel(model, fused_epilogues=True).fused_epilogues
    assert not LeanModel(model, fused_epilogues=True, fused_qkv=False).fused_epilogues  # its layers need fused_qkv's
    model.config.activation_function = "relu"
    assert not LeanModel(model, fused_epilogues=True).fused_epilogues


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-phi3"])
def test_fused_epilogues_for_the_llama_family_where_the_mlp_is_silu_without_biases(name: str) -> None:
    """Asked for, on where epilogue.py applies the MLP's activation (SiLU) and its gate and up have no biases (Llama's
    mlp_bias); off, not wrong, otherwise."""
    model = build(name, dtype="float32")
    assert model.config.hidden_act == "silu" and LeanModel(model, fused_epilogues=True).fused_epilogues
    model.config.hidden_act = "gelu"
    assert not LeanModel(model, fused_epilogues=True).fused_epilogues
    if name == "tiny-llama":
        model = build(name, dtype="float32")
        mlp = model.model.layers[0].mlp
        mlp.gate_proj.bias = torch.nn.Parameter(torch.zeros(mlp.gate_proj.out_features))
        assert not LeanModel(model, fused_epilogues=True).fused_epilogues


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
