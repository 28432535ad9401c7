"""The one decode loop, and the four things a variant chooses: forward (HF's or lean.py's), cache, execution
and stop check.

A step appends one token column to a preallocated [B, P + N] buffer. Cached variants run a prefill (the
prompt; eager, except lean_graph's, which replays a CUDA graph) as step 0 and then one-token steps
(`dynamic_step`, `decode_one_token`, `lean_decode_one_token`); the naive loop reruns the whole sequence.
Every step also keeps the stop state on the device (`finished`, `stop`), so the policy in stops.py decides
when, if ever, the host waits for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch

from . import compat, profiling
from .lean import LeanModel
from .stops import STOP_CHECKS, StopCheck


@dataclass
class Decoding:
    """The decode loop's device state. Shapes and addresses never change during a generation."""

    tokens: torch.Tensor  # [B, P + N] int64: prompt, then generated tokens; -1 where nothing was written
    finished: torch.Tensor  # [B] bool: the row has produced EOS
    stop: torch.Tensor  # [] bool: every row has produced EOS
    col: torch.Tensor  # [1] int64: the column the next token goes to (P + step)
    # [1] int64: col - 1, the position of the last written token, which a step reads. Kept as a buffer because
    # inductor recomputes `col - 1` into a fresh one for each custom op that reads it: 12 kernels a GPT-2 lean step
    # (b=32 on an H200: 160 -> 148 kernels, 561 -> 543 us a step; perf/RESULTS.md, seventh session).
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
    next_token = logits.argmax(dim=-1)  # [B]
    if d.eos is not None:
        next_token = torch.where(d.finished, d.pad, next_token)
        d.finished |= next_token == d.eos
        d.stop.copy_(d.finished.all())
    d.tokens.index_copy_(1, d.col, next_token[:, None])
    d.last.copy_(d.col)
    d.col += 1


# --- Steps, one per cache policy -------------------------------------------------------------------------

def naive_step(model: torch.nn.Module, d: Decoding, step: int) -> None:
    # The textbook loop: run the whole sequence so far, keep the last position. O(N^2) over a generation.
    seq = d.tokens[:, : d.prompt_len + step]
    append_token(d, model(seq, use_cache=False).logits[:, -1])


def dynamic_prefill(model: torch.nn.Module, d: Decoding) -> object:
    out = model(d.tokens[:, : d.prompt_len], use_cache=True, logits_to_keep=1)
    append_token(d, out.logits[:, -1])
    return compat.returned_cache(out)


def dynamic_step(model: torch.nn.Module, kv_cache: object, d: Decoding, step: int) -> None:
    last = d.tokens[:, d.prompt_len + step - 1 : d.prompt_len + step]  # [B, 1]
    out = model(last, use_cache=True, logits_to_keep=1, **compat.cache_kwargs(model, kv_cache))
    append_token(d, out.logits[:, -1])


def static_prefill(model: torch.nn.Module, kv_cache: object, d: Decoding) -> None:
    positions = torch.arange(d.prompt_len, device=d.tokens.device)[None]  # [1, P]
    out = model(d.tokens[:, : d.prompt_len], position_ids=positions, use_cache=True, logits_to_keep=1,
                **compat.cache_kwargs(model, kv_cache))
    append_token(d, out.logits[:, -1])


def decode_one_token(model: torch.nn.Module, cache_kwargs: dict, d: Decoding) -> None:
    """One static-cache step with no host values in it: the part that is compiled and captured.

    `cache_kwargs` is compat.cache_kwargs(model, kv_cache), resolved outside so dynamo never traces it.
    """
    pos = d.last  # [1]: the position of the last written token
    token = d.tokens.index_select(1, pos)  # [B, 1]
    out = model(token, position_ids=pos[None], use_cache=True, logits_to_keep=1, **cache_kwargs)
    append_token(d, out.logits[:, -1])


def _compile_step(step: Callable, *, dynamic: bool) -> Callable:
    # fullgraph: a graph break would silently put Python back in the hot loop. The recompile limit: one
    # process compiles a step for many shapes (the main job's and perf's grids, the correctness shapes).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(step, fullgraph=True, dynamic=dynamic)


@cache
def compiled_decode_one_token():
    # One compiled function shared by every compiled variant, so they share dynamo's cache of compiled
    # graphs. dynamic=True: batch and cache length are symbolic, so a model compiles once per process (plus
    # once for batch 1, which dynamo specialises) instead of once per grid point; the step is memory-bound
    # and its matmuls go to cuBLAS either way. CUDA-graph variants still capture one fixed shape.
    return _compile_step(decode_one_token, dynamic=True)


