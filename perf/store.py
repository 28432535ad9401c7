"""Stored baselines, read fail-closed: perf/baselines/<card>/<OS-Python>/NNNN_baseline.json (pytest-benchmark's files).

A baseline records the commit it timed; the gate imports that commit's generators/ as its base arm and compares
the base arm's times today with the stored ones (the runner check). Anything that keeps the gate from judging is a
GateError with one paragraph that says what to do; nothing here falls back to an older file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BASELINES = Path(__file__).parent / "baselines"
ROOT = Path(__file__).resolve().parents[1]
RECORD = "python -m pytest perf -n auto --benchmark-save=baseline --benchmark-save-data"
BANDS = "bands.json"  # beside the OS-Python folders: perf/baselines/<card>/bands.json (python -m perf.gate calibrate)


class GateError(Exception):
    """The gate cannot judge: a clear message, a non-zero exit."""


def slug(gpu_name: str) -> str:
    """The baseline folder of a card: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")


@dataclass(frozen=True)
class Baseline:
    path: Path
    commit: str  # the commit whose generators/ was timed
    tree: str  # git's tree id of that generators/
    recorded: str  # pytest-benchmark's datetime
    samples: dict[str, list[float]]  # benchmark name -> timed rounds, seconds


def latest(folder: Path, card: str, pick: str | bool = True) -> Baseline:
    """The newest baseline file in `folder` (or the one whose name starts with `pick`), checked whole."""
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if pick is not True:
        files = [f for f in files if f.name.startswith(str(pick))]
    if not files:
        what = "no stored baseline" if pick is True else f"no stored baseline named {pick}*"
        raise GateError(f"{what} for this card ({card}) in {folder}. Record one on this GPU with `{RECORD}` on a "
                        f"clean checkout, commit the new file, then run the gate.")
    path = files[-1]
    try:
        data = json.loads(path.read_text())
        benchmarks = data["benchmarks"]
        recorded_on = data["machine_info"]["decode_gate"].get("gpu", "cpu")
        commit, tree = data["commit_info"]["id"], data["machine_info"]["decode_gate"]["generators_tree"]
        samples = {b["name"]: list(b["stats"]["data"]) for b in benchmarks}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GateError(f"{path} cannot be read as a baseline ({type(e).__name__}: {e}). The gate does not fall "
                        f"back to an older file: restore this one from git, or record a new one with `{RECORD}`. "
                        f"(Baselines recorded before 2026-11-30 lack the fields the gate reads.)") from None
    if not samples:
        raise GateError(f"{path} holds no benchmarks: nothing to compare the base arm with. Record a baseline with "
                        f"`{RECORD}`.")
    empty = sorted(name for name, times in samples.items() if not times)
    if empty:
        raise GateError(f"{path}: no raw samples for {', '.join(empty[:3])}: record baselines with "
                        f"--benchmark-save-data (`{RECORD}`).")
    if recorded_on != card:
        raise GateError(f"{path} was recorded on {recorded_on!r}, this runner is {card!r}: a baseline times one card "
                        f"model. Record one for this card with `{RECORD}`.")
    if not re.fullmatch(r"[0-9a-f]{40}", str(commit)):
        raise GateError(f"{path} records no commit (commit_info.id = {commit!r}): the gate imports its base arm from "
                        f"that commit. Record the baseline from a git checkout with `{RECORD}`.")
    return Baseline(path, commit, tree, data.get("datetime", "?"), samples)


def load_bands(path: Path) -> dict[str, float]:
    """bands.json: {benchmark name: band share}; {} if absent, GateError if it does not parse."""
    from . import gate

    if not path.exists():
        return {}
    try:
        bands = json.loads(path.read_text())
        if not isinstance(bands, dict):
            raise ValueError(f"a JSON object of benchmark name -> band is needed, got {type(bands).__name__}")
        for name, band in bands.items():
            gate.check_band(name, band)
    except (OSError, ValueError) as e:
        raise GateError(f"the band file {path} does not parse ({e}). Fix it, delete it to use the default bands, or "
                        f"write it anew with `python -m perf.gate calibrate`.") from None
    return bands


def git(*args: str, repo: Path = ROOT, text: bool = True) -> subprocess.CompletedProcess:
    """`git -C repo ARGS`, output captured; GateError if git is missing."""
    exe = shutil.which("git")
    if exe is None:
        raise GateError("git is not on PATH: the gate needs it to import its base arm from a commit.")
    return subprocess.run([exe, "-C", str(repo), *args], capture_output=True, text=text, check=False)


def generators_tree(commit: str = "HEAD", repo: Path = ROOT) -> str | None:
    """Git's tree id of generators/ at `commit`, or None if there is none."""
    out = git("rev-parse", "--verify", "--quiet", f"{commit}:generators", repo=repo)
    return out.stdout.strip() if out.returncode == 0 else None


def generators_dirty(repo: Path = ROOT) -> list[str]:
    """Files of generators/ that differ from HEAD, untracked ones included (ignored ones, like caches, not)."""
    out = git("status", "--porcelain", "--untracked-files=all", "--", "generators", repo=repo)
    if out.returncode != 0:
        raise GateError(f"git status failed in {repo}: {out.stderr.strip()}")
    return [line[3:] for line in out.stdout.splitlines()]


def check_recordable(repo: Path = ROOT) -> str:
    """The tree id a recording will store; GateError if generators/ is not exactly a commit's."""
    dirty = generators_dirty(repo)
    if dirty:
        raise GateError(f"refusing to record a baseline: generators/ differs from HEAD ({', '.join(dirty[:5])}). A "
                        f"baseline names the commit it timed, and the gate imports that commit as its base arm: "
                        f"commit first, then record.")
    tree = generators_tree("HEAD", repo)
    if tree is None:
        raise GateError(f"refusing to record a baseline: HEAD has no generators/ in {repo}.")
    return tree
