"""The baselines committed per card: what `--benchmark-compare` on that card will read, checked on every CI run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import gate
from .conftest import BASELINES, slug

FILES = sorted(BASELINES.glob("*/*/*.json"))


def test_a_baseline_is_committed() -> None:
    assert FILES, f"no baseline under {BASELINES}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(BASELINES)))
def test_committed_baseline_can_be_judged(path: Path) -> None:
    saved = json.loads(path.read_text())
    # Stored under the card it was recorded on: the folder is what keeps an A100 run off an H100's numbers.
    assert slug(saved["machine_info"]["decode_gate"]["gpu"]) == path.parent.parent.name
    for bench in saved["benchmarks"]:
        # The gate judges raw samples (--benchmark-save-data), and needs each benchmark's class.
        assert len(bench["stats"].get("data", [])) >= 3, f"{bench['name']}: no raw samples"
        assert bench["extra_info"].get("class") in (*gate.CLASSES, "probe"), bench["name"]
