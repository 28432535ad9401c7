"""The A/B gate's plumbing on CPU: the base arm from a git ref, the A/B verdicts, and a real A/B perf session."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import generators
from generators import bench, models

from . import ab, gate
from .conftest import _ab_verdicts

ROOT = Path(__file__).resolve().parents[1]
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not on PATH")


def git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose committed generators/ differs from its working tree."""
    root = tmp_path / "repo"
    (root / "generators").mkdir(parents=True)
    (root / "generators" / "__init__.py").write_text("from . import steps\nGENERATORS = {'x': steps.x}\n")
    (root / "generators" / "steps.py").write_text("def x():\n    return 'committed'\n")
    (root / "README").write_text("r\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "one")
    (root / "generators" / "steps.py").write_text("def x():\n    return 'working tree'\n")
    return root


@needs_git
def test_base_arm_is_the_refs_package_under_another_name(repo: Path) -> None:
    base = ab.load_base("HEAD", repo=repo, name="generators_base_t1")
    try:
        assert base.commit == git(repo, "rev-parse", "HEAD")
        pkg = base.package
        assert pkg.__name__ == "generators_base_t1" and pkg.steps.__name__ == "generators_base_t1.steps"
        assert sys.modules["generators_base_t1.steps"] is pkg.steps
        assert pkg.GENERATORS["x"]() == "committed"  # the commit, not the working tree
        assert Path(pkg.__file__).is_relative_to(base.tmpdir) and base.has("x") and not base.has("y")
    finally:
        ab.close(base)
    assert "generators_base_t1" not in sys.modules and not base.tmpdir.exists()


@needs_git
@pytest.mark.parametrize("ref, message", [("nosuchref", "no such commit"), ("HEAD~5", "no such commit")])
def test_a_missing_ref_is_a_usage_error(repo: Path, ref: str, message: str) -> None:
    with pytest.raises(pytest.UsageError, match=message):
        ab.load_base(ref, repo=repo)


@needs_git
def test_a_ref_without_generators_is_a_usage_error(repo: Path) -> None:
    shutil.rmtree(repo / "generators")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "gone")
    with pytest.raises(pytest.UsageError, match="has no generators/ package"):
        ab.load_base("HEAD", repo=repo)


def test_missing_git_is_a_usage_error(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ab.shutil, "which", lambda name: None)
    with pytest.raises(pytest.UsageError, match="git is not on PATH"):
        ab.load_base("HEAD", repo=repo)


def test_self_is_this_trees_own_package() -> None:
    base = ab.load_base("self")
    assert base.package is generators and base.commit == "self" and base.tmpdir is None


@needs_git
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_head_of_this_repository_runs_as_the_base_arm() -> None:
    base = ab.load_base("HEAD", name="generators_base_head")
    try:
        assert base.package is not generators and base.has("naive")
        model = models.build("tiny-gpt2", device="cpu")
        ids = bench.post_prompt(model, 2, "cpu")
        _, base_out = bench.timed_call("naive", model, ids, 6, bench.eos_of(model), registry=base.package.GENERATORS)
        _, ours = bench.timed_call("naive", model, ids, 6, bench.eos_of(model))
        assert torch.equal(base_out, ours)
    finally:
        ab.close(base)


def test_generators_import_themselves_only_relatively() -> None:
    # The base arm is imported under another name: an absolute `generators` import inside the package would
    # silently run the candidate's code in the base arm.
    def absolute(node: ast.AST) -> bool:
        if isinstance(node, ast.ImportFrom):
            return node.level == 0 and node.module.split(".")[0] == "generators"
        return isinstance(node, ast.Import) and any(a.name.split(".")[0] == "generators" for a in node.names)

    offenders = [p.name for p in (ROOT / "generators").glob("*.py")
                 if p.name != "__main__.py" and any(map(absolute, ast.walk(ast.parse(p.read_text()))))]
    assert not offenders, f"absolute imports of generators in {offenders}; use relative ones"


# --- the session's A/B verdicts --------------------------------------------------------------------------


def row(name: str, base: list[float] | None, cur: list[float], klass: str = gate.HOST, **info) -> dict:
    extra = {"class": klass, "ab_candidate_s": cur, **info}
    if base is not None:
        extra["ab_base_s"] = base
    return {"name": name, "extra_info": extra}


