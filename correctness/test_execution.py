"""execution.py's CUDA_GRAPH binding on CPU, with capture() faked: what it captures and in which state.

The real capture needs CUDA (test_contract's gpu tests run it); this checks the binding's order on any machine:
buffers with room for the warm-up, the step captured after a reset and an eager prefill, and the prefill
captured too exactly where the cache policy says so (caches.LeanKV)."""

from __future__ import annotations

import pytest
import torch

from correctness.scenarios import PROMPT_LEN, case, contract_model
from generators import CUDA_GRAPH, caches, execution, loop


class FakeGraph:
    def __init__(self, step: object, column: torch.Tensor) -> None:
        self.step, self.column_at_capture = step, column.clone()

    def replay(self) -> None:
        pass


@pytest.mark.parametrize(("cache", "prefill_captured"), [(caches.StaticKV, False), (caches.LeanKV, True)])
def test_cuda_graph_captures_the_step_and_where_allowed_the_prefill(cache: type[caches.Cache],
                                                                  prefill_captured: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = contract_model("cpu")
    ids = case("no_eos", model).input_ids
    sessions: list[loop.Session] = []
    monkeypatch.setattr(execution, "capture", lambda step, steps=1: FakeGraph(step, sessions[0].d.col))
    monkeypatch.setattr(loop.Session, "__init__", _recording(loop.Session.__init__, sessions))
    s = loop.Session(cache, CUDA_GRAPH, model, ids, 2, None, None)  # fewer new tokens than the warm-up writes
    assert s.d.tokens.shape == (ids.shape[0], PROMPT_LEN + max(2, execution.CAPTURE_ROOM))
    step_graph = s.step.__self__
    assert isinstance(step_graph, FakeGraph) and step_graph.column_at_capture.item() == PROMPT_LEN + 1, (
        "the step is captured after a reset and one eager prefill")
    prefill_graph = getattr(s.prefill, "__self__", None)
    assert isinstance(prefill_graph, FakeGraph) == prefill_captured
    if prefill_captured:
        assert prefill_graph.column_at_capture.item() == PROMPT_LEN, "the prefill is captured after a reset"
        assert prefill_graph.step == s.cache.prefill


def _recording(init: object, sessions: list) -> object:
    def record(self: loop.Session, *args: object, **kwargs: object) -> None:
        sessions.append(self)
        init(self, *args, **kwargs)

    return record
