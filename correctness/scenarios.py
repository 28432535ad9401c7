"""Fixed (input_ids, eos, pad) cases for the plain unit tests, with the EOS read off the model's own output.

All cases share one shape ([3, 5] prompts, 12 new tokens), so a compiled variant compiles it once per process.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from correctness.strategies import VOCAB, get_model
from generators import generate

BATCH, PROMPT_LEN, MAX_NEW_TOKENS = 3, 5, 12


class Case(NamedTuple):
    input_ids: torch.Tensor
    eos: int | None
    pad: int | None


def prompts(device: torch.device | str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(0, VOCAB, (BATCH, PROMPT_LEN), generator=gen).to(device)


def contract_model(device: torch.device | str, family: str = "tiny-gpt2") -> torch.nn.Module:
    return get_model(family, 0, torch.float32, device)


def emitted(model: torch.nn.Module, input_ids: torch.Tensor) -> list[list[int]]:
    """The naive loop's new tokens without EOS: [B][MAX_NEW_TOKENS]."""
    return generate("naive", model, input_ids, MAX_NEW_TOKENS)[:, PROMPT_LEN:].tolist()


def case(name: str, model: torch.nn.Module) -> Case:
    """
    no_eos: eos None; one_row: row 0's EOS, a token no other row emits (they run on); one_row_pad: the same
    with a pad token of its own; every_row: rows stop at different steps (identical rows if no token is common);
    first_step: every row stops at step 0; late_step: every row stops as late as row 0's output allows.
    """
    ids = prompts(next(model.parameters()).device)
    out = emitted(model, ids)
    if name == "no_eos":
        return Case(ids, None, None)
    if name in ("one_row", "one_row_pad"):
        eos = next((t for t in out[0] if all(t not in row for row in out[1:])), None)
        if eos is None:
            raise AssertionError(f"no token of row 0 is missing from the other rows: {out}")
        return Case(ids, eos, (eos + 1) % VOCAB if name == "one_row_pad" else None)
    if name == "every_row":
        common = [t for t in out[0] if all(t in row for row in out[1:])]
        if common:
            return Case(ids, common[0], None)
        return Case(ids[:1].expand(BATCH, -1).contiguous(), out[0][MAX_NEW_TOKENS // 2], None)
    same = ids[:1].expand(BATCH, -1).contiguous()
    if name == "first_step":
        return Case(same, out[0][0], None)
    if name == "late_step":  # the latest step whose token row 0 had not emitted before
        return Case(same, next(t for s, t in reversed(list(enumerate(out[0]))) if out[0].index(t) == s), None)
    raise ValueError(f"unknown case {name!r}")


CASES = ("no_eos", "one_row", "one_row_pad", "every_row", "first_step", "late_step")
