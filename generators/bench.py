"""Timing and memory of one generator on one grid point: what the main job and the perf suite both report.
The floor each time is compared with is roofline.py's."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from . import GENERATORS, release_sessions
from .roofline import copy_bandwidth, kv_bytes_per_position, roofline, roofline_info, weight_bytes

# Also read from bench by perf/ (roofline_info, the tests) and the main job (copy_bandwidth).
__all__ = ["Measurement", "copy_bandwidth", "eos_of", "fragmentation", "fresh_memory", "kv_bytes_per_position",
           "machine_info", "measure", "peak_memory", "post_prompt", "roofline", "roofline_info", "timed_call",
           "weight_bytes"]


def post_prompt(model: torch.nn.Module, batch: int, device: torch.device | str) -> torch.Tensor:
    """The post's prompt: one BOS token per row. [B, 1]"""
    bos = model.config.bos_token_id
    bos = 0 if bos is None else bos
    return torch.full((batch, 1), bos, dtype=torch.long, device=device)


def eos_of(model: torch.nn.Module) -> int | None:
    return model.config.eos_token_id


@dataclass
class Measurement:
    variant: str
    batch: int
    max_new_tokens: int
    times_s: list[float]
    steps: int  # tokens generated per row (n of the contract)
    warmup_s: float  # first call: compilation, graph capture, cache allocation
    peak_allocated: int | None = None  # bytes, CUDA only
    peak_reserved: int | None = None
    bytes_per_step: float | None = None  # roofline(): what one step must move, mean over the generation
    floor_s: float | None = None  # roofline(): the fastest any exact loop could do it at the copy bandwidth
    tokens: torch.Tensor | None = field(default=None, repr=False)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.steps / self.median_s

    @property
    def fragmentation(self) -> float | None:
        return fragmentation(self.peak_allocated, self.peak_reserved)

    @property
    def bandwidth_utilisation(self) -> float | None:
        """floor_s / median_s: the share of the memory-bandwidth limit the loop reaches (1.0 = at the floor)."""
        return None if self.floor_s is None else self.floor_s / self.median_s

    def summary(self) -> dict:
        out = asdict(self)
        del out["tokens"]
        t = self.times_s
        out.update(
            mean_ms=1e3 * statistics.fmean(t),
            std_ms=1e3 * statistics.stdev(t) if len(t) > 1 else 0.0,
            min_ms=1e3 * min(t),
            max_ms=1e3 * max(t),
            median_ms=1e3 * self.median_s,
            tokens_per_s=self.tokens_per_s,
            fragmentation=self.fragmentation,
            floor_ms=None if self.floor_s is None else 1e3 * self.floor_s,
            bandwidth_utilisation=self.bandwidth_utilisation,
        )
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_memory(device: torch.device) -> None:
    """Free every other variant's cached static cache and graph, so peaks belong to the one measured."""
    release_sessions()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed_call(name: str, model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
               eos: int | None, registry: dict | None = None) -> tuple[float, torch.Tensor]:
    """One generation, bracketed by device synchronisation (the generators also sync when they return).

    `registry`: another copy's GENERATORS (the perf gate's base arm), timed by this same harness. The garbage
    collector is paused inside, as timeit does: a full collection of a process that holds compiled code scans
    hundreds of thousands of objects (740 thousand on the CPU machine), and when it lands is chance, not the loop's
    speed."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _sync(input_ids.device)
        start = time.perf_counter()
        out = (GENERATORS if registry is None else registry)[name](model, input_ids, max_new_tokens, eos_token_id=eos)
        _sync(input_ids.device)
        return time.perf_counter() - start, out
    finally:
        if was_enabled:
            gc.enable()


def measure(name: str, model: torch.nn.Module, batch: int, max_new_tokens: int, *, reps: int = 3,
            warmup: int = 1) -> Measurement:
    """Warm up (compile, capture) `warmup` times, then time `reps` generations of the post's prompt."""
    device = next(model.parameters()).device
    input_ids = post_prompt(model, batch, device)
    eos = eos_of(model)
    bandwidth = copy_bandwidth(device)  # before fresh_memory: its first call's buffers must not be in the peak
    fresh_memory(device)
    warm_start = time.perf_counter()
    for _ in range(warmup):
        timed_call(name, model, input_ids, max_new_tokens, eos)
    warmup_s = time.perf_counter() - warm_start
    times, out = [], None
    for _ in range(reps):
        elapsed, out = timed_call(name, model, input_ids, max_new_tokens, eos)
        times.append(elapsed)
    m = Measurement(name, batch, max_new_tokens, times, out.shape[1] - input_ids.shape[1], warmup_s, tokens=out)
    if device.type == "cuda":
        m.peak_allocated, m.peak_reserved = peak_memory(device)
    roof = roofline(model, batch, input_ids.shape[1], m.steps, bandwidth)
    m.bytes_per_step, m.floor_s = roof["bytes_per_step"], roof["floor_s"]
    return m


def fragmentation(peak_allocated: int | None, peak_reserved: int | None) -> float | None:
    """Share of reserved memory not allocated at the peak: what the post's allocator tricks shrink."""
    if not peak_reserved:
        return None
    return 1 - peak_allocated / peak_reserved


def peak_memory(device: torch.device) -> tuple[int, int]:
    """Peak allocated and reserved bytes since fresh_memory(device)."""
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def machine_info(device: torch.device) -> dict:
    """Card, driver and versions: what every number must be reported with."""
    import os
    import platform
    import shutil
    import subprocess

    import transformers

    info = {
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "allocator": os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or "default",
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={device.index or 0}"]
            info["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.strip() or None
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info
