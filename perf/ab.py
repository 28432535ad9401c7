"""The gate's base arm: another commit's generators/, imported beside this tree's and timed in the same process.

REF's generators/ is extracted with `git archive` and imported as the package `generators_base`; the package
imports itself only relatively, so the two copies share nothing but torch, transformers and the model. Where REF's
generators/ is exactly this tree's, or REF is `self`, one copy serves both arms. Each arm's peak memory is taken
after the timed rounds, from a clean slate (`arm_peaks`; docs/gate.md says why).
"""

from __future__ import annotations

import gc
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

import generators
from generators import bench

from . import gate, store

ROOT = Path(__file__).resolve().parents[1]
SELF = "self"


@dataclass(frozen=True)
class Base:
    """The base arm: the ref as given, the commit it resolved to ("self" for this tree), and its package."""

    ref: str
    commit: str
    package: ModuleType
    tmpdir: Path | None = None  # where the ref's generators/ was extracted (removed at the session's end)

    def has(self, variant: str) -> bool:
        return variant in self.package.GENERATORS


def load_base(ref: str, *, repo: Path = ROOT, name: str = "generators_base") -> Base:
    """The base arm for ``--ab-base=REF``; pytest.UsageError if the ref or its generators/ is missing,
    store.GateError if git is."""
    if ref == SELF:
        return Base(SELF, SELF, generators)
    resolved = store.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", repo=repo)
    if resolved.returncode != 0:
        hint = ""
        if re.fullmatch(r"[0-9a-fA-F]{7,40}", ref):
            hint = (f": fetch it (`git fetch origin {ref}`, or check out with fetch-depth: 0 in CI), or name another "
                    f"base with --ab-base=REF")
        raise pytest.UsageError(f"the base arm's commit {ref} is not in the git repository at {repo}{hint}")
    commit = resolved.stdout.strip()
    if shares_code(commit, repo):  # one copy: the same code need not be imported, compiled and captured twice
        return Base(ref, commit, generators)
    tmpdir = Path(tempfile.mkdtemp(prefix="ab-base-"))
    try:
        archive = store.git("archive", "--format=tar", commit, "generators", repo=repo, text=False)
        if archive.returncode != 0:
            raise pytest.UsageError(f"--ab-base={ref}: commit {commit[:12]} has no generators/ package "
                                    f"({archive.stderr.decode(errors='replace').strip()})")
        untar = subprocess.run(["tar", "-x", "-C", str(tmpdir)], input=archive.stdout, capture_output=True)
        if untar.returncode != 0:
            raise pytest.UsageError(f"--ab-base={ref}: could not unpack its generators/: {untar.stderr!r}")
        return Base(ref, commit, import_package(tmpdir / "generators", name), tmpdir)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise


def shares_code(commit: str, repo: Path = ROOT) -> bool:
    """True if this tree's generators/ is exactly `commit`'s (and this tree is the repository at `repo`)."""
    if Path(generators.__file__).resolve().parent != (repo / "generators").resolve():
        return False
    tree = store.generators_tree(commit, repo)
    return tree is not None and tree == store.generators_tree("HEAD", repo) and not store.generators_dirty(repo)


def import_package(directory: Path, name: str) -> ModuleType:
    """Import the package in `directory` under the module name `name` (its relative imports follow it)."""
    init = directory / "__init__.py"
    if not init.is_file():
        raise pytest.UsageError(f"no package to import as the base arm: {init} is missing")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(directory)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing it, so that `from . import x` finds its parent
    try:
        spec.loader.exec_module(module)
    except BaseException:
        unload(name)
        raise
    return module


def unload(name: str) -> None:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def close(base: Base) -> None:
    if base.package is not generators:
        unload(base.package.__name__)
    if base.tmpdir is not None:
        shutil.rmtree(base.tmpdir, ignore_errors=True)


def release(base: Base, device: torch.device) -> None:
    """bench.fresh_memory for both arms: drop every cached static cache and graph of either package."""
    release_base = getattr(base.package, "release_sessions", None)
    if release_base is not None:  # a base older than release_sessions keeps its sessions (documented limit)
        release_base()
    bench.fresh_memory(device)  # this tree's sessions, gc, empty_cache, reset the peak counters


def arm_peaks(base: Base, variant: str, model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
              eos: int | None) -> tuple[int, int, int]:
    """Peak allocated bytes above what the process held when that arm started: the base arm's, then the
    candidate's, each from a clean slate, alternating as in the timed rounds (gate.settled_peaks: which passes count);
    third, the generations that took (4, or 8 where the kept pass's arms differed).

    Above what it held: on an H200 the second arm's absolute peak was a constant ~33 MiB higher in A/A runs (what
    the first arm's compiled step and graph leave behind after release), +3.9% of a CUDA-graph row's peak at
    b=32 and more than the 5% rule at b=1; subtracting the memory held at the start cancels that. It did not cancel
    for hf_generate_static: +33 MiB in the second arm in each of 3 A/A runs. cuBLAS keeps a workspace per stream
    in the caching allocator (32 + 1 MiB on an H200) and torch frees them when a CUDA graph is captured, so
    whichever arm finds them freed pays for them again. Freeing them before each arm makes both arms pay.
    That alone left the first arm of `pipelined` 790 MiB above the second (1089 vs 299 MiB, 2 of 2 A/A runs):
    whatever the first generation after the freeing allocates once, hence a first pass that is not kept.
    """
    device = input_ids.device
    packages = (base.package, generators)
    generations = 0

    def measure(arm: int) -> int:
        nonlocal generations
        generations += 1
        getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)()  # private; absent: peaks as before
        release(base, device)  # its empty_cache returns the freed workspaces too
        held = torch.cuda.memory_allocated(device)
        bench.timed_call(variant, model, input_ids, max_new_tokens, eos, registry=packages[arm].GENERATORS)
        return bench.peak_memory(device)[0] - held

    peaks = gate.settled_peaks(measure)
    gc.collect()
    return (*peaks, generations)
