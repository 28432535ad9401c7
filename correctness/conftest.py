"""The correctness suite's own marker, the session's tie ration (see ties.py) and the Triton kernels' device."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from correctness.ties import LEDGER, TieLedger
from generators import skinny

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


@pytest.fixture
def needs_triton(device: torch.device) -> None:
    """For a Triton kernel's test (skinny.py, flash_decode.py, which import triton alike; use it with
    ``pytest.mark.usefixtures``): skipped where triton is missing, and on CPU unless Triton's interpreter is on."""
    if skinny.triton is None:
        pytest.skip("triton is not installed (CPU wheels of torch ship without it)")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("a Triton kernel: needs CUDA, or TRITON_INTERPRET=1 to run on CPU")


@pytest.fixture(scope="session")
def tie_ledger() -> Iterator[TieLedger]:
    """The session's ties; when the session ends, fails if they exceed the ration."""
    yield LEDGER
    over = LEDGER.over_ration()
    if over:
        ties = [tie for dtype in over for tie in LEDGER.ties[dtype]]
        pytest.fail(f"near-ties exceed the ration ({LEDGER.summary()}):\n  " + "\n  ".join(ties))


def _ledger_lines(prefix: str = "") -> list[str]:
    ties = (f"  {tie}" for ties in LEDGER.ties.values() for tie in ties)
    return [f"{prefix}correctness near-ties: {LEDGER.summary()}", *ties]


WORKER_LEDGERS: list[list[str]] = []  # under xdist, each worker's session ledger, as the controller got it


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and LEDGER.steps:  # an xdist worker: its ledger goes to the controller's summary
        workeroutput["tie_ledger"] = _ledger_lines(f"[{session.config.workerinput['workerid']}] ")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    lines = getattr(node, "workeroutput", {}).get("tie_ledger")
    if lines:
        WORKER_LEDGERS.append(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The session's near-ties and compared steps; under xdist, each worker's (each rations its own session)."""
    for line in _ledger_lines() if LEDGER.steps else []:
        terminalreporter.write_line(line)
    for line in (line for lines in sorted(WORKER_LEDGERS) for line in lines):
        terminalreporter.write_line(line)
