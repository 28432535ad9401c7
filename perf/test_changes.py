"""The real-change kit (perf/changes.py): every patch still applies to this tree, and the table's bookkeeping."""

from __future__ import annotations

import ast
import shutil
import subprocess

import pytest
import torch

from . import changes, gate

needs_git = pytest.mark.skipif(shutil.which("git") is None or not (changes.ROOT / ".git").exists(),
                               reason="needs git and a checkout")


@needs_git
@pytest.mark.parametrize("change", changes.CHANGES, ids=lambda c: c.name)
def test_each_change_still_applies_to_this_tree(change: changes.Change) -> None:
    # A patch that no longer applies proves nothing about the gate: refresh it with the code it patches.
    patch = changes.PATCHES / f"{change.name}.patch"
    result = subprocess.run(["git", "-C", str(changes.ROOT), "apply", "--check", str(patch)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    code = any(line.startswith("+++ b/generators/") for line in patch.read_text().splitlines())
    assert code or not change.touches, f"{patch}: a change that touches variants must patch generators/"


@needs_git
@pytest.mark.parametrize("change", [c for c in changes.CHANGES if not c.touches], ids=lambda c: c.name)
def test_a_change_that_touches_nothing_leaves_the_code_alone(change: changes.Change, tmp_path) -> None:
    # Its rows are counted as untouched (false alarms if flagged): the patched modules must compile to the same code.
    patch = changes.PATCHES / f"{change.name}.patch"
    files = [line.removeprefix("+++ b/") for line in patch.read_text().splitlines() if line.startswith("+++ b/")]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(changes.ROOT / name, tmp_path / name)
    subprocess.run(["git", "apply", str(patch)], cwd=tmp_path, check=True)
    for name in (n for n in files if n.endswith(".py")):
        before, after = (code_of((root / name).read_text()) for root in (changes.ROOT, tmp_path))
        assert before == after, f"{patch}: changes the code of {name}, yet the change says it touches no variant"


def code_of(source: str) -> str:
    """The module's AST without docstrings."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            del body[0]
    return ast.dump(tree)


def verdict(name: str, klass: str, ratio: float, status: str, memory: float | None = None) -> gate.Verdict:
    mem = None if memory is None else (gate.MEMORY_REGRESSED if memory > 1.05 else gate.MEMORY_OK)
    return gate.Verdict(name, status, klass, ratio, ratio, ratio, 0.02, "default", memory, 0, mem, 15)


def test_the_table_counts_required_flags_and_false_alarms() -> None:
    wait = changes.CHANGES[0]  # touches cuda_graph_deferred and lean_graph
    results = [
        (wait, "cuda_graph_deferred", verdict("test_generate[cuda_graph_deferred-b32-n100-float32]", gate.DEVICE,
                                              1.05, gate.REGRESSED)),
        (wait, "lean_graph", verdict("test_generate[lean_graph-b1-n100-float32]", gate.DEVICE, 1.04,
                                     gate.WITHIN_NOISE)),  # past the bar, missed
        (wait, "lean_graph", verdict("test_generate[lean_graph-b32-n100-float32]", gate.DEVICE, 1.01,
                                     gate.WITHIN_NOISE)),  # under the bar: either verdict is fine
        (wait, "cuda_graph", verdict("test_generate[cuda_graph-b1-n100-float32]", gate.DEVICE, 1.0,
                                     gate.REGRESSED)),  # untouched: a false alarm
        (wait, "static_compiled", verdict("test_generate[static_compiled-b1-n100-float32]", gate.HOST, 1.0,
                                          gate.WITHIN_NOISE, memory=1.2)),  # untouched, memory alarm
    ]
    text, tally = changes.table(results)
    assert tally == {"flag": 2, "flagged": 1, "quiet": 2, "false_alarms": 2}
    lines = text.splitlines()[2:]
    assert lines[0].endswith("| regressed | yes (flag) |") and lines[1].endswith("| NO (flag) |")
    assert lines[2].endswith("| yes (either) |") and lines[3].endswith("| NO (quiet) |")
    assert "| host_wait_per_step | cuda_graph_deferred-b32-n100-float32 | yes | +5.0% |" in lines[0]


def test_the_table_of_a_stopped_run_comes_from_its_rows_log(tmp_path, capsys) -> None:
    # extra_copy_per_step over the whole gate grid on an H200 (two runs, the first stopped by a time limit)
    evidence = changes.ROOT / "perf/evidence/2026-11-30/change_extra_copy_per_step_a097a9c.rows.jsonl"
    shutil.copy(evidence, tmp_path / "extra_copy_per_step.jsonl")
    assert changes.main(["--out", str(tmp_path), "--only", "extra_copy_per_step", "--tabulate"]) == 0
    assert "required flags caught: 14 of 14; false alarms: 0 of 12 untouched rows" in capsys.readouterr().out
    assert len((tmp_path / "changes.md").read_text().splitlines()) == 2 + 26


def test_a_change_that_measured_nothing_fails(tmp_path, capsys) -> None:
    assert changes.main(["--out", str(tmp_path), "--only", "docs_only", "--tabulate"]) == 1
    assert "no row measured for docs_only" in capsys.readouterr().out


@needs_git
def test_a_change_run_that_cannot_start_fails_with_the_gates_message(tmp_path, capsys) -> None:
    # On a machine without CUDA the gate refuses the stored GPU baseline: no row, so the change proves nothing.
    pytest.importorskip("xdist")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the gate would run")
    assert changes.main(["--out", str(tmp_path), "--only", "docs_only"]) == 1
    assert "no row measured for docs_only" in capsys.readouterr().out
