"""The baselines committed per card: what `--benchmark-compare` on that card will read, checked on every CI run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import gate
from .conftest import BASELINES, _verdicts, grid_names, slug

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


def _saved(name: str, samples: list[float]) -> dict:
    return {"name": name, "stats": {"data": samples, "median": sorted(samples)[len(samples) // 2]},
            "extra_info": {"class": gate.DEVICE}}


def test_rows_outside_this_sessions_grid_are_not_missing() -> None:
    """A gate-grid session against the full-grid baseline judges its own rows and lists as MISSING only the gate
    grid's rows it did not run (e.g. deselected with -k), not the rest of the full grid."""
    gate_rows = sorted(grid_names("gate"))
    ran, skipped, elsewhere = gate_rows[0], gate_rows[1], "test_generate[naive-b32-n400-float32]"
    assert elsewhere in grid_names("full") and elsewhere not in grid_names("gate")
    quiet = [1.00, 1.01, 0.99, 1.02, 0.98]
    baseline = [_saved(n, quiet) for n in (ran, skipped, elsewhere)]
    verdicts = {v.name: v.status for v in _verdicts([_saved(ran, quiet)], baseline, {}, grid_names("gate"))}
    assert verdicts == {ran: gate.WITHIN_NOISE, skipped: gate.MISSING}
