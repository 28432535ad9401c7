"""The memory-bandwidth floor (roofline) of a generation.

A decode step at these batch sizes is memory-bound: it reads every weight once, plus the KV cache. So the bytes a
step must move, over the card's copy bandwidth, bound how fast ANY exact greedy loop can be, the same for every
variant; each variant's floor_s / median_s says how far it is from that limit.
"""

from __future__ import annotations

import functools
import time

import torch

from .lean import kv_heads_and_dim
from .timer import cuda_seconds


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
                times.append(cuda_seconds(functools.partial(dst.copy_, src)))
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
