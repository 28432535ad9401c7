"""Timing and memory of one generator on one grid point: what the main job and the perf suite both report."""

from __future__ import annotations

import functools
import gc
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from . import GENERATORS, release_sessions
from .lean import kv_heads_and_dim


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

    `registry`: another copy's GENERATORS (the perf gate's base arm), timed by this same harness."""
    _sync(input_ids.device)
    start = time.perf_counter()
    out = (GENERATORS if registry is None else registry)[name](model, input_ids, max_new_tokens, eos_token_id=eos)
    _sync(input_ids.device)
    return time.perf_counter() - start, out


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


# --- The memory-bandwidth floor (roofline) of a generation ---------------------------------------------------
# A decode step at these batch sizes is memory-bound: it reads every weight once, plus the KV cache. So the
# bytes a step must move, over the card's copy bandwidth, bound how fast ANY exact greedy loop can be, the same
# for every variant; each variant's floor_s / median_s says how far it is from that limit.

def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, each storage once (GPT-2's lm_head is wte's storage: counted once)."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


def _lookup_only_bytes(model: torch.nn.Module) -> int:
    """Bytes of embedding tables that are only looked up (a step reads B rows of them, not the table).

    A table tied to a matmul weight (GPT-2's wte, read whole by lm_head) is not lookup-only.
    """
    def ptr(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    tables = {ptr(m.weight): m.weight.untyped_storage().nbytes() for m in model.modules()
              if isinstance(m, torch.nn.Embedding)}
    read_whole = {ptr(p) for m in model.modules() if not isinstance(m, torch.nn.Embedding)
                  for p in m.parameters(recurse=False)}
    return sum(n for k, n in tables.items() if k not in read_whole)


def kv_bytes_per_position(model: torch.nn.Module, batch: int) -> int:
    """Bytes of K and V for one position over all layers and `batch` rows: 2 * layers * kv_heads * head_dim
    * element size * batch. GQA models (Llama) cache num_key_value_heads, not num_attention_heads."""
    config = model.config.get_text_config()
    kv_heads, head_dim = kv_heads_and_dim(config)
    element = next(model.parameters()).element_size()  # the cache has the model's dtype
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element * batch


def copy_bandwidth(device: torch.device | str) -> float:
    """The device's measured copy bandwidth, bytes read + bytes written per second; measured once per device
    per process. On CUDA the first call briefly allocates 1 GiB (freed after)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # "cuda" and "cuda:0" share one measurement
    return _copy_bandwidth(str(device))


@functools.cache
def _copy_bandwidth(device_name: str) -> float:
    device = torch.device(device_name)
    on_cuda = device.type == "cuda"
    # Far larger than any cache (H100/H200 L2: 50 MiB), so it measures DRAM; smaller on CPU so CI stays fast.
    # On CPU this is the bandwidth of torch's threads as set (the main job runs one).
    size = (512 if on_cuda else 64) * 2**20
    src = torch.ones(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first touch of dst's pages, kernel load
    times = []
    for _ in range(5):
        if on_cuda:
            with torch.cuda.device(device):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                dst.copy_(src)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    del src, dst
    if on_cuda:
        torch.cuda.empty_cache()  # do not leave 1 GiB reserved in the allocator the measurements report
    # The best copy, not the median: the floor must be a lower bound, so the bandwidth is the most the card did.
    return 2 * size / min(times)


def roofline(model: torch.nn.Module, batch: int, prompt_len: int, steps: int, bandwidth: float) -> dict:
    """The bytes a generation of `steps` tokens must move, and the time that takes at `bandwidth` (bytes/s).

    A generation is `steps` forward passes. Step 0 (prefill) reads the weights and writes the KV of the
    prompt_len positions; decode step s (1 .. steps-1) reads the weights and the KV of prompt_len + s
    positions (the prompt_len + s - 1 cached ones read, the new one written). So step s moves
    W + kv * (prompt_len + s), with
      W  = weight_bytes(model) less embedding tables that are only looked up (GPT-2's wpe, Llama's untied
           embed_tokens: a step reads B rows of those, not the table; GPT-2's wte is read whole by lm_head),
      kv = kv_bytes_per_position(model, batch).
    Not counted, so the floor stays a lower bound: activations, the logits (a fused lm_head + argmax need not
    write them), the looked-up embedding rows, and the unused tail of a static cache (a cost of that variant,
    not of the work). Weights that fit in a cache (the tiny CPU models) can beat this floor; GPT-2 small on a
    GPU cannot. A no-cache loop (naive) recomputes K and V instead of reading them, but costs far more.

    Returns bytes_per_step (the mean over the steps) and floor_s (all steps' bytes / bandwidth).
    """
    if steps < 1 or prompt_len < 1:
        raise ValueError(f"steps and prompt_len must be >= 1, got steps={steps}, prompt_len={prompt_len}")
    streamed = weight_bytes(model) - _lookup_only_bytes(model)
    positions = steps * prompt_len + steps * (steps - 1) // 2  # sum of prompt_len + s over s = 0 .. steps-1
    total = steps * streamed + kv_bytes_per_position(model, batch) * positions
    return {"bytes_per_step": total / steps, "floor_s": total / bandwidth}


def roofline_info(model: torch.nn.Module, batch: int, prompt_len: int, steps: int, median_s: float,
                  device: torch.device | str) -> dict:
    """roofline() at the device's copy bandwidth, for pytest-benchmark's extra_info. Call it after reading
    peak_memory(): the first call on a CUDA device allocates the copy buffers."""
    bandwidth = copy_bandwidth(device)
    roof = roofline(model, batch, prompt_len, steps, bandwidth)
    return {"bytes_per_step": roof["bytes_per_step"], "floor_ms": 1e3 * roof["floor_s"],
            "bandwidth_utilisation": roof["floor_s"] / median_s, "copy_GBps": bandwidth / 1e9}


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
