"""The memory-bandwidth floor (bench.roofline and friends) and its table columns, checked against hand sums."""

from __future__ import annotations

import math

import pytest
import torch

from generators import bench, models, report

F32 = 4  # bytes


def tiny_gpt2_params(tied: bool) -> int:
    """tiny-gpt2's parameter count from its config (n_layer=2, n_embd=64, vocab 512, n_positions 256)."""
    d, vocab, positions = 64, 512, 256
    layer = (2 * d                        # ln_1
             + d * 3 * d + 3 * d          # c_attn (Conv1D: weight + bias)
             + d * d + d                  # attn c_proj
             + 2 * d                      # ln_2
             + d * 4 * d + 4 * d          # mlp c_fc
             + 4 * d * d + d)             # mlp c_proj
    wte, wpe, ln_f = vocab * d, positions * d, 2 * d
    lm_head = 0 if tied else vocab * d    # no bias
    return wte + wpe + 2 * layer + ln_f + lm_head


def test_weight_bytes_counts_the_tied_matrix_once() -> None:
    model = models.build("tiny-gpt2")
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied: one matrix
    assert bench.weight_bytes(model) == tiny_gpt2_params(tied=True) * F32 == 149_248 * F32
    assert bench.weight_bytes(model) != tiny_gpt2_params(tied=False) * F32  # counting lm_head again is wrong


def test_weight_bytes_follows_the_dtype() -> None:
    assert bench.weight_bytes(models.build("tiny-gpt2", dtype="bfloat16")) == tiny_gpt2_params(tied=True) * 2


def test_kv_bytes_per_position_uses_kv_heads() -> None:
    # tiny-llama: 2 layers, 4 query heads but 2 KV heads (GQA), head_dim 64 / 4 = 16, float32
    assert bench.kv_bytes_per_position(models.build("tiny-llama"), batch=3) == 2 * 2 * 2 * 16 * F32 * 3
    # tiny-gpt2 has no num_key_value_heads: every head is cached
    assert bench.kv_bytes_per_position(models.build("tiny-gpt2"), batch=1) == 2 * 2 * 4 * 16 * F32
    assert bench.kv_bytes_per_position(models.build("tiny-llama", dtype="bfloat16"), batch=1) == 2 * 2 * 2 * 16 * 2


def test_roofline_by_hand() -> None:
    model = models.build("tiny-gpt2")
    # Streamed weights: everything but wpe (256 x 64, only looked up); wte stays, lm_head reads it whole.
    streamed = (149_248 - 256 * 64) * F32
    kv = 2 * 2 * 4 * 16 * F32 * 2  # batch 2
    # prompt 3, 4 steps: the prefill touches 3 positions, decode steps 1..3 touch 4, 5, 6
    total = 4 * streamed + kv * (3 + 4 + 5 + 6)
    assert total == 2_162_688
    roof = bench.roofline(model, batch=2, prompt_len=3, steps=4, bandwidth=1e9)
    assert roof["bytes_per_step"] == total / 4
    assert roof["floor_s"] == pytest.approx(total / 1e9)
    # one step: exactly the weights and the prompt's KV
    assert bench.roofline(model, 2, 3, 1, 1e9)["bytes_per_step"] == streamed + 3 * kv


def test_roofline_untied_embedding_is_not_streamed() -> None:
    model = models.build("tiny-llama")  # embed_tokens (512 x 64) is untied: a step reads B of its rows
    assert not model.config.tie_word_embeddings
    roof = bench.roofline(model, batch=1, prompt_len=1, steps=1, bandwidth=1.0)
    assert roof["bytes_per_step"] == bench.weight_bytes(model) - 512 * 64 * F32 + 2 * 2 * 2 * 16 * F32


def test_roofline_rejects_empty_generation() -> None:
    with pytest.raises(ValueError, match="steps"):
        bench.roofline(models.build("tiny-gpt2"), 1, 1, 0, 1e9)


def test_copy_bandwidth_is_measured_once() -> None:
    bw = bench.copy_bandwidth("cpu")
    assert math.isfinite(bw) and 1e8 < bw < 1e13  # between 0.1 GB/s and 10 TB/s
    assert bench.copy_bandwidth(torch.device("cpu")) == bw  # cached per device


def test_measure_and_roofline_info_fill_the_floor() -> None:
    model = models.build("tiny-gpt2")
    m = bench.measure("kv_static", model, batch=2, max_new_tokens=4, reps=1, warmup=0)
    expected = bench.roofline(model, 2, 1, m.steps, bench.copy_bandwidth("cpu"))
    assert m.bytes_per_step == expected["bytes_per_step"] and m.floor_s == expected["floor_s"]
    assert m.bandwidth_utilisation == m.floor_s / m.median_s > 0
    row = m.summary()
    assert row["floor_ms"] == 1e3 * m.floor_s and row["bandwidth_utilisation"] == m.bandwidth_utilisation
    info = bench.roofline_info(model, 2, 1, m.steps, m.median_s, "cpu")
    assert info["bytes_per_step"] == m.bytes_per_step
    assert info["floor_ms"] == pytest.approx(1e3 * m.floor_s)
    assert info["bandwidth_utilisation"] == pytest.approx(m.bandwidth_utilisation)
    assert info["copy_GBps"] == bench.copy_bandwidth("cpu") / 1e9


def _row(variant: str, **extra) -> dict:
    return {"variant": variant, "batch": 32, "max_new_tokens": 100, "steps": 100, "mean_ms": 50.0, "std_ms": 1.0,
            "min_ms": 49.0, "max_ms": 51.0, "median_ms": 50.0, "tokens_per_s": 64_000.0, "peak_allocated": None,
            "peak_reserved": None, "fragmentation": None, "same_tokens_as_naive": True, **extra}


def test_table_shows_the_roofline_columns_and_old_rows() -> None:
    new = _row("naive", bytes_per_step=512.5e6, floor_ms=7.1, bandwidth_utilisation=0.142)
    old = _row("kv_static")  # results.json written before the roofline columns
    lines = report.table([new, old]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[9:12] == ["MB/step", "floor ms", "of floor"]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert len(cells) == len(header) and cells[9:12] == ["512.50", "7.10", "14.2%"]
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert len(cells) == len(header) and cells[9:12] == ["-", "-", "-"]
