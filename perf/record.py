"""What one perf benchmark records: a typed row, stored flat in pytest-benchmark's extra_info.

test_perf.py writes it; the gate (conftest.py), the runner check and the change runs (changes.py) read it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class Row:
    variant: str
    batch: int
    new_tokens: int
    dtype: str
    klass: str  # gate.DEVICE (CUDA-graph loop) or gate.HOST
    steps: int = 0  # tokens generated per row (n of the contract)
    candidate_s: list[float] = field(default_factory=list)  # this tree's timed rounds
    base_s: list[float] | None = None  # the base arm's, round by round (None: no base arm, or a new variant)
    base_ref: str | None = None  # --ab-base as given, or the stored baseline's commit
    base_commit: str | None = None  # the commit it resolved to
    same_tokens_as_base: bool | None = None  # the last round's outputs (the correctness suite judges tokens)
    base_peak: int | None = None  # bytes above what the process held, each arm from a clean slate (ab.arm_peaks)
    candidate_peak: int | None = None
    peak_allocated: int | None = None  # absolute peaks of the last generation, bytes (CUDA only)
    peak_reserved: int | None = None
    fragmentation: float | None = None
    tokens_per_s: float | None = None
    speedup_vs_naive: float | None = None
    bytes_per_step: float | None = None  # the roofline (generators/bench.py)
    floor_ms: float | None = None
    bandwidth_utilisation: float | None = None
    copy_GBps: float | None = None
    gpu_idle_share: float | None = None  # --trace-steps: share of the traced steps with no kernel running (CUDA only)
    host_wait_us_per_step: float | None = None  # --trace-steps: the host blocked in a synchronisation
    wall_s: float | None = None  # the whole row: warm-up, rounds, memory, compilation included
    started_at: float | None = None  # time.time() as the row began: what a run spent outside its rows
    warmup_s: float | None = None  # the warm-up round, both arms: compilation and capture happen there
    peaks_s: float | None = None  # ab.arm_peaks' generations
    peak_generations: int | None = None  # how many: 4, or 8 where the arms' peaks differed (gate.settled_peaks)
    worker: str | None = None  # the xdist worker that ran it ("gw0"), None without -n
    injected_slowdown: float = 0.0  # test-only --inject-slowdown share of the candidate arm

    def info(self) -> dict:
        return asdict(self)

    @classmethod
    def from_info(cls, info: dict) -> Row:
        """The row back from extra_info; KeyError names a field that a row must have."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in info.items() if k in known})