def test_ab_verdicts_of_a_session() -> None:
    quiet = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00, 1.01]
    rows = [
        {"name": "probe", "extra_info": {"class": "probe"}},
        row("same", quiet, quiet[::-1]),
        row("slow", quiet, [t * 1.10 for t in quiet], gate.DEVICE),
        row("added", None, quiet),
        row("fat", quiet, quiet, gate.DEVICE, ab_base_peak_above_held=2 << 30, peak_above_held=int(2.2 * (1 << 30))),
    ]
    verdicts = {v.name: v for v in _ab_verdicts(rows, {"same": 0.03})}
    assert list(verdicts) == ["same", "slow", "added", "fat"]
    assert (verdicts["same"].status, verdicts["same"].band, verdicts["same"].band_source) == (
        gate.WITHIN_NOISE, 0.03, "stored")
    assert verdicts["slow"].status == gate.REGRESSED and verdicts["slow"].band == gate.DEFAULT_BAND_AB[gate.DEVICE]
    assert verdicts["added"].status == gate.NEW
    assert (verdicts["fat"].status, verdicts["fat"].memory_status) == (gate.WITHIN_NOISE, gate.MEMORY_REGRESSED)
    assert gate.gate_failed(verdicts.values())


# --- a real A/B session on CPU (pytest in a subprocess) ------------------------------------------------------


def test_ab_smoke_session_flags_the_injected_slowdown_only(tmp_path: Path) -> None:
    report = tmp_path / "gate.md"
    cmd = [sys.executable, "-m", "pytest", "perf/test_perf.py", "--ab-base=self", "--perf-grid=smoke", "--device=cpu",
           "-k", "b4-n16 and (naive or kv_static)", "--inject-slowdown=naive:0.5", f"--gate-report={report}",
           f"--benchmark-json={tmp_path / 'ab.json'}", "-p", "no:cacheprovider", "-q"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "GATE FAILED" in out and "A/B in one process, this tree vs self" in out
    text = report.read_text()
    verdicts = dict(re.findall(r"^\| test_generate\[(\S+)-b4-n16-float32\] \| ([^|]+?) \|", text, flags=re.M))
    assert verdicts.keys() == {"naive", "kv_static"}, text
    assert verdicts["naive"] == gate.REGRESSED, text
    # The untouched row is judged too; its verdict is not asserted: an A/A on a shared 2-core CI machine is not
    # the GPU's noise, and the null case is proven on synthetic pairs (test_gate.py) and by A/A runs on the GPU.
    assert verdicts["kv_static"] in {gate.WITHIN_NOISE, gate.IMPROVED, gate.REGRESSED}, text
    # Effect, CI and band are printed with the verdict (the effect's size is noisy on a shared CPU).
    effect = r"\+\d+\.\d%"
    row = rf"naive-b4-n16-float32\] \| regressed \| {effect} \| {effect} \.\. {effect} \| ±5\.0%"
    assert re.search(row, text), text
    # Every round the verdict judged is in the JSON, an undecided row's extra rounds included, and the table says how
    # many there were.
    for b in json.loads((tmp_path / "ab.json").read_text())["benchmarks"]:
        info = b["extra_info"]
        rounds = 15 + info["ab_extra_rounds"]
        assert len(info["ab_base_s"]) == len(info["ab_candidate_s"]) == rounds, info
        assert re.search(rf"^\| {re.escape(b['name'])} \|.* \| {rounds} \|$", text, flags=re.M), text


@pytest.mark.parametrize(("option", "message"), [
    ("--ab-rounds=2", "at least 3 timed rounds"),
    ("--inject-slowdown=naive:0.1,nope:0.1", "known variants, got 'nope:0.1'"),
])
def test_bad_gate_options_are_usage_errors(option: str, message: str) -> None:
    cmd = [sys.executable, "-m", "pytest", "perf/test_perf.py", "--ab-base=self", "--device=cpu", option,
           "--collect-only", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert message in result.stderr, result.stderr


def test_arm_peaks_keep_the_second_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-time allocation in the first generation after the clean slate (on an H200: 790 MiB in pipelined's
    first arm) must not land in either arm's peak: both arms allocate 300 above what they held."""
    held, state = 1000, {"peak": 0, "first": True, "cleared": 0}

    def generation(*args, registry: dict, **kwargs) -> tuple[float, None]:
        state["peak"] = held + 300 + (790 if state["first"] else 0)
        state["first"] = False
        return 0.0, None

    monkeypatch.setattr(ab, "release", lambda base, device: None)
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: state.update(cleared=state["cleared"] + 1),
                        raising=False)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: held)
    monkeypatch.setattr(bench, "timed_call", generation)
    monkeypatch.setattr(bench, "peak_memory", lambda device: (state["peak"], 0))
    base = ab.load_base(ab.SELF)
    ids = torch.zeros(1, 1, dtype=torch.long)
    assert ab.arm_peaks(base, "kv_static", None, ids, 4, None) == (300, 300)
    assert state["cleared"] == 4  # cuBLAS workspaces freed before every measured generation
