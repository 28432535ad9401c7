"""Grouped bar chart written straight to PNG, using only the standard library (zlib + struct).

The benchmark's main job plots tokens/s by variant and batch size on machines where matplotlib/PIL may
not be installed; a tiny rasterizer with a built-in bitmap font is all such a chart needs. timeline.py draws its
decode-step timelines with the same Canvas.
"""

from __future__ import annotations

import math
import os
import struct
import zlib

Color = tuple[int, int, int]

# matplotlib's tab10 plus two colours far from it; cycled when there are more series.
PALETTE: list[Color] = [
    (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28),
    (0x94, 0x67, 0xBD), (0x8C, 0x56, 0x4B), (0xE3, 0x77, 0xC2), (0x7F, 0x7F, 0x7F),
    (0xBC, 0xBD, 0x22), (0x17, 0xBE, 0xCF), (0x39, 0x3B, 0x79), (0x98, 0xDF, 0x8A),
]
WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (225, 225, 225)

# 5x7 font: 7 rows per glyph, two hex digits each; bit 4 is the leftmost pixel.
_FONT = {
    " ": "00000000000000", "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F",
    "3": "1F02040201110E", "4": "02060A121F0202", "5": "1F101E0101110E", "6": "0608101E11110E",
    "7": "1F010204080808", "8": "0E11110E11110E", "9": "0E11110F01020C", "A": "0E1111111F1111",
    "B": "1E11111E11111E", "C": "0E11101010110E", "D": "1C12111111121C", "E": "1F10101E10101F",
    "F": "1F10101E101010", "G": "0E11101711110F", "H": "1111111F111111", "I": "0E04040404040E",
    "J": "0702020202120C", "K": "11121418141211", "L": "1010101010101F", "M": "111B1515111111",
    "N": "11111915131111", "O": "0E11111111110E", "P": "1E11111E101010", "Q": "0E11111115120D",
    "R": "1E11111E141211", "S": "0F10100E01011E", "T": "1F040404040404", "U": "1111111111110E",
    "V": "11111111110A04", "W": "1111111515150A", "X": "11110A040A1111", "Y": "1111110A040404",
    "Z": "1F01020408101F", "a": "00000E010F110F", "b": "1010161911111E", "c": "00000E1010110E",
    "d": "01010D1311110F", "e": "00000E111F100E", "f": "0609081C080808", "g": "0F1111110F010E",
    "h": "10101619111111", "i": "04000C0404040E", "j": "0200060202120C", "k": "10101214181412",
    "l": "0C04040404040E", "m": "00001A15151111", "n": "00001619111111", "o": "00000E1111110E",
    "p": "1E1111111E1010", "q": "0F1111110F0101", "r": "00001619101010", "s": "00000E100E011E",
    "t": "08081C08080906", "u": "0000111111130D", "v": "00001111110A04", "w": "0000111115150A",
    "x": "0000110A040A11", "y": "111111110F010E", "z": "00001F0204081F", ".": "00000000000C0C",
    ",": "000000000C0408", ":": "000C0C000C0C00", ";": "000C0C000C0408", "-": "0000001F000000",
    "_": "0000000000001F", "=": "00001F001F0000", "+": "0004041F040400", "/": "00010204081000",
    "(": "02040808080402", ")": "08040202020408", "[": "0E08080808080E", "]": "0E02020202020E",
    "%": "18190204081303", "<": "02040810080402", ">": "08040201020408", "*": "0004150E150400",
    "!": "04040404000004", "?": "0E110102040004", "'": "0C040800000000", "#": "0A0A1F0A1F0A0A",
    "|": "04040404040404", "&": "0C12140815120D", '"': "0A0A0A00000000", "@": "0E11010D15150E",
}
_GLYPHS = {ch: bytes.fromhex(rows) for ch, rows in _FONT.items()}  # fromhex skips the spaces above
_BOX = bytes.fromhex("1F11111111111F")  # unknown characters stay visible instead of vanishing
_DESCENDERS = "gpqy"  # drawn 2 rows lower so their tails hang below the baseline


def text_width(s: str, scale: int) -> int:
    return max(0, len(s) * 6 * scale - scale)


class Canvas:
    """RGB pixel buffer with clipped rectangle fills, bitmap text and PNG encoding."""

    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.buf = bytearray(bytes(WHITE) * (w * h))

    def rect(self, x0: int, y0: int, x1: int, y1: int, c: Color) -> None:
        """Fill [x0, x1) x [y0, y1); clipping lets callers ignore the image edges."""
        x0, x1, y0, y1 = max(0, x0), min(self.w, x1), max(0, y0), min(self.h, y1)
        if x0 >= x1:
            return
        row = bytes(c) * (x1 - x0)
        for y in range(y0, y1):
            o = (y * self.w + x0) * 3
            self.buf[o:o + len(row)] = row

    def text(self, x: int, y: int, s: str, c: Color, scale: int = 2, vertical: bool = False) -> None:
        """(x, y) is the top-left corner; vertical text reads bottom-to-top and (x, y) is its bottom-left."""
        for i, ch in enumerate(s):
            dy = 2 if ch in _DESCENDERS else 0
            for r, bits in enumerate(_GLYPHS.get(ch, _BOX)):
                for col in range(5):
                    if bits & (16 >> col):
                        u, v = (i * 6 + col) * scale, (r + dy) * scale
                        if vertical:
                            self.rect(x + v, y - u - scale, x + v + scale, y - u, c)
                        else:
                            self.rect(x + u, y + v, x + u + scale, y + v + scale, c)

    def png(self) -> bytes:
        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

        stride = self.w * 3  # each row gets filter byte 0 (None): simple, and zlib still compresses well
        raw = b"".join(b"\x00" + self.buf[y * stride:(y + 1) * stride] for y in range(self.h))
        ihdr = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
                + chunk(b"IEND", b""))