def lean_decode_one_token(lean: LeanModel, caches: list, d: Decoding) -> None:
    """decode_one_token for the lean forward (lean.py): the same step, without Hugging Face's generality."""
    append_token(d, lean(d.tokens.index_select(1, d.last), d.last, caches))


@cache
def compiled_lean_decode_one_token():
    # Static shapes (dynamic=False): the lean step is small enough that specialising every size pays, and it
    # compiles in seconds, so a recompile per grid point is cheap.
    return _compile_step(lean_decode_one_token, dynamic=False)


# --- Sessions: the static cache and state buffers a compiled or captured step is bound to ---------------

class StaticSession:
    """A StaticCache + Decoding for one (model, B, P, N, eos) shape, optionally with a captured CUDA graph.

    Compiled and captured steps are bound to these tensors, so sessions are reused across calls (as
    transformers reuses its static cache) and reset in place.
    """

    def __init__(self, model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                 eos: int | None, pad: int | None, execution: str) -> None:
        batch, prompt_len = input_ids.shape
        self.model = model  # the step below is bound to it anyway
        if execution == "cuda_graph":  # capture() really runs its warm-up steps: buffers must hold them
            max_new_tokens = max(max_new_tokens, CAPTURE_ROOM)
        self.d = Decoding.allocate(batch, prompt_len, max_new_tokens, eos, pad, input_ids.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.step = self._bind_step(execution, batch, prompt_len + max_new_tokens)
        if execution == "cuda_graph":
            self._capture(input_ids)

    def _bind_step(self, execution: str, batch: int, max_len: int) -> Callable[[], None]:
        self.kv_cache = compat.new_static_cache(self.model, max_len)
        step = decode_one_token if execution == "eager" else compiled_decode_one_token()
        cache_kwargs = compat.cache_kwargs(self.model, self.kv_cache)
        return lambda: step(self.model, cache_kwargs, self.d)

    def reset(self, input_ids: torch.Tensor) -> None:
        self.kv_cache.reset()
        self.d.reset(input_ids)

    def prefill(self) -> None:
        static_prefill(self.model, self.kv_cache, self.d)

    def _capture(self, input_ids: torch.Tensor) -> None:
        # Replays advance `col`, the cache fill level and `finished` on device.
        self.reset(input_ids)
        self.prefill()
        self.graph = capture(self.step)
        self.step = self.graph.replay


class LeanSession(StaticSession):
    """The same session over the lean forward (lean.py) and its own per-layer K/V tensors. Under a CUDA graph the
    prefill is captured too: eager, it is a few hundred kernel launches from Python, milliseconds of host time
    against a step's ~0.5-0.8 ms of GPU time: 4-8 ms of a 100-token call on an H200 (perf/RESULTS.md, "The prefill
    in a CUDA graph, c_attn's bias and the step's position")."""

    capture_prefill = True  # False: an eager prefill, as the other sessions run it (perf/lean_probe.py's A/B)
    prefill_graph: torch.cuda.CUDAGraph | None = None

    def _bind_step(self, execution: str, batch: int, max_len: int) -> Callable[[], None]:
        self.lean = LeanModel(self.model)
        self.caches = self.lean.new_cache(batch, max_len)
        step = lean_decode_one_token if execution == "eager" else compiled_lean_decode_one_token()
        return lambda: step(self.lean, self.caches, self.d)

    def reset(self, input_ids: torch.Tensor) -> None:
        for k, v in self.caches:  # as StaticCache.reset: no generation reads another's values
            k.zero_()
            v.zero_()
        self.d.reset(input_ids)

    def prefill(self) -> None:
        if self.prefill_graph is not None:
            self.prefill_graph.replay()
            return
        positions = torch.arange(self.d.prompt_len, device=self.d.tokens.device)
        append_token(self.d, self.lean(self.d.tokens[:, : self.d.prompt_len], positions, self.caches))

    def _capture(self, input_ids: torch.Tensor) -> None:
        super()._capture(input_ids)  # the step's graph, after an eager prefill
        if self.capture_prefill:  # the prompt is read from self.d.tokens, which reset() refills in place
            self.reset(input_ids)
            self.prefill_graph = capture(self.prefill)


CAPTURE_WARMUP = 3
# Token columns capture() writes after the prompt: the prefill's, then its warm-up steps' (the captured step
# itself only records). A session for fewer new tokens still allocates this many.
CAPTURE_ROOM = 1 + CAPTURE_WARMUP


def capture(step: Callable[[], None], steps: int = 1) -> torch.cuda.CUDAGraph:
    """Warm `step` up (compile, autotune, lazy allocation) on a side stream, as the CUDA graphs docs ask, then
    capture `steps` calls of it in one graph. The warm-up runs and advances the state by CAPTURE_WARMUP steps; the
    capture only records."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(CAPTURE_WARMUP):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            step()
    return graph


_SESSIONS: OrderedDict[tuple, StaticSession] = OrderedDict()
MAX_SESSIONS = 2  # each holds a static KV cache: B * layers * 2 * (P + N) * hidden values


def static_session(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                   eos: int | None, pad: int | None, execution: str, forward: str = "hf") -> StaticSession:
    kind = LeanSession if forward == "lean" else StaticSession
    if execution == "eager":  # nothing is bound to the buffers: a fresh cache per call, as in the post
        return kind(model, input_ids, max_new_tokens, eos, pad, execution)
    key = (id(model), forward, execution, tuple(input_ids.shape), max_new_tokens, eos, pad,
           next(model.parameters()).dtype)
    session = _SESSIONS.get(key)
    if session is None:  # id(model) cannot be reused while a session holds the model
        session = kind(model, input_ids, max_new_tokens, eos, pad, execution)
        _SESSIONS[key] = session
        while len(_SESSIONS) > MAX_SESSIONS:
            _SESSIONS.popitem(last=False)
    _SESSIONS.move_to_end(key)
    return session


def release_sessions() -> None:
    """Drop every cached static cache and CUDA graph (e.g. before measuring another variant's memory)."""
    _SESSIONS.clear()


# --- The loop --------------------------------------------------------------------------------------------

class DynamicSteps:
    """The post's KV-cache loop: prefill returns a DynamicCache, each later step feeds the last token."""

    def __init__(self, model: torch.nn.Module, d: Decoding) -> None:
        self.model, self.d, self.kv_cache = model, d, None

    def __call__(self, step: int) -> None:
        if step == 0:
            self.kv_cache = dynamic_prefill(self.model, self.d)
        else:
            dynamic_step(self.model, self.kv_cache, self.d, step)


def decode(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *, cache_kind: str,
           execution: str, stop_check: str, k: int, eos: int | None, pad: int | None, forward: str = "hf"
           ) -> torch.Tensor:
    """Greedy decoding with the given policies; inputs are already validated."""
    if cache_kind == "static":
        session = static_session(model, input_ids, max_new_tokens, eos, pad, execution, forward)
        session.reset(input_ids)
        d = session.d

        def run_step(step: int) -> None:
            session.prefill() if step == 0 else session.step()
    else:
        d = Decoding.allocate(*input_ids.shape, max_new_tokens, eos, pad, input_ids.device)
        d.reset(input_ids)
        run_step = (lambda step: naive_step(model, d, step)) if cache_kind == "none" else DynamicSteps(model, d)

    if eos is None:  # nothing can stop early: no checks, and no host syncs for them
        checker: StopCheck = STOP_CHECKS["never"](d.stop)
    elif stop_check == "every_k":
        checker = STOP_CHECKS["every_k"](d.stop, k)
    else:
        checker = STOP_CHECKS[stop_check](d.stop)
    prof = profiling.current()
    ran = 0
    for step in range(max_new_tokens):
        prof.at_step(step)
        with prof.range("Model Forward"), checker.step_stream(step):
            run_step(step)
        ran += 1
        with prof.range("Check Stop Condition"):
            if checker.should_stop(step):
                break
    checker.close()
    prof.done()
    return finish(d, ran, max_new_tokens, eos)


def finish(d: Decoding, ran: int, max_new_tokens: int, eos: int | None) -> torch.Tensor:
    """Trim to the contract's n: the first step at which every row has produced EOS (included), else all.

    Policies that check late ran extra steps; those emitted only padding and are dropped here.
    """
    generated = d.tokens[:, d.prompt_len : d.prompt_len + ran]
    if bool((generated < 0).any()):
        raise RuntimeError(f"internal error: a decode step left positions unwritten in {ran} steps")
    n = ran
    if eos is not None:
        hit = generated == eos
        if bool(hit.any(dim=1).all()):
            n = int(hit.int().argmax(dim=1).max()) + 1  # argmax finds each row's first EOS
        elif ran < max_new_tokens:
            raise RuntimeError(f"internal error: the loop stopped after {ran} steps with rows unfinished")
    return d.tokens[:, : d.prompt_len + n].clone()  # never hand out the (reused) session buffer
