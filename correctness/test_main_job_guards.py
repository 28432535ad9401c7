"""The main job (python -m generators) refuses bad arguments before any timing, loses nothing it measured, and
judges tokens by the suite's near-tie rule. (perf/test_main_job.py runs it end to end.)"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

from generators import __main__ as main_job
from generators import bench

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--device", "cpu", "--reps", "1", "--warmup", "0"]


def no_timing(*args, **kwargs) -> None:
    pytest.fail("a measurement started before the usage error")  # Failed is no Exception: the job's loop can't catch it


@pytest.mark.parametrize(("argv", "named"), [
    (["--grid", ""], "--grid"),
    (["--grid", "32by100"], "--grid"),
    (["--variants", ""], "--variants"),
    (["--variants", " , "], "--variants"),
    (["--variants", "cuda_graph"], "--variants: cuda_graph: CUDA only"),
    (["--device", "nonsense"], "--device"),
    (["--device", "meta"], "--device"),
    (["--model", "nope"], "--model"),
    (["--profile-steps", "50:30"], "--profile-steps"),
    (["--profile-steps", "5"], "--profile-steps"),
    (["--out", ""], "--out"),
    (["--out", "{file}"], "--out .*is a file"),
    (["--out", "{file}/sub"], "--out .*cannot write there"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_a_bad_argument_is_a_usage_error_before_any_timing(argv: list[str], named: str, tmp_path, monkeypatch,
                                                         capsys) -> None:
    (tmp_path / "README.md").write_text("kept")
    argv = [a.replace("{file}", str(tmp_path / "README.md")) for a in argv]
    monkeypatch.setattr(bench, "measure", no_timing)
    with pytest.raises(SystemExit) as e:
        main_job.main(["--device", "cpu", "--out", str(tmp_path / "out"), *argv])
    assert e.value.code == 2
    assert re.search(f"error: {named}", capsys.readouterr().err)
    assert (tmp_path / "README.md").read_text() == "kept"


def test_grid_help_names_each_devices_default() -> None:
    text = " ".join(main_job.build_parser().format_help().split())
    assert "on CUDA, the post's: 32x100,32x200,32x400,1x100,4x100,16x100,64x100; on CPU: 1x32,4x32,4x64" in text


def test_rows_are_written_as_they_finish_and_an_interrupt_keeps_them(tmp_path, monkeypatch, capsys) -> None:
    measure, seen = bench.measure, []

    def measure_then_look(name, *args, **kwargs):
        on_disk = json.loads((tmp_path / "results.json").read_text())["results"] if seen else []
        seen.append([r["variant"] for r in on_disk])
        if len(seen) == 3:
            raise KeyboardInterrupt
        return measure(name, *args, **kwargs)

    monkeypatch.setattr(bench, "measure", measure_then_look)
    rc = main_job.main([*FAST, "--grid", "1x3", "--variants", "kv_static,lean_eager", "--out", str(tmp_path)])
    assert rc == 130 and seen == [[], ["naive"], ["naive", "kv_static"]]
    assert [r["variant"] for r in json.loads((tmp_path / "results.json").read_text())["results"]] == [
        "naive", "kv_static"]
    assert "interrupted: 2 of 3 rows measured" in capsys.readouterr().err


def test_when_every_row_fails_the_summary_shows_and_nothing_is_plotted(tmp_path, capsys) -> None:
    rc = main_job.main([*FAST, "--grid", "1x100000", "--variants", "kv_static", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "FAILED: kv_static b=1 n=100000: ValueError" in err and "no row ran" in err
    assert not (tmp_path / "tokens_per_s.png").exists()


def test_progress_lines_and_table_show_the_same_named_statistic(tmp_path, monkeypatch, capsys) -> None:
    """The median, named in both; and a warning printed during a measurement lands on a line of its own."""
    measure = bench.measure

    def warn_then_measure(*args, **kwargs):
        print("UserWarning: No CUDA runtime is found", file=sys.stderr, flush=True)
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench, "measure", warn_then_measure)
    rc = main_job.main([*FAST, "--grid", "1x3", "--variants", "kv_static", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0
    progress = dict(re.findall(r"\] (\w+) .* median +([\d.]+) ms", err))
    header, _, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
                        if line.startswith("|")]
    col = header.index("median ms")
    assert progress == {row[0]: row[col] for row in rows} and set(progress) == {"naive", "kv_static"}
    assert all("No CUDA runtime" not in line or line.startswith("UserWarning") for line in err.splitlines()), err


def test_near_ties_pass_and_a_real_difference_fails(tmp_path, monkeypatch, capsys) -> None:
    """bfloat16 on CPU: lean_eager parts from naive at near-ties (gap < tau), which the main job once called a
    difference; a corrupted output still fails, naming the row and step."""
    rc = main_job.main([*FAST, "--dtype", "bfloat16", "--grid", "4x64", "--variants", "lean_eager",
                        "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    assert rc == 0 and {r["tokens_vs_naive"] for r in rows} <= {"same", "near-tie"}, capsys.readouterr().err
    measure = bench.measure

    def corrupt(name, *args, **kwargs):
        m = measure(name, *args, **kwargs)
        if name == "kv_static":
            m.tokens = m.tokens.clone()
            m.tokens[:, -2:] = (m.tokens[:, -2:] + 1) % 512  # wrong, not a near-tie
        return m

    monkeypatch.setattr(bench, "measure", corrupt)
    rc = main_job.main([*FAST, "--grid", "2x6", "--variants", "kv_static", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 1 and "| kv_static | 2 | 6 |" in out and out.splitlines()[-3].endswith("| DIFFERS |")
    assert re.search(r"TOKENS DIFFER FROM NAIVE: kv_static b=2 n=6: row 0 diverges at step 4 .*\n.*not a near-tie",
                     err), err
    row = json.loads((tmp_path / "results.json").read_text())["results"][1]
    assert row["tokens_vs_naive"] == "differs" and not row["same_tokens_as_naive"]


def test_every_console_script_is_documented() -> None:
    """The README's command is `python -m generators`; an entry point it does not name is one nobody finds."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    readme = (ROOT / "README.md").read_text()
    assert [name for name in scripts if name not in readme] == []



def test_naive_runs_first_wherever_it_is_named(tmp_path) -> None:
    # Every row's token check and speedup are against naive at the same grid point, so it must be measured first.
    assert main_job.main(["--device", "cpu", "--grid", "1x3", "--variants", "kv_static,naive", "--reps", "1",
                          "--warmup", "0", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["variant"] for r in rows] == ["naive", "kv_static"]
    assert rows[1]["tokens_vs_naive"] == "same"