def _fmt(v: float) -> str:
    """Compact tick label: 1.2k, 35k, 1.5M."""
    for unit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= unit:
            return f"{v / unit:.3g}{suffix}"
    return f"{v:.3g}"


def axis(values: list[float], log_y: bool) -> tuple[float, float, list[float]]:
    """Axis range (lo, hi) and ~5 round tick values covering every value."""
    if log_y:
        lo_e = math.ceil(math.log10(min(values))) - 1 if values else 0  # min never sits on the axis
        hi_e = max(lo_e + 1, math.ceil(math.log10(max(values)))) if values else 1
        step = math.ceil((hi_e - lo_e) / 6)  # at most ~6 decade labels however wide the span
        hi_e = lo_e + step * math.ceil((hi_e - lo_e) / step)
        ticks = [10.0**e for e in range(lo_e, hi_e + 1, step)]
        if hi_e - lo_e <= 2:  # one or two decades alone give too few labels to read values off
            ticks = sorted(m * 10.0**e for e in range(lo_e, hi_e) for m in (1, 2, 5)) + [10.0**hi_e]
        return 10.0**lo_e, 10.0**hi_e, ticks
    vmax = max(values, default=0.0) or 1.0
    mag = 10.0 ** math.floor(math.log10(vmax / 5))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag * 5 >= vmax)
    n = math.ceil(vmax / step - 1e-9)
    return 0.0, n * step, [i * step for i in range(n + 1)]


def write_bar_chart(path: str | os.PathLike, title: str, groups: list[str],
                    series: dict[str, list[float | None]], y_label: str = "tokens/s",
                    log_y: bool = False) -> None:
    """Write a grouped bar chart PNG: one bar per series in each group; None values draw nothing."""
    if not groups or not series:
        raise ValueError("need at least one group and one series")
    for name, vals in series.items():
        if len(vals) != len(groups):
            raise ValueError(f"series {name!r} has {len(vals)} values for {len(groups)} groups")
        for v in vals:
            ok = v is None or (isinstance(v, int | float) and not isinstance(v, bool)
                               and math.isfinite(v) and (v > 0 if log_y else v >= 0))
            if not ok:
                bound = "> 0" if log_y else ">= 0"
                raise ValueError(f"series {name!r}: value {v!r} must be a finite number {bound}")
    values = [float(v) for vals in series.values() for v in vals if v is not None]
    lo, hi, ticks = axis(values, log_y)
    tick_labels = [_fmt(t) for t in ticks]
    names = [n if len(n) <= 30 else n[:28] + ".." for n in series]

    # Layout in pixels; text is scale 2 (12 px per character, 14 px tall) unless noted.
    n_g, n_s = len(groups), len(series)
    left = 16 + 14 + 16 + max(text_width(t, 2) for t in tick_labels) + 10  # y label, gap, tick labels
    plot_w = min(max(700, n_g * (n_s * 14 + 30)), 2400)
    legend_w = 20 + 24 + max(text_width(n, 2) for n in names) + 20
    top, bottom = 64, 56
    plot_h = min(max(440, n_s * 24), 2000)  # tall enough for a one-column legend
    cv = Canvas(left + plot_w + legend_w, top + plot_h + bottom)
    base = top + plot_h  # y of the x axis

    def ypix(v: float) -> int:
        f = (math.log10(v / lo) / math.log10(hi / lo)) if log_y else (v - lo) / (hi - lo)
        return base - round(f * plot_h)

    for t, label in zip(ticks, tick_labels, strict=True):
        y = ypix(t)
        cv.rect(left, y, left + plot_w, y + 1, GRID)
        cv.rect(left - 6, y, left, y + 1, BLACK)
        cv.text(left - 10 - text_width(label, 2), y - 7, label, BLACK)

    group_w = plot_w / n_g
    bar_w = group_w * 0.8 / n_s  # 20% of each group is the gap that separates groups
    label_scale = 2 if max(text_width(g, 2) for g in groups) <= group_w - 6 else 1
    for gi, group in enumerate(groups):
        x_start = left + gi * group_w + group_w * 0.1
        for si, vals in enumerate(series.values()):
            if vals[gi] is None:
                continue
            x0, x1 = round(x_start + si * bar_w), round(x_start + (si + 1) * bar_w)
            gap = 1 if x1 - x0 >= 4 else 0  # a white seam keeps neighbouring bars apart
            cv.rect(x0, min(ypix(float(vals[gi])), base - 1), x1 - gap, base, PALETTE[si % len(PALETTE)])
        label = group[: max(1, int(group_w // (6 * label_scale)))]
        cx = round(left + (gi + 0.5) * group_w)
        cv.text(cx - text_width(label, label_scale) // 2, base + 12, label, BLACK, label_scale)

    cv.rect(left - 1, top, left, base + 1, BLACK)  # axes drawn last so bars never cover them
    cv.rect(left - 1, base, left + plot_w, base + 1, BLACK)

    t_scale = 3 if text_width(title, 3) <= cv.w - 20 else 2
    cv.text((cv.w - text_width(title, t_scale)) // 2, 20, title, BLACK, t_scale)
    cv.text(16, top + (plot_h + text_width(y_label, 2)) // 2, y_label, BLACK, 2, vertical=True)

    lx = left + plot_w + 20
    for si, name in enumerate(names):
        y = top + si * 24
        cv.rect(lx, y, lx + 16, y + 16, PALETTE[si % len(PALETTE)])
        cv.text(lx + 24, y + 1, name, BLACK)

    with open(os.fspath(path), "wb") as f:
        f.write(cv.png())
