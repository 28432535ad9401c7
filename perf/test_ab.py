"""The gate's base arm on CPU: imported from a git ref, sharing the package where the code is the same."""

from __future__ import annotations

import ast
import gc
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import generators
from generators import bench, models

from . import ab, store

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
@pytest.mark.parametrize("ref, message", [("nosuchref", "is not in the git repository"),
                                          ("0123456789abcdef0123", "fetch it")])
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


def test_missing_git_is_an_error_the_gate_can_name(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A GateError: perf/conftest.py turns it into a usage error, as for a missing baseline.
    monkeypatch.setattr(store.shutil, "which", lambda name: None)
    with pytest.raises(store.GateError, match="git is not on PATH"):
        ab.load_base("HEAD", repo=repo)


def test_self_is_this_trees_own_package() -> None:
    base = ab.load_base("self")
    assert base.package is generators and base.commit == "self" and base.tmpdir is None


@needs_git
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_head_of_this_repository_runs_as_the_base_arm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ab, "shares_code", lambda commit, repo: False)  # a second copy, as for a changed tree
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


@needs_git
def test_a_commit_with_this_trees_generators_shares_this_package() -> None:
    if ab.store.generators_dirty():
        pytest.skip("generators/ differs from HEAD here: nothing to share")
    base = ab.load_base("HEAD")
    try:
        assert base.package is generators and base.tmpdir is None and len(base.commit) == 40
    finally:
        ab.close(base)


@needs_git
def test_a_commit_with_other_generators_gets_its_own_copy(repo: Path) -> None:
    assert not ab.shares_code(git(repo, "rev-parse", "HEAD"), repo)  # another repository's tree, never shared


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
    assert ab.arm_peaks(base, "kv_static", None, ids, 4, None) == (300, 300, 4)
    assert state["cleared"] == 4  # cuBLAS workspaces freed before every measured generation


@pytest.mark.parametrize("enabled", [True, False])
def test_a_timed_generation_runs_with_the_collector_paused(enabled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setitem(generators.GENERATORS, "spy", lambda *args, **kwargs: seen.append(gc.isenabled()) or "out")
    (gc.enable if enabled else gc.disable)()
    try:
        assert bench.timed_call("spy", None, torch.zeros(1, 1), 1, None)[1] == "out"
        assert seen == [False] and gc.isenabled() == enabled  # paused inside, as it was outside
    finally:
        gc.enable()


def test_the_first_model_freezes_what_is_alive_before_the_first_row(models_by_dtype) -> None:
    models_by_dtype("float32")
    assert gc.get_freeze_count() > 0  # release()'s collections then skip the imports and the model
