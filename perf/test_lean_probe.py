"""lean_probe's per-step kernel table on synthetic profiler events, and its variants' lean cache policies on CPU
(the probe itself needs a GPU)."""

from types import SimpleNamespace

import pytest
import torch

from generators import EAGER, Generator, generate, loop, models
from perf.lean_probe import VARIANTS, main, per_step, variant_cache


def events(*named_us: tuple[str, float]) -> list[SimpleNamespace]:
    return [SimpleNamespace(name=name, device_time_total=us) for name, us in named_us]


def test_per_step_counts_only_the_decode_steps() -> None:
    # 2-step run: prefill gemm + 2 steps of (gemm, attn); 12-step run: the same prefill + 12 steps (k = 10 more)
    prefill = [("gemm", 50.0), ("prefill_only", 7.0)]
    short = events(*prefill, *[("gemm", 9.0), ("attn", 3.0)] * 2)
    long = events(*prefill, *[("gemm", 9.0), ("attn", 3.0)] * 12)
    table = per_step(long, short, 10)
    assert list(table) == ["gemm", "attn"]  # largest time first; the prefill-only kernel cancels out
    assert table["gemm"] == {"launches": pytest.approx(1.0), "us": pytest.approx(9.0)}
    assert table["attn"] == {"launches": pytest.approx(1.0), "us": pytest.approx(3.0)}


def test_per_step_keeps_kernels_that_appear_only_in_decode_steps() -> None:
    table = per_step(events(("a", 4.0), ("b", 2.0), ("b", 2.0)), events(("a", 4.0)), 2)
    assert table == {"b": {"launches": 1.0, "us": 2.0}}


@pytest.mark.parametrize("name", [*VARIANTS, "unfused_head+skinny_16"])
@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_ab_variants_set_their_options_and_keep_naive_tokens(name: str, family: str) -> None:
    """Each of the probe's variants is a cache policy a Generator takes in one line, LeanModel with its options set:
    naive's tokens on CPU (where neither head_argmax.py nor skinny.py runs; the GPU suite rules there)."""
    model = models.build(family)
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    cache = variant_cache(name)
    want = {k: v for part in name.split("+") for k, v in VARIANTS[part].items()}
    if want.get("pdl"):  # models.build's device here is the CPU: PDL is refused by name, never silently off
        with pytest.raises(ValueError, match="pdl=True needs a CUDA device"):
            Generator(f"lean_{name}", "", cache=cache)(model, ids, 8, eos_token_id=7)
        return
    out = Generator(f"lean_{name}", "", cache=cache)(model, ids, 8, eos_token_id=7)
    assert torch.equal(out, generate("naive", model, ids, 8, eos_token_id=7))
    lean = loop.Session(cache, EAGER, model, ids, 8, None, None).cache.lean
    assert {key: getattr(lean, key) for key in want} == want


def test_a_misspelt_variant_is_named() -> None:
    with pytest.raises(ValueError, match="'skinny_64' is not one of"):
        variant_cache("unfused_head+skinny_64")


def test_another_model_goes_with_an_ab_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The GEMM tables read GPT-2's layers: another model without --ab, --pdl or --head is refused before any run."""
    monkeypatch.setattr("sys.argv", ["lean_probe", "--model", "llama-110m"])
    with pytest.raises(SystemExit):
        main()
    assert "--model llama-110m: the GEMM tables" in capsys.readouterr().err
