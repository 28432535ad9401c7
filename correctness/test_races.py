"""Race shaking on CUDA: delays injected at Hypothesis-chosen points must not change a single token.

The stop policies that overlap the host with the GPU order their work with streams and events (stops.py).
A missing order hides on a fast GPU, so these tests stretch chosen points of the GPU timeline with
`torch.cuda._sleep` (a spin kernel) and check tokens, the contract and the number of steps run.

Where a delay goes matters. A delay at the very start of a decode step does NOT expose a missing
`wait_stream` between two decode steps: the delayed step is simply overtaken by the next one, which reads the
same device state and does its work, and the two swap roles with the same result (seen on an H200: removing
PingPong's wait_stream left boundary-only delays passing). What exposes it:
- mid_step: a sleep inside the step, after the KV-cache update and before the token is appended (a forward
  pre-hook on the output embedding). The next step, unordered, then reads the same column and position as the
  sleeping one, and the output corrupts. Hooks cannot go into a compiled or captured step, so this runs on eager
  steps under the same stop policies (the policy is the unit under test; the registry's variants only change
  how the step executes).
- at_reset: a sleep on the caller's stream just before the decode state is reset: step 0 on another stream must
  wait for the caller (PingPong's wait_stream(caller) at step 0).
- at_step_start for step 0: the prefill and a decode step are different functions, so there a swap does corrupt.
- before_flag_copy: a sleep before the stop flag's copy to the host: a flag read without its event wait sees a
  stale False and the loop runs on, which the step count catches (tokens survive it, being trimmed).
The delays come from test-only subclasses: of the variant's stop policy, in a copy of the variant
(dataclasses.replace), and of generators.loop.Decoding.reset, put in with pytest's MonkeyPatch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from correctness.contract import assert_contract, steps_to_run
from correctness.strategies import COMPILED_SHAPES, Example, examples, oracle
from correctness.ties import TieLedger, assert_same_tokens
from generators import GENERATORS, Generator, loop, stops

pytestmark = pytest.mark.gpu

EAGER = [
    Generator("eager_pingpong", "eager static-cache steps, the two-stream ping-pong stop check", stop=stops.PingPong),
    Generator("eager_deferred", "eager static-cache steps, the stop flag read one step late", stop=stops.Deferred),
]
# The registry's variants whose stop checks overlap host and GPU (cuda_graph_every_8: `.item()` every 8 steps).
REGISTERED = [GENERATORS[name] for name in ("pipelined", "cuda_graph_deferred", "cuda_graph_every_8")]
CYCLES = (10**5, 10**6, 10**7, 5 * 10**7)  # ~0.05 ms to ~25 ms at GPU clocks
# ~25 ms: far longer than the host takes to queue the rest of an eager step and the start of the next (~1 ms);
# a pause shorter than that (0.5 us-0.5 ms, tried on an H200) ends before the next step is even queued.
MID_STEP_CYCLES = 5 * 10**7


@dataclass
class Delays:
    at_reset: int | None = None  # cycles, on the caller's stream before the decode state is reset
    at_step_start: dict[int, int] = field(default_factory=dict)  # step -> cycles, on the step's stream
    mid_step: dict[int, int] = field(default_factory=dict)  # step -> cycles, before the step's output layer
    before_flag_copy: dict[int, int] = field(default_factory=dict)  # step -> cycles, on the flag copy's stream


@st.composite
def step_cycles(draw: st.DrawFn, max_new_tokens: int, cycles: st.SearchStrategy[int], always_first: bool = False
                ) -> dict[int, int]:
    steps = draw(st.sets(st.integers(0, max_new_tokens - 1), max_size=3))
    if always_first or draw(st.booleans()):
        steps.add(0)  # the prefill: it always runs, and it is the one step that differs from the next
    return {step: draw(cycles) for step in sorted(steps)}


@st.composite
def delay_plans(draw: st.DrawFn, max_new_tokens: int, mid_step: bool) -> Delays:
    return Delays(
        at_reset=draw(st.none() | st.sampled_from(CYCLES)),
        at_step_start=draw(step_cycles(max_new_tokens, st.sampled_from(CYCLES))),
        # Every eager example pauses at least the prefill mid-step, so every one of them can expose the race.
        mid_step=draw(step_cycles(max_new_tokens, st.just(MID_STEP_CYCLES), always_first=True)) if mid_step else {},
        before_flag_copy=draw(step_cycles(max_new_tokens, st.sampled_from(CYCLES))),
    )


def delayed(policy: type[stops.StopCheck], delays: Delays, current: dict, calls: list[int]) -> type:
    """`policy` with the step-start and flag-copy delays; keeps the running step in `current` (for the mid-step
    hook) and records in `calls` the steps it is asked about."""

    class Delayed(policy):
        def step_stream(self, step: int) -> contextlib.AbstractContextManager:
            current["step"] = step
            return self._sleep_inside(super().step_stream(step), delays.at_step_start.get(step))

        def should_stop(self, step: int) -> bool:
            calls.append(step)
            if step in delays.before_flag_copy:
                # PingPong copies the flag on the step's stream, the other policies on the current one.
                streams = getattr(self, "streams", None)
                with torch.cuda.stream(streams[step % 2]) if streams else contextlib.nullcontext():
                    torch.cuda._sleep(delays.before_flag_copy[step])
            return super().should_stop(step)

        @staticmethod
        @contextlib.contextmanager
        def _sleep_inside(ctx: contextlib.AbstractContextManager, cycles: int | None) -> Iterator[None]:
            with ctx:
                if cycles:
                    torch.cuda._sleep(cycles)  # on the stream the step is about to be queued on
                yield

    return Delayed


@contextlib.contextmanager
def injected(generator: Generator, model: torch.nn.Module, delays: Delays, calls: list[int]) -> Iterator[Generator]:
    """`generator` with the delays: its stop policy delayed, Decoding.reset and the output layer too."""
    current: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        delayed_generator = dataclasses.replace(generator, stop=delayed(generator.stop, delays, current, calls))
        if delays.at_reset:
            reset = loop.Decoding.reset

            def slow_reset(d: loop.Decoding, input_ids: torch.Tensor) -> None:
                torch.cuda._sleep(delays.at_reset)
                reset(d, input_ids)

            mp.setattr(loop.Decoding, "reset", slow_reset)

        def mid_step(module: torch.nn.Module, args: tuple) -> None:
            if current.get("step") in delays.mid_step:
                torch.cuda._sleep(delays.mid_step[current["step"]])

        hook = model.get_output_embeddings().register_forward_pre_hook(mid_step) if delays.mid_step else None
        try:
            yield delayed_generator
        finally:
            if hook is not None:
                hook.remove()


def check_under_delays(generator: Generator, example: Example, delays: Delays, ledger: TieLedger) -> None:
    undelayed = example.run(generator)
    calls: list[int] = []
    with injected(generator, example.model, delays, calls) as delayed_generator:
        out = example.run(delayed_generator)
        torch.cuda.synchronize()
    ids, eos, pad, max_new = example.input_ids, example.eos_token_id, example.pad_token_id, example.max_new_tokens
    assert_contract(out, ids, max_new, eos, pad, f"{generator.name} with delays")
    n = out.shape[1] - example.prompt_len
    every_row_done = all(eos in row for row in out[:, example.prompt_len :].tolist())
    expected_steps = steps_to_run(generator.stop, n if every_row_done else max_new, max_new)
    assert len(calls) == expected_steps, f"{generator.name}: ran {len(calls)} steps, expected {expected_steps}"
    # cuBLAS does not promise bitwise equal results across streams (the ping-pong uses two), so the tie rule
    # applies to the undelayed run too; a race shows as a divergence far from any tie.
    for reference, what in ((undelayed, "without delays"), (oracle("naive", example), "naive")):
        assert_same_tokens(reference, out, model=example.model, prompt_len=example.prompt_len, eos=eos, pad=pad,
                           label=f"{generator.name} with delays vs {what}", ledger=ledger)


@pytest.mark.parametrize("generator", EAGER, ids=lambda g: g.name)
@settings(max_examples=12)  # each example: 2 generations with up to ~0.3 s of sleeps; no compiles
@given(data=st.data())
def test_eager_steps_under_delays(generator: Generator, device: torch.device, tie_ledger: TieLedger,
                                  data: st.DataObject) -> None:
    example = data.draw(examples(device), label="example")
    assume(example.eos_token_id is not None)  # without an EOS the loop uses no stop policy at all
    delays = data.draw(delay_plans(example.max_new_tokens, mid_step=True), label="delays")
    check_under_delays(generator, example, delays, tie_ledger)


@pytest.mark.parametrize("generator", REGISTERED, ids=lambda g: g.name)
@settings(max_examples=12)  # compiled steps: the 3 fixed shapes; no mid-step delays (no hooks in a graph)
@given(data=st.data())
def test_registered_variants_under_delays(generator: Generator, device: torch.device, tie_ledger: TieLedger,
                                          data: st.DataObject) -> None:
    example = data.draw(examples(device, COMPILED_SHAPES), label="example")
    assume(example.eos_token_id is not None)
    delays = data.draw(delay_plans(example.max_new_tokens, mid_step=False), label="delays")
    check_under_delays(generator, example, delays, tie_ledger)
