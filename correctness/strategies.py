"""Hypothesis strategies for the differential tests: a model, a prompt batch, a length and an EOS that bites.

An Example is drawn in two stages: first the model and the prompt batch, then, after running the naive oracle
without EOS on it, an `eos_token_id` chosen from what the model actually emits, so that early stops really
happen (one row stopping while others run on, every row stopping, a stop on the very first step).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from generators import GENERATORS, Generator
from generators.models import build

FAMILIES = ("tiny-gpt2", "tiny-llama")  # every generator is tested on these
# The lean step implements each Llama-family model apart (lean.py): its tests draw from all of them. The others
# run the model's own forward, so two families suffice there (and keep CI's time).
LEAN_FAMILIES = (*FAMILIES, "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-phi3")
SEEDS = (0, 1, 2, 3)  # weight seeds: a small set, so every model is built once per process
VOCAB = 512  # every tiny model
MAX_BATCH, MAX_PROMPT_LEN, MAX_NEW_TOKENS = 8, 16, 48  # for performance: a CPU example takes ~0.1 s

# How the EOS is chosen, simplest first (Hypothesis shrinks towards the front):
#   none: no EOS; unproduced: an EOS no row emits; one_row: a token one row emits and some other row does not;
#   every_row: a token every row emits (rows stop at different steps); first_step: every row stops at step 0.
EOS_MODES = ("none", "unproduced", "one_row", "every_row", "first_step")

# (batch, prompt_len, max_new_tokens) for compiled and CUDA-graph variants on a GPU: dynamo compiles once per
# shape (~10 s on a GPU), so these draw from three shapes instead of the full ranges.
COMPILED_SHAPES = ((1, 4, 40), (3, 9, 24), (8, 16, 48))

_MODELS: dict[tuple, torch.nn.Module] = {}


def get_model(family: str, seed: int, dtype: torch.dtype, device: torch.device | str) -> torch.nn.Module:
    """The model for (family, seed, dtype, device), built once per process."""
    key = (family, seed, dtype, str(torch.device(device)))
    if key not in _MODELS:
        _MODELS[key] = build(family, dtype=dtype, device=device, seed=seed)
    return _MODELS[key]


@dataclass(frozen=True)
class Example:
    family: str
    seed: int
    dtype: torch.dtype
    device: str
    prompts: tuple[tuple[int, ...], ...]  # [B][P] token ids
    max_new_tokens: int
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    eos_mode: str = "none"

    @property
    def model(self) -> torch.nn.Module:
        return get_model(self.family, self.seed, self.dtype, self.device)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.tensor(self.prompts, dtype=torch.long, device=self.device)

    @property
    def prompt_len(self) -> int:
        return len(self.prompts[0])

    def run(self, generator: str | Generator) -> torch.Tensor:
        """Generate with a registered generator (by name) or any Generator."""
        g = generator if isinstance(generator, Generator) else GENERATORS[generator]
        return g(self.model, self.input_ids, self.max_new_tokens, eos_token_id=self.eos_token_id,
                 pad_token_id=self.pad_token_id)

    def with_eos(self, mode: str, eos: int | None, prompts: tuple | None = None) -> Example:
        return Example(self.family, self.seed, self.dtype, self.device, prompts or self.prompts,
                       self.max_new_tokens, eos, self.pad_token_id, mode)


_ORACLE_OUTPUTS: OrderedDict[tuple[str, Example], torch.Tensor] = OrderedDict()


def oracle(name: str, example: Example) -> torch.Tensor:
    """`example.run(name)` for an oracle (naive, hf_generate), cached: every variant's test draws the same
    examples, so each oracle runs once per example, not once per variant."""
    key = (name, example)
    if key not in _ORACLE_OUTPUTS:
        _ORACLE_OUTPUTS[key] = example.run(name)
        while len(_ORACLE_OUTPUTS) > 1024:
            _ORACLE_OUTPUTS.popitem(last=False)
    return _ORACLE_OUTPUTS[key]


def dtypes_for(device: torch.device | str) -> tuple[torch.dtype, ...]:
    """Both dtypes the main job offers, on every device: bf16 parts from float64 at near-ties on CPU too (0.8-2.5%
    of positions), and ties.py's TAU and ration for (cpu, bfloat16) judge it there."""
    return (torch.float32, torch.bfloat16)


@st.composite
def prompt_batches(draw: st.DrawFn, batch: int, prompt_len: int) -> tuple[tuple[int, ...], ...]:
    """`batch` prompts drawn from a pool of 1..batch distinct ones, so identical rows occur too."""
    prompt = st.tuples(*[st.integers(0, VOCAB - 1)] * prompt_len)
    pool = draw(st.lists(prompt, min_size=1, max_size=batch))
    rows = draw(st.lists(st.integers(0, len(pool) - 1), min_size=batch, max_size=batch))
    return tuple(pool[i] for i in rows)


def _unique(tokens: list[int]) -> list[int]:
    return list(dict.fromkeys(tokens))  # in order of first appearance: stable for shrinking


@st.composite
def examples(draw: st.DrawFn, device: torch.device | str, shapes: tuple[tuple[int, int, int], ...] | None = None,
             families: tuple[str, ...] = FAMILIES) -> Example:
    """An Example on `device` of one of `families`; with `shapes`, (batch, prompt_len, max_new_tokens) is one of
    them."""
    family = draw(st.sampled_from(families))
    seed = draw(st.sampled_from(SEEDS))
    dtype = draw(st.sampled_from(dtypes_for(device)))
    if shapes is not None:
        batch, prompt_len, max_new_tokens = draw(st.sampled_from(shapes))
    else:
        batch = draw(st.integers(1, MAX_BATCH))
        prompt_len = draw(st.integers(1, MAX_PROMPT_LEN))
        max_new_tokens = draw(st.integers(1, MAX_NEW_TOKENS))
    prompts = draw(prompt_batches(batch, prompt_len))
    pad = draw(st.none() | st.integers(0, VOCAB - 1))
    free = Example(family, seed, dtype, str(torch.device(device)), prompts, max_new_tokens, None, pad)
    mode = draw(st.sampled_from(EOS_MODES))
    if mode == "none":
        return free

    emitted = oracle("naive", free)[:, prompt_len:].tolist()  # [B][max_new_tokens], no early stop
    in_every_row = set.intersection(*map(set, emitted))
    if mode == "unproduced":
        unused = [t for t in range(VOCAB) if all(t not in row for row in emitted)]
        return free.with_eos(mode, draw(st.sampled_from(unused)))
    if mode == "one_row":
        row = _unique(emitted[draw(st.integers(0, batch - 1))])
        not_everywhere = [t for t in row if t not in in_every_row] or row  # all of row when batch == 1
        return free.with_eos(mode, draw(st.sampled_from(not_everywhere)))
    if mode == "every_row" and in_every_row:
        return free.with_eos(mode, draw(st.sampled_from([t for t in _unique(emitted[0]) if t in in_every_row])))
    # first_step, or every_row when no token is common to all rows: make every row row 0's prompt.
    same = (prompts[0],) * batch
    eos = emitted[0][0] if mode == "first_step" else draw(st.sampled_from(_unique(emitted[0])))
    return free.with_eos(mode, eos, same)
