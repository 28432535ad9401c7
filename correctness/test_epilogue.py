"""epilogue.py: a GEMM that sums its own slabs equals x @ w plus its epilogue, writes its output's norm
statistics, and leaves its tickets zeroed; the norm it folds into the next GEMM's prologue equals LayerNorm's or
LlamaRMSNorm's (CUDA, or Triton's interpreter); bad arguments named, anywhere."""

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from correctness import lean_steps
from generators import epilogue, flash_decode, head_argmax, skinny
from generators.lean import LeanModel, hopper
from generators.models import build

SHAPES = [(1, 768, 2304), (32, 3072, 768), (5, 100, 70)]  # GPT-2 small's, and a ragged one


def _gelu_tanh(t: torch.Tensor) -> torch.Tensor:
    """transformers' NewGELUActivation (GPT-2's "gelu_new"), in float64."""
    return 0.5 * t * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (t + 0.044715 * t.pow(3))))


def _inputs(device: torch.device, m: int, k: int, n: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    return (torch.randn(m, k, device=device), torch.randn(k, n, device=device) / math.sqrt(k),
            torch.randn(n, device=device), torch.randn(m, n, device=device))


def _row_stats(stats: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1 / std per row from the kernel's per-block (sum, squared deviations, columns), in float64."""
    s, m2, n = stats.double().unbind(-1)
    mean = s.sum(0) / n.sum(0)
    var = (m2 + n * (s / n - mean) ** 2).sum(0) / n.sum(0)
    return mean, (var + eps).rsqrt()


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("epilogue_", ["residual", "gelu", "bias"])
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_linear_is_matmul_and_epilogue(device: torch.device, m: int, k: int, n: int, epilogue_: str) -> None:
    x, w, bias, residual = _inputs(device, m, k, n)
    ticket = epilogue.tickets(device)
    y, stats = epilogue.linear(x, w, bias, ticket, residual=residual if epilogue_ == "residual" else None,
                               gelu=epilogue_ == "gelu", fp32="ieee", pdl=hopper(device))
    want = x.double() @ w.double() + bias.double()
    want = {"residual": want + residual.double(), "gelu": _gelu_tanh(want), "bias": want}[epilogue_]
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
    mean, rstd = _row_stats(stats, 1e-5)
    torch.testing.assert_close(mean, y.double().mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rstd, (y.double().var(1, unbiased=False) + 1e-5).rsqrt(), rtol=1e-5, atol=1e-6)
    assert not ticket.any()  # every column block's counter back at zero, for the next GEMM and the next replay
    again, _ = epilogue.linear(x, w, bias, ticket, residual=residual if epilogue_ == "residual" else None,
                               gelu=epilogue_ == "gelu", fp32="ieee", pdl=hopper(device))
    assert torch.equal(again, y)  # the slabs summed in one order, whichever program came last


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 768, 2304), (32, 768, 3072), (3, 70, 100)])
def test_norm_in_the_prologue_is_layer_norm(device: torch.device, m: int, k: int, n: int,
                                            dtype: torch.dtype) -> None:
    """The statistics one GEMM writes of its output let the next normalise it as F.layer_norm does, then multiply,
    in both kernels: epilogue.linear's and skinny.partials'."""
    if dtype == torch.bfloat16 and device.type != "cuda":
        pytest.skip("Triton 3.6's interpreter multiplies bf16 tiles wrongly (tl.dot: ~1e11 off at 3 rows)")
    h, w1, _, _ = _inputs(device, m, k, k)
    _, w2, bias2, _ = _inputs(device, m, k, n)
    g, b = torch.randn(k, device=device).to(dtype), torch.randn(k, device=device).to(dtype)
    w2, bias2 = w2.to(dtype), bias2.to(dtype)
    ticket = epilogue.tickets(device)
    x, stats = epilogue.linear(h.to(dtype), w1.to(dtype), None, ticket, residual=h.to(dtype), fp32="ieee")
    normed = torch.nn.functional.layer_norm(x.float(), (k,), g.float(), b.float(), 1e-5).to(dtype)
    want = normed.double() @ w2.double()
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    got, _ = epilogue.linear(x, w2, bias2, ticket, norm=(stats, g, b, 1e-5), fp32="ieee", pdl=hopper(device))
    torch.testing.assert_close(got.double(), want + bias2.double(), **tol)
    parts = skinny.partials(x, w2, pdl=hopper(device), fp32="ieee", norm=(stats, g, b, 1e-5))
    torch.testing.assert_close(parts.sum(0).double(), want, **tol)
    assert not ticket.any()


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 768, 2304), (32, 768, 3072), (3, 70, 100)])
def test_rms_norm_in_the_prologue_is_the_llama_module(device: torch.device, m: int, k: int, n: int,
                                                      dtype: torch.dtype) -> None:
    """The same statistics let the next GEMM apply an RMSNorm as transformers' LlamaRMSNorm does (the Llama family's
    norms are that module), then multiply, in both kernels; a row's mean is far from 0, as the variance alone
    would not do."""
    if dtype == torch.bfloat16 and device.type != "cuda":
        pytest.skip("Triton 3.6's interpreter multiplies bf16 tiles wrongly (tl.dot: ~1e11 off at 3 rows)")
    h, w1, _, _ = _inputs(device, m, k, k)
    _, w2, _, _ = _inputs(device, m, k, n)
    module = LlamaRMSNorm(k, eps=1e-6).to(device=device, dtype=dtype)
    with torch.no_grad():
        module.weight.normal_()
    ticket = epilogue.tickets(device)
    x, stats = epilogue.linear(h.to(dtype), w1.to(dtype), None, ticket, residual=(h + 3).to(dtype), fp32="ieee")
    want = module(x).double() @ w2.to(dtype).double()
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    norm = skinny.Norm(stats, module.weight, None, module.variance_epsilon, rms=True)
    got, _ = epilogue.linear(x, w2.to(dtype), None, ticket, norm=norm, fp32="ieee", pdl=hopper(device))
    torch.testing.assert_close(got.double(), want, **tol)
    parts = skinny.partials(x, w2.to(dtype), pdl=hopper(device), fp32="ieee", norm=norm)
    torch.testing.assert_close(parts.sum(0).double(), want, **tol)
    assert not ticket.any()


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("layout", ["two weights", "one gate_up_proj"])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 256, 704), (32, 768, 2048), (3, 70, 100)])
def test_gated_is_silu_of_gate_times_up(device: torch.device, m: int, k: int, n: int, layout: str) -> None:
    """silu(x @ gate) * (x @ up) in one kernel, against float64: Llama's gate_proj and up_proj, or Phi-3's one
    gate_up_proj read as its two halves (strided views of one nn.Linear weight)."""
    x, gate, _, _ = _inputs(device, m, k, n)
    if layout == "two weights":  # nn.Linear's [out, in] weights, read transposed as lean.py reads them
        gate, up = (torch.randn(n, k, device=device) / math.sqrt(k)).t(), (torch.randn(n, k, device=device)).t()
    else:
        gate, up = (torch.randn(2 * n, k, device=device) / math.sqrt(k)).t().chunk(2, dim=1)
    ticket = epilogue.tickets(device)
    y, _ = epilogue.linear(x, gate, None, ticket, up=up, fp32="ieee", pdl=hopper(device))
    want = torch.nn.functional.silu(x.double() @ gate.double()) * (x.double() @ up.double())
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
    assert not ticket.any()


