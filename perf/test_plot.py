"""Unit tests for the stdlib-only PNG bar chart writer (no GPU, no plotting libraries)."""

from __future__ import annotations

import math
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest

from generators.plot import PALETTE, _fmt, write_bar_chart

GROUPS = ["b=1", "b=4", "b=32 n=100"]
SERIES: dict[str, list[float | None]] = {"naive": [410.0, 1200.0, 3500.0], "cuda-graph": [40e3, None, 350e3]}


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Parse the PNG by hand (checking every CRC) and return width, height and the RGB rows."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(tag + body), tag
        chunks.append((tag, body))
        pos += 12 + length
    assert [t for t, _ in chunks][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color_type, interlace) == (8, 2, 0)
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    stride = 1 + 3 * width
    rows = [raw[y * stride:(y + 1) * stride] for y in range(height)]
    assert all(row[0] == 0 for row in rows)  # filter type None on every row
    return width, height, [row[1:] for row in rows]


def pixel_counts(rows: list[bytes]) -> Counter[tuple[int, int, int]]:
    return Counter(px for row in rows for px in zip(row[0::3], row[1::3], row[2::3], strict=True))


def test_png_structure_and_pixels(tmp_path: Path) -> None:
    out = tmp_path / "chart.png"
    write_bar_chart(out, "tokens/s by variant and batch size", GROUPS, SERIES)
    width, height, rows = read_png(out)
    assert 600 <= width <= 4000 and 400 <= height <= 3000
    assert len(rows) == height and all(len(r) == 3 * width for r in rows)
    counts = pixel_counts(rows)
    assert len(counts) > 2  # not a blank (single colour) image: bars, axes and text were drawn
    assert counts.get(PALETTE[0], 0) > 500 and counts.get(PALETTE[1], 0) > 500  # both series' bars


def test_log_y_lifts_small_bars(tmp_path: Path) -> None:
    # On a linear axis a bar 100x below the tallest is a sliver; on a log axis it is a substantial bar.
    series = {"naive": [1000.0, 1000.0], "cuda-graph": [100e3, 100e3]}
    write_bar_chart(tmp_path / "lin.png", "lin", ["b=1", "b=4"], series)
    write_bar_chart(tmp_path / "log.png", "log", ["b=1", "b=4"], series, log_y=True)
    lin = pixel_counts(read_png(tmp_path / "lin.png")[2])
    log = pixel_counts(read_png(tmp_path / "log.png")[2])
    assert log[PALETTE[0]] > 5 * lin[PALETTE[0]]
    assert log[PALETTE[1]] > 0


def test_missing_values_draw_nothing(tmp_path: Path) -> None:
    write_bar_chart(tmp_path / "c.png", "t", ["b=1"], {"a": [None], "b": [5.0]})
    counts = pixel_counts(read_png(tmp_path / "c.png")[2])
    assert counts.get(PALETTE[0], 0) == 16 * 16  # only the legend swatch, no bar
    assert counts[PALETTE[1]] > 16 * 16


def test_many_series_cycle_palette(tmp_path: Path) -> None:
    series = {f"variant-{i}": [float(i + 1), None] for i in range(len(PALETTE) + 3)}
    write_bar_chart(tmp_path / "c.png", "many", ["b=1", "b=4"], series, log_y=True)
    width, height, _ = read_png(tmp_path / "c.png")
    assert width > 0 and height > 0


def test_compact_tick_labels() -> None:
    assert [_fmt(v) for v in (0, 250, 1200, 35e3, 1.5e6)] == ["0", "250", "1.2k", "35k", "1.5M"]


@pytest.mark.parametrize(
    ("groups", "series", "log_y", "match"),
    [
        ([], {"a": []}, False, "at least one"),
        (["b=1"], {}, False, "at least one"),
        (["b=1", "b=4"], {"naive": [1.0]}, False, "naive"),
        (["b=1"], {"naive": [math.nan]}, False, "naive"),
        (["b=1"], {"naive": [math.inf]}, False, "finite"),
        (["b=1"], {"naive": [-1.0]}, False, ">= 0"),
        (["b=1"], {"naive": [0.0]}, True, "> 0"),
        (["b=1"], {"naive": ["12"]}, False, "naive"),
    ],
)
def test_bad_inputs_raise(tmp_path: Path, groups, series, log_y, match) -> None:
    with pytest.raises(ValueError, match=match):
        write_bar_chart(tmp_path / "bad.png", "t", groups, series, log_y=log_y)
    assert not (tmp_path / "bad.png").exists()
