"""The decode loop's state on the device, and the one thing every step ends with: appending a token.

A step appends one token column to a preallocated [B, P + N] buffer and updates the stop state (`finished`,
`stop`) on the device, so the stop check (stops.py) decides when, if ever, the host waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Decoding:
    """The decode loop's device state. Shapes and addresses never change during a generation."""

    tokens: torch.Tensor  # [B, P + N] int64: prompt, then generated tokens; -1 where nothing was written
    finished: torch.Tensor  # [B] bool: the row has produced EOS
    stop: torch.Tensor  # [] bool: every row has produced EOS
    col: torch.Tensor  # [1] int64: the column the next token goes to (P + step)
    # [1] int64: col - 1, the position of the last written token, which a step reads. Kept as a buffer because
    # inductor recomputes `col - 1` into a fresh one for each custom op that reads it: 12 kernels a GPT-2 lean step
    # (b=32 on an H200: 160 -> 148 kernels, 561 -> 543 us a step; docs/history/2026-11-lean-step.md).
    last: torch.Tensor
    eos: torch.Tensor | None  # [] int64, or None for no early stop
    pad: torch.Tensor  # [] int64: what a finished row emits
    prompt_len: int

    @classmethod
    def allocate(cls, batch: int, prompt_len: int, max_new_tokens: int, eos: int | None, pad: int | None,
                 device: torch.device) -> Decoding:
        def scalar(v: int) -> torch.Tensor:
            return torch.tensor(v, dtype=torch.long, device=device)

        return cls(
            tokens=torch.empty(batch, prompt_len + max_new_tokens, dtype=torch.long, device=device),
            finished=torch.empty(batch, dtype=torch.bool, device=device),
            stop=torch.empty((), dtype=torch.bool, device=device),
            col=torch.empty(1, dtype=torch.long, device=device),
            last=torch.empty(1, dtype=torch.long, device=device),
            eos=None if eos is None else scalar(eos),
            pad=scalar(0 if pad is None else pad),
            prompt_len=prompt_len,
        )

    def reset(self, input_ids: torch.Tensor) -> None:
        # In place: a captured CUDA graph holds these addresses.
        self.tokens.fill_(-1)
        self.tokens[:, : self.prompt_len].copy_(input_ids)
        self.finished.zero_()
        self.stop.zero_()
        self.col.fill_(self.prompt_len)
        self.last.fill_(self.prompt_len - 1)


def append_token(d: Decoding, logits: torch.Tensor) -> None:
    """Greedy pick from the last position's logits [B, V], padding for finished rows, stop-state update."""
    append_pick(d, logits.argmax(dim=-1))


def append_pick(d: Decoding, next_token: torch.Tensor) -> None:
    """append_token for a greedy pick [B] made already (the lean step's head_argmax.py)."""
    if d.eos is not None:
        next_token = torch.where(d.finished, d.pad, next_token)
        d.finished |= next_token == d.eos
        d.stop.copy_(d.finished.all())
    d.tokens.index_copy_(1, d.col, next_token[:, None])
    d.last.copy_(d.col)
    d.col += 1