def test_gelu_and_residual_together_are_refused(device: torch.device) -> None:
    x, w, bias, residual = _inputs(device, 2, 64, 32)
    with pytest.raises(ValueError, match="gelu, residual and up"):
        epilogue.linear(x, w, bias, epilogue.tickets(device), residual=residual, gelu=True)


@pytest.mark.parametrize(("argument", "message"), [
    ("w", r"x \[M, K\] and w \[K, N\]"), ("bias", r"bias must be \[32\]"), ("residual", r"residual must be \[2, 32\]"),
    ("ticket", "ticket must be"), ("norm", r"statistics must be \[blocks, 2, 3\]"),
    ("rms", "bias must be given for a LayerNorm and None for an RMSNorm"), ("up", r"up must be a weight like w"),
    ("bias_with_up", "without up")])
def test_bad_arguments_are_named(device: torch.device, argument: str, message: str) -> None:
    """Checked before any kernel runs: the argument named, what it must be."""
    x, w, bias, residual = _inputs(device, 2, 64, 32)
    stats = torch.zeros(1, 2, 3, device=device)
    kwargs = {"w": w, "bias": bias, "ticket": epilogue.tickets(device), "residual": residual, "norm": None}
    if argument.startswith(("up", "bias_with")):
        kwargs |= {"residual": None, "bias": bias if argument == "bias_with_up" else None,
                   "up": w[:, :5] if argument == "up" else w.clone()}
    else:
        kwargs[argument.replace("rms", "norm")] = {
            "w": w.t(), "bias": bias[:5], "residual": residual.double(), "ticket": torch.zeros(8, device=device),
            "norm": (torch.zeros(4, 3, 3, device=device), bias, bias, 1e-5),
            "rms": skinny.Norm(stats, bias, bias, 1e-5, rms=True)}[argument]
    with pytest.raises(ValueError, match=message):
        epilogue.linear(x, kwargs.pop("w"), kwargs.pop("bias"), kwargs.pop("ticket"), **kwargs)


