"""Images a training run writes: sample grids (reals.png, fakes<kimg>.png) and the curves plot.

The plot is drawn with PIL (no matplotlib dependency): one panel per series, x = kimg.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .snapshot import atomic_write_bytes

__all__ = ["grid_size", "save_image_grid", "plot_stats", "read_stats", "PLOT_SERIES"]


def grid_size(resolution: int, *, cpu: bool) -> tuple[int, int]:
    """(columns, rows) of the sample grids: the official 7680x4320-pixel canvas, clipped to 7..32 x
    4..32 images; on CPU at most 8x8 images (every snapshot renders them)."""
    gw = int(np.clip(7680 // resolution, 7, 32))
    gh = int(np.clip(4320 // resolution, 4, 32))
    if cpu:
        gw, gh = min(gw, 8), min(gh, 8)
    return gw, gh


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_image_grid(images, path, *, grid: tuple[int, int], drange=(-1, 1)) -> Path:
    """images [N, C, H, W] (numpy or tensor, values in `drange`; uint8 when drange=(0, 255)) -> PNG."""
    from PIL import Image

    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    images = np.asarray(images, dtype=np.float32)
    lo, hi = drange
    images = np.rint((images - lo) * (255 / (hi - lo))).clip(0, 255).astype(np.uint8)
    gw, gh = grid
    n, c, h, w = images.shape
    canvas = np.zeros([gh * h, gw * w, c], dtype=np.uint8)
    for i in range(min(n, gw * gh)):
        r, col = divmod(i, gw)
        canvas[r * h:(r + 1) * h, col * w:(col + 1) * w] = images[i].transpose(1, 2, 0)
    if c == 1:
        img = Image.fromarray(canvas[:, :, 0], "L")
    else:
        img = Image.fromarray(canvas[:, :, :3], "RGB")
    return atomic_write_bytes(path, _png_bytes(img))


def read_stats(path) -> list[dict]:
    """The tick records of a stats.jsonl (lines with a 'tick' key); unreadable lines are skipped
    (a killed process can leave a partial last line)."""
    out = []
    try:
        with open(path, "r", encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "tick" in rec and "event" not in rec:
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out


PLOT_SERIES: tuple[tuple[str, str], ...] = (
    ("Loss/G/loss", "G loss (softplus(-D(G(z))))"),
    ("Loss/D/loss", "D loss"),
    ("Loss/r1_penalty", "R1 penalty"),
    ("Loss/pl_penalty", "path-length penalty"),
    ("Loss/signs/real", "E[sign(D(real))] (ADA r_t)"),
    ("p", "augment p"),
)

_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def _nice(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.1e}"


def plot_stats(records: Sequence[dict], path, *, series=PLOT_SERIES, title: str = "") -> Path:
    """Draw one panel per series (x = kimg) into a PNG written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    W, PH, ML, MR, MT, MB = 640, 150, 64, 16, 28, 26
    n = len(series)
    H = 30 + n * PH
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((ML, 8), title or "training curves", fill=(0, 0, 0), font=font)
    for idx, (key, label) in enumerate(series):
        top = 30 + idx * PH
        x0, y0, x1, y1 = ML, top + MT - 8, W - MR, top + PH - MB
        d.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
        d.text((x0, top + 2), label, fill=(0, 0, 0), font=font)
        pts = [(float(r["kimg"]), float(r[key])) for r in records
               if key in r and r[key] is not None and "kimg" in r and math.isfinite(float(r[key]))]
        if not pts:
            d.text((x0 + 8, (y0 + y1) // 2 - 6), "no data yet", fill=(128, 128, 128), font=font)
            continue
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        xmin, xmax = min(xs), max(xs)
        ymin, ymax = min(ys), max(ys)
        if xmax == xmin:
            xmax = xmin + 1e-3
        if ymax == ymin:
            pad = abs(ymin) * 0.1 or 1.0
            ymin, ymax = ymin - pad, ymax + pad

        def to_px(x, y):
            px = x0 + (x - xmin) / (xmax - xmin) * (x1 - x0)
            py = y1 - (y - ymin) / (ymax - ymin) * (y1 - y0)
            return px, py

        for frac in (0.0, 0.5, 1.0):  # y grid and labels
            yv = ymin + frac * (ymax - ymin)
            _, py = to_px(xmin, yv)
            d.line([x0, py, x1, py], fill=(230, 230, 230))
            d.text((4, py - 6), _nice(yv), fill=(60, 60, 60), font=font)
        d.text((x0, y1 + 4), f"{_nice(xmin)} kimg", fill=(60, 60, 60), font=font)
        d.text((x1 - 70, y1 + 4), f"{_nice(xmax)} kimg", fill=(60, 60, 60), font=font)
        color = _COLORS[idx % len(_COLORS)]
        line = [to_px(x, y) for x, y in pts]
        if len(line) == 1:
            px, py = line[0]
            d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        else:
            d.line(line, fill=color, width=2)
    return atomic_write_bytes(path, _png_bytes(img))
