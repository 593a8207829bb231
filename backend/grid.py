"""Image grids for batches, laid out as A1111 does by default (about as many rows as columns)."""

from __future__ import annotations

import math

from PIL import Image


def make_grid(images: list[Image.Image]) -> Image.Image:
    rows = max(1, round(math.sqrt(len(images))))
    while len(images) % rows and rows > 1:
        rows -= 1
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    return grid