@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize(("name", "compiled"), [("tiny-gpt2", False), ("tiny-gpt2", True), ("tiny-llama", True),
                                                ("tiny-mistral", False), ("tiny-qwen2", False),
                                                ("tiny-qwen3", False), ("tiny-phi3", True)])
def test_lean_step_with_fused_epilogues_is_the_unfused_step(device: torch.device, name: str, compiled: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens and caches of a few decode steps with fused_epilogues on and off (GPT-2 with fused_qkv on; each of
    the Llama family's five), eager or fullgraph-compiled, in full fp32; caches to fp32 rounding: the norms'
    statistics are summed in another order."""
    if device.type != "cuda":  # the interpreter runs the kernels on CPU
        monkeypatch.setattr(flash_decode, "available", lambda q: True)
        monkeypatch.setattr(skinny, "available", lambda x, max_rows=32, min_rows=1: min_rows <= x.shape[0] <= max_rows)
        monkeypatch.setattr(head_argmax, "available", lambda h: h.shape[0] <= 32)  # the final norm folds into it
    model = build(name, device=device)  # (sets TF32 on for fp32 matmuls)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # both paths in skinny.py's fp32
    torch.manual_seed(0)
    with torch.no_grad():  # norms drawn apart from their init (ones, zeros), so one folded in the wrong place shows
        for key, param in model.named_parameters():
            if "norm" in key or ".ln_" in key:
                param.add_(torch.randn_like(param), alpha=0.1)
    ids = torch.randint(0, model.config.vocab_size, (3, 4), device=device)

    def run(fused: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        lean = LeanModel(model, fused_epilogues=fused)
        assert lean.fused_epilogues == fused
        out = lean_steps.run(lean, ids, 5, compiled)
        assert not (fused and lean.tickets.any())  # left zeroed; the unfused step has none
        return out

    (tokens, caches), (want_tokens, want_caches) = run(True), run(False)
    assert torch.equal(tokens, want_tokens)
    for got, want in zip(caches, want_caches, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.usefixtures("needs_triton")
@pytest.mark.parametrize("mlp", ["gelu", "gated"])
def test_replayed_graph_finds_its_tickets_zeroed(device: torch.device, mlp: str) -> None:
    """A CUDA graph of three chained GEMMs on one ticket buffer (the step's c_proj, c_fc, c_proj; or o_proj, gate and
    up, down_proj), replayed: each replay the first's output, as the GEMMs leave every counter at zero for the
    next."""
    from generators.execution import capture  # noqa: PLC0415

    x, w, bias, _ = _inputs(device, 32, 768, 768)
    _, w_up, bias_up, _ = _inputs(device, 32, 768, 3072)
    _, w_down, bias_down, _ = _inputs(device, 32, 3072, 768)
    w_gate = w_up.flip(0)  # another weight of up's shape and strides
    ticket, outputs = epilogue.tickets(device), []
    g, b = torch.ones(768, device=device), torch.zeros(768, device=device)

    def step() -> None:
        h, stats = epilogue.linear(x, w, bias, ticket, residual=x, pdl=hopper(device))
        if mlp == "gelu":
            f, _ = epilogue.linear(h, w_up, bias_up, ticket, gelu=True, norm=skinny.Norm(stats, g, b, 1e-5),
                                   pdl=hopper(device))
        else:
            f, _ = epilogue.linear(h, w_gate, None, ticket, up=w_up, pdl=hopper(device),
                                   norm=skinny.Norm(stats, g, None, 1e-5, rms=True))
        outputs.append(epilogue.linear(f, w_down, bias_down, ticket, residual=h, pdl=hopper(device))[0])

    graph = capture(step)
    replayed = outputs[-1]  # the graph's output buffer, rewritten by every replay
    for _ in range(3):
        replayed.zero_()
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(replayed, outputs[0], rtol=0, atol=0)
    assert not ticket.any()
