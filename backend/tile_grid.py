"""A1111's tile grid (modules/images.py split_grid / combine_grid): an image cut into overlapping tiles spread
evenly, the last flush with the far edge, and joined again with linear blends over each overlap. Model
upscalers run on it, and so do SD upscale and poor man's outpainting (each tile an img2img job)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class TileGrid:
    width: int
    height: int
    tile_w: int
    tile_h: int
    overlap: int
    rows: list[tuple[int, list[tuple[int, Image.Image]]]]  # (y, [(x, tile), ...]), top to bottom, left to right

    def tiles(self) -> list[tuple[int, int, Image.Image]]:
        """(x, y, tile) in reading order."""
        return [(x, y, tile) for y, row in self.rows for x, tile in row]

    def map(self, change: Callable[[int, int, Image.Image], Image.Image], scale: int = 1) -> TileGrid:
        """A grid of changed tiles; `scale` when each comes back `scale` times larger (an upscaler)."""
        rows = [(y * scale, [(x * scale, change(x, y, tile)) for x, tile in row]) for y, row in self.rows]
        return TileGrid(self.width * scale, self.height * scale, self.tile_w * scale, self.tile_h * scale,
                        self.overlap * scale, rows)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side start. An image smaller than a tile gets one tile (PIL crops beyond an
    image as black)."""
    count = max(1, math.ceil((size - overlap) / (tile - overlap)))
    step = (size - tile) / (count - 1) if count > 1 else 0
    return [size - tile if int(i * step) + tile >= size else int(i * step) for i in range(count)]


def split(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> TileGrid:
    rows = [(y, [(x, image.crop((x, y, x + tile_w, y + tile_h))) for x in tile_starts(image.width, tile_w, overlap)])
            for y in tile_starts(image.height, tile_h, overlap)]
    return TileGrid(image.width, image.height, tile_w, tile_h, overlap, rows)


def _ramp(length: int, across: int, vertical: bool) -> Image.Image:
    values = (np.arange(length, dtype=np.float32) * 255 / max(length, 1)).astype(np.uint8)
    array = np.repeat(values[:, None], across, axis=1) if vertical else np.repeat(values[None, :], across, axis=0)
    return Image.fromarray(array, "L")


def combine(grid: TileGrid) -> Image.Image:
    """Each tile blends linearly into what is already there over the overlap, then covers the rest."""
    overlap, tile_h = grid.overlap, grid.tile_h
    across = _ramp(overlap, tile_h, vertical=False)
    down = _ramp(overlap, grid.width, vertical=True)
    canvas = Image.new("RGB", (grid.width, grid.height))
    for y, row in grid.rows:
        strip = Image.new("RGB", (grid.width, tile_h))
        for x, tile in row:
            if x == 0:
                strip.paste(tile, (0, 0))
                continue
            if overlap:
                strip.paste(tile.crop((0, 0, overlap, tile_h)), (x, 0), mask=across)
            strip.paste(tile.crop((overlap, 0, tile.width, tile_h)), (x + overlap, 0))
        if y == 0:
            canvas.paste(strip, (0, 0))
            continue
        if overlap:
            canvas.paste(strip.crop((0, 0, grid.width, overlap)), (0, y), mask=down)
        canvas.paste(strip.crop((0, overlap, grid.width, tile_h)), (0, y + overlap))
    return canvas
