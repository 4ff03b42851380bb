"""OUT/loss.png: the loss curve, with matplotlib when installed, else a plain PNG of our own.

The fallback keeps training independent of a plotting library: two polylines (train blue,
validation orange) on a white canvas with a light grid, no text.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

Row = tuple[int, float | None, float | None]

TRAIN_RGB = (31, 119, 180)
VAL_RGB = (255, 127, 14)


def write_loss_png(path: Path, rows: Sequence[Row]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on training machines
        import matplotlib.pyplot as plt
    except ImportError:
        write_png(path, render_curves(rows))
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for column, label in ((1, "train"), (2, "val")):
        pts = [(r[0], r[column]) for r in rows if r[column] is not None]
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                label=label,
                marker="." if column == 2 else None,
            )
    ax.set_xlabel("iter")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def render_curves(rows: Sequence[Row], width: int = 640, height: int = 360) -> list[bytearray]:
    """RGB rows of a plot of the train (column 1) and val (column 2) losses against iter."""
    canvas = [bytearray(b"\xff" * (3 * width)) for _ in range(height)]
    margin = 20
    values = [v for r in rows for v in r[1:] if v is not None and math.isfinite(v)]
    iters = [r[0] for r in rows]
    if not values:
        return canvas
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    first, last = min(iters), max(iters)
    span = last - first if last > first else 1

    def xy(it: int, v: float) -> tuple[int, int]:
        x = margin + round((it - first) / span * (width - 2 * margin))
        y = height - margin - round((v - lo) / (hi - lo) * (height - 2 * margin))
        return x, y

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            canvas[y][3 * x : 3 * x + 3] = bytes(rgb)

    for k in range(5):  # light grid
        gy = margin + k * (height - 2 * margin) // 4
        for x in range(margin, width - margin):
            put(x, gy, (225, 225, 225))
    for column, rgb in ((1, TRAIN_RGB), (2, VAL_RGB)):
        pts = [xy(r[0], v) for r in rows if (v := r[column]) is not None and math.isfinite(v)]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            n = max(abs(x1 - x0), abs(y1 - y0), 1)
            for i in range(n + 1):
                x, y = x0 + (x1 - x0) * i // n, y0 + (y1 - y0) * i // n
                put(x, y, rgb)
                put(x, y + 1, rgb)
        for x, y in pts:  # a lone point would otherwise draw nothing
            put(x, y, rgb)
    return canvas


def write_png(path: Path, rgb_rows: Sequence[bytes | bytearray]) -> None:
    """8-bit RGB PNG, filter 0 on every row."""
    height = len(rgb_rows)
    width = len(rgb_rows[0]) // 3 if height else 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(r) for r in rgb_rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)
