"""The main job (python -m generators) end to end on the CPU's tiny grid, and its profiling switch."""

from __future__ import annotations

import json

import pytest

from generators import __main__ as main_job
from generators import profiling


def test_main_job_writes_table_json_and_png(tmp_path, capsys) -> None:
    rc = main_job.main(["--device", "cpu", "--grid", "2x4", "--variants", "naive,kv_static", "--reps", "2",
                        "--out", str(tmp_path)])
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [(r["variant"], r["batch"], r["steps"]) for r in results] == [("naive", 2, 4), ("kv_static", 2, 4)]
    assert all(r["same_tokens_as_naive"] for r in results)
    assert (tmp_path / "tokens_per_s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| kv_static | 2 | 4 |" in capsys.readouterr().out


@pytest.mark.parametrize("variants, profiled", [("naive,kv_static", 2), ("kv_static", 1)])
def test_profiling_the_named_variants_gets_ranges(variants: str, profiled: int, tmp_path, monkeypatch) -> None:
    """Every named variant gets NVTX ranges; naive, added only as the reference, gets none (its window would come
    first and end an nsys run that uses the default --capture-range-end)."""
    ranges: list[str] = []
    monkeypatch.setattr(profiling.NvtxProfiler, "range", lambda self, name: (ranges.append(name), profiling._NULL)[1])
    rc = main_job.main(["--device", "cpu", "--grid", "1x3", "--variants", variants, "--reps", "1",
                        "--warmup", "0", "--profile-steps", "1:2", "--out", str(tmp_path)])
    assert rc == 0
    # per profiled variant: 1 generation x 3 steps, each step one forward range and one stop-check range
    assert ranges.count("Model Forward") == 3 * profiled and ranges.count("Check Stop Condition") == 3 * profiled


@pytest.mark.parametrize("argv", [["--grid", "32by100"], ["--variants", "nope"], ["--profile-steps", "5"],
                                  ["--reps", "0"]])
def test_main_job_rejects_bad_arguments(argv: list[str], tmp_path) -> None:
    with pytest.raises(SystemExit) as e:
        main_job.main(["--device", "cpu", "--out", str(tmp_path), *argv])
    assert e.value.code != 0


def test_capture_window_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="capture"), profiling.enabled(capture=(5, 5)):
        pass
