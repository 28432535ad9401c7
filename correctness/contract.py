"""The generator contract (generators/__init__.py), checked on one output without any other generator."""

from __future__ import annotations

import torch

from generators import stops


def assert_contract(out: torch.Tensor, input_ids: torch.Tensor, max_new_tokens: int, eos: int | None,
                    pad: int | None, label: str) -> None:
    """`out` is [B, P + n] int64 holding the prompt; n is the first step at which every row has produced `eos`
    (that step included), else max_new_tokens; after its EOS a row holds `pad` (default: eos)."""
    batch, prompt_len = input_ids.shape
    shape = tuple(out.shape)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.long, f"{label}: returned {out!r}"
    assert out.dim() == 2 and shape[0] == batch and prompt_len < shape[1] <= prompt_len + max_new_tokens, (
        f"{label}: shape {shape} for input {tuple(input_ids.shape)} and max_new_tokens={max_new_tokens}")
    out, input_ids = out.cpu(), input_ids.cpu()
    assert torch.equal(out[:, :prompt_len], input_ids), f"{label}: the prompt changed:\n{out[:, :prompt_len]}"
    n = shape[1] - prompt_len
    if eos is None:
        assert n == max_new_tokens, f"{label}: {n} new tokens without an EOS, expected {max_new_tokens}"
        return
    pad = eos if pad is None else pad
    generated = out[:, prompt_len:]
    first_eos = []
    for row, tokens in enumerate(generated.tolist()):
        step = tokens.index(eos) if eos in tokens else None
        first_eos.append(step)
        if step is not None:
            assert all(t == pad for t in tokens[step + 1 :]), (
                f"{label}: row {row} produced EOS {eos} at step {step}, then {tokens[step + 1 :]} instead of "
                f"padding {pad}\n  row: {tokens}")
    if None in first_eos:
        assert n == max_new_tokens, (
            f"{label}: stopped after {n} of {max_new_tokens} steps, but rows "
            f"{[r for r, s in enumerate(first_eos) if s is None]} never produced EOS {eos}\n{generated}")
    else:
        assert n == max(first_eos) + 1, (
            f"{label}: every row had produced EOS {eos} by step {max(first_eos)} (first EOS per row: {first_eos}), "
            f"yet {n} steps came back; expected {max(first_eos) + 1}\n{generated}")


def steps_to_run(stop: type[stops.StopCheck], n: int, max_new_tokens: int) -> int:
    """How many steps the loop runs under stop check `stop` (generators/stops.py) when every row has produced
    EOS by step n - 1 (pass n = max_new_tokens when some row never does): the checks that look late run on."""
    if issubclass(stop, stops.EveryK):
        return min(-(-n // stop.k) * stop.k, max_new_tokens)
    late = {stops.EveryStep: n, stops.PingPong: n + 1, stops.Deferred: n + 1, stops.Never: max_new_tokens}
    return min(late[stop], max_new_tokens)
