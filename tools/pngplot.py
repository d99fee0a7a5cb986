"""A tiny line-plot PNG writer in pure Python (struct + zlib): no plotting library needed.

    from pngplot import line_plot
    line_plot("lag.png", [([(0.0, 0.1), (0.5, 0.3), ...], (200, 40, 40))], markers=[(12.0, "2")])

Draws the series as polylines on a white RGB canvas with axes, tick marks, a light grid and
tick labels in 5x7 digit glyphs; optional vertical markers (dashed, labelled) at given x values.
A series is broken where consecutive points are more than ``gap`` apart on x.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

Color = tuple[int, int, int]
Series = tuple[Sequence[tuple[float, float]], Color]
BLACK, GREY, LIGHT, WHITE = (0, 0, 0), (120, 120, 120), (228, 228, 228), (255, 255, 255)

# 5x7 glyphs, one 5-bit row per entry (MSB = leftmost pixel)
GLYPHS: dict[str, tuple[int, ...]] = {
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14), "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14), "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8), "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12), ".": (0, 0, 0, 0, 0, 12, 12), "-": (0, 0, 0, 31, 0, 0, 0),
    "s": (0, 0, 14, 16, 14, 1, 30), " ": (0,) * 7,
}


class Canvas:
    def __init__(self, width: int, height: int, bg: Color = WHITE) -> None:
        self.w, self.h = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def set(self, x: int, y: int, c: Color) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i : i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: Color, width: int = 1, dash: int = 0) -> None:
        """Bresenham; ``width`` 2 thickens downwards/rightwards; ``dash`` > 0 draws dash-long on/off runs."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, n = dx + dy, 0
        while True:
            if not dash or (n // dash) % 2 == 0:
                for k in range(width):
                    self.set(x0 + (k if dx < -dy else 0), y0 + (k if dx >= -dy else 0), c)
            if x0 == x1 and y0 == y1:
                return
            e2, n = 2 * err, n + 1
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def text(self, x: int, y: int, s: str, c: Color = BLACK) -> None:
        """Draw ``s`` with its top-left corner at (x, y); characters without a glyph are skipped."""
        for ch in s:
            for row, bits in enumerate(GLYPHS.get(ch, ())):
                for col in range(5):
                    if bits & (16 >> col):
                        self.set(x + col, y + row, c)
            x += 6

    def png(self) -> bytes:
        stride = self.w * 3
        raw = b"".join(b"\x00" + bytes(self.px[y * stride : (y + 1) * stride]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        ihdr = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(
            b"IEND", b"")

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.png())


def ticks(lo: float, hi: float, want: int = 6, cover: bool = False) -> list[float]:
    """Round tick values (1, 2, 5 times a power of ten) within [lo, hi]; ``cover``: the last one >= hi."""
    span = max(hi - lo, 1e-9)
    mag = 10 ** math.floor(math.log10(span / want))
    step = next(m * mag for m in (1, 2, 5, 10) if span / (m * mag) <= want)
    first = math.ceil(lo / step - 1e-9) * step
    n = (math.ceil if cover else math.floor)((hi - first) / step - (1e-9 if cover else -1e-9))
    return [first + i * step for i in range(int(n) + 1)]


def label(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-6 else f"{v:.2f}".rstrip("0")


def line_plot(path: str, series: Sequence[Series], markers: Sequence[tuple[float, str]] = (),
              width: int = 900, height: int = 420, gap: float = math.inf, x_unit: str = "s") -> None:
    """Plot ``series`` ((points, color) pairs) to a PNG at ``path``; y starts at 0."""
    xs = [x for pts, _ in series for x, _ in pts] + [m for m, _ in markers]
    ys = [y for pts, _ in series for _, y in pts]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    yt = ticks(0, max(max(ys, default=0.0), 0.1), cover=True)
    y_hi = yt[-1]
    left, right, top, bottom = 52, width - 16, 16, height - 30
    c = Canvas(width, height)

    def px(x: float, y: float) -> tuple[int, int]:
        return (left + round((x - x_lo) / (x_hi - x_lo) * (right - left)),
                bottom - round(min(y, y_hi) / y_hi * (bottom - top)))

    for v in yt:
        _, y = px(x_lo, v)
        c.line(left + 1, y, right, y, LIGHT)
        c.line(left - 5, y, left, y, BLACK)
        c.text(left - 8 - 6 * len(label(v)), y - 3, label(v))
    for v in ticks(x_lo, x_hi, 10):
        x, _ = px(v, 0)
        c.line(x, bottom + 1, x, bottom + 5, BLACK)
        c.text(x - 3 * len(label(v) + x_unit), bottom + 9, label(v) + x_unit)
    for m, name in markers:
        x, _ = px(m, 0)
        c.line(x, top, x, bottom, GREY, dash=4)
        c.text(x + 3, top, name, GREY)
    c.line(left, top, left, bottom, BLACK)
    c.line(left, bottom, right, bottom, BLACK)
    for pts, color in series:
        prev: tuple[float, float] | None = None
        for x, y in sorted(pts):
            if prev is not None and x - prev[0] <= gap:
                c.line(*px(*prev), *px(x, y), color, width=2)
            else:
                c.set(*px(x, y), color)
            prev = (x, y)
    c.save(path)
