"""Figures for the README: `python docs/make_figures.py` writes docs/synthfaces_64.png and
docs/synthfaces_128.png, one row of renders per subset (beard, shaved, neither, both)."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data.synthfaces import render_batch  # noqa: E402

SUBSETS = {  # label shown on the left -> attributes pinned
    "beard": dict(has_beard=True, shaved=False),
    "shaved": dict(has_beard=False, shaved=True),
    "neither": dict(has_beard=False, shaved=False),
    "both": dict(has_beard=True, shaved=True),
}


def subset_grid(resolution: int, *, per_row: int = 8, scale: int = 1, seed: int = 2026) -> Image.Image:
    label_w = 64
    cell = resolution * scale
    grid = Image.new("RGB", (label_w + per_row * cell, len(SUBSETS) * cell), "white")
    draw = ImageDraw.Draw(grid)
    for row, (name, fixed) in enumerate(SUBSETS.items()):
        images, _ = render_batch(per_row, resolution, seed=seed + row, **fixed)
        for col, img in enumerate(images):
            tile = Image.fromarray(img).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_w + col * cell, row * cell))
        draw.text((6, row * cell + cell // 2 - 6), name, fill="black")
    return grid


def main() -> None:
    out = Path(__file__).resolve().parent
    subset_grid(64, scale=2).save(out / "synthfaces_64.png")
    subset_grid(128).save(out / "synthfaces_128.png")
    print(out / "synthfaces_64.png")
    print(out / "synthfaces_128.png")


if __name__ == "__main__":
    main()
