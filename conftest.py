"""Shared test configuration: the device option, markers, and Hypothesis profiles.

Profiles: `dev` (quick, the default), `ci` (derandomized; what CI runs), `gpu` (more examples, for a GPU
runner). Choose with `--hypothesis-profile=NAME` or the HYPOTHESIS_PROFILE environment variable.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Models are built once per process and generation on a GPU compiles: no per-example deadline anywhere.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=10, **_common)
settings.register_profile("ci", max_examples=25, derandomize=True, print_blob=True, **_common)
settings.register_profile("gpu", max_examples=40, print_blob=True, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.addoption("--device", default=default, help=f"device to test on (default here: {default})")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped elsewhere, with the reason)")
    config.addinivalue_line("markers", "slow: compiles with torch.compile or runs long")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    device = config.getoption("--device")
    if device.startswith("cuda") and torch.cuda.is_available():
        return
    reason = f"needs CUDA; running on --device={device} (torch.cuda.is_available()={torch.cuda.is_available()})"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _one_cpu_thread(pytestconfig: pytest.Config) -> None:
    # The test models are tiny: intra-op threads buy nothing, and on a busy 2-core machine (CI) every op's
    # parallel region waits for a descheduled thread. Measured here: one naive generation (b=8, 16+48 tokens)
    # took 13 s with 2 threads and 0.18 s with 1.
    if not pytestconfig.getoption("--device").startswith("cuda"):
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    return torch.device(pytestconfig.getoption("--device"))
