"""The correctness suite's own marker and the session's tie ration (see ties.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from correctness.ties import LEDGER, TieLedger

PER_SHAPE_REASON = "compiles per shape; covered by test_contract's slow test on CPU and by the gpu profile"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"per_shape_compile: Hypothesis over a compiled variant ({PER_SHAPE_REASON})")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    device = config.getoption("--device")
    if device.startswith("cuda") and torch.cuda.is_available():
        return
    for item in items:
        if "per_shape_compile" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"on --device={device}: {PER_SHAPE_REASON}"))


@pytest.fixture(scope="session")
def tie_ledger() -> Iterator[TieLedger]:
    """The session's ties; when the session ends, fails if they exceed the ration."""
    yield LEDGER
    over = LEDGER.over_ration()
    if over:
        ties = [tie for dtype in over for tie in LEDGER.ties[dtype]]
        pytest.fail(f"near-ties exceed the ration ({LEDGER.summary()}):\n  " + "\n  ".join(ties))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if LEDGER.steps:
        terminalreporter.write_line(f"correctness near-ties: {LEDGER.summary()}")
        for tie in (tie for ties in LEDGER.ties.values() for tie in ties):
            terminalreporter.write_line(f"  {tie}")
