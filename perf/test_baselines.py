"""Stored baselines, read fail-closed (perf/store.py), and the ones committed per card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import gate, store

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def baseline(**changes) -> dict:
    data = {"machine_info": {"decode_gate": {"gpu": "NVIDIA H200", "generators_tree": "t" * 40}},
            "commit_info": {"id": COMMIT}, "datetime": "2026-11-30T12:00:00",
            "benchmarks": [{"name": "test_generate[naive-b1-n100-float32]", "stats": {"data": [1.0, 1.1, 0.9]}}]}
    for key, value in changes.items():
        data[key] = value
    return data


def write(folder: Path, name: str, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_the_newest_file_is_read_whole(tmp_path: Path) -> None:
    write(tmp_path, "0001_baseline.json", baseline(commit_info={"id": "f" * 40}))
    write(tmp_path, "0002_baseline.json", baseline())
    b = store.latest(tmp_path, "NVIDIA H200")
    assert (b.path.name, b.commit, b.tree) == ("0002_baseline.json", COMMIT, "t" * 40)
    assert b.samples == {"test_generate[naive-b1-n100-float32]": [1.0, 1.1, 0.9]}
    assert store.latest(tmp_path, "NVIDIA H200", "0001").commit == "f" * 40


@pytest.mark.parametrize("newest, message", [
    (None, "no stored baseline for this card"),
    ("{corrupt", "cannot be read as a baseline"),
    (baseline(benchmarks=[]), "holds no benchmarks"),
    (baseline(benchmarks=[{"name": "b", "stats": {"data": []}}]), "no raw samples"),
    (baseline(benchmarks=[{"name": "b", "stats": {"median": 1.0}}]), "cannot be read as a baseline"),
    (baseline(commit_info={"id": "unknown"}), "records no commit"),
    (baseline(machine_info={"decode_gate": {"gpu": "NVIDIA A100", "generators_tree": "t"}}), "recorded on"),
    (baseline(machine_info={"decode_gate": {"gpu": "NVIDIA H200"}}), "cannot be read as a baseline"),
])
def test_a_baseline_the_gate_cannot_use_is_an_error_never_a_fallback(newest, message: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_baseline.json", baseline())  # a good older file must not be used instead
    if newest is not None:
        write(tmp_path, "0002_baseline.json", newest)
        with pytest.raises(store.GateError, match=message):
            store.latest(tmp_path, "NVIDIA H200")
    else:
        with pytest.raises(store.GateError, match=message):
            store.latest(tmp_path / "empty", "NVIDIA H200")


@pytest.mark.parametrize("text, message", [("{", "does not parse"), ("[]", "JSON object"),
                                           ('{"b": 0.5}', "noise band"), ('{"b": "x"}', "noise band")])
def test_a_band_file_that_does_not_parse_is_an_error(text: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(store.GateError, match=message):
        store.load_bands(write(tmp_path, "bands.json", text))


def test_bands_are_optional(tmp_path: Path) -> None:
    assert store.load_bands(tmp_path / "bands.json") == {}
    assert store.load_bands(write(tmp_path, "bands.json", '{"b": 0.03}')) == {"b": 0.03}


FILES = sorted(store.BASELINES.glob("*/*/*.json"))


def test_a_baseline_is_committed() -> None:
    assert FILES, f"no baseline under {store.BASELINES}"


@pytest.mark.parametrize("folder", sorted({p.parent for p in FILES}), ids=lambda p: str(p.relative_to(store.BASELINES)))
def test_each_cards_newest_baseline_can_gate(folder: Path) -> None:
    card = json.loads(sorted(folder.glob("*.json"))[-1].read_text())["machine_info"]["decode_gate"]["gpu"]
    assert store.slug(card) == folder.parent.name  # the card's folder keeps other cards off its numbers
    b = store.latest(folder, card)
    tree = store.generators_tree(b.commit)
    if tree is None and (store.ROOT / ".git" / "shallow").exists():
        pytest.skip(f"a shallow clone: the baseline's commit {b.commit[:12]} is not here to check")
    assert tree == b.tree, "the stored tree is the recorded commit's generators/"
    bands = folder.parent / store.BANDS
    assert all(0 <= v <= gate.BAND_CAP for v in store.load_bands(bands).values())
