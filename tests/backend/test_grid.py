"""Grids as A1111 draws them: rows for batches, and the legend's geometry (font size (w + h) // 25, the top
band, the left band of 3/4 of a cell, margins, grey struck-through inactive texts)."""

import numpy as np
from PIL import Image

from backend.grid import INACTIVE, GridText, annotate, font, make_grid


def _cells(n, size=(64, 48)):
    return [Image.new("RGB", size, (40 * i + 20, 200, 90)) for i in range(n)]


def test_batch_grid_rows_as_a1111():
    assert make_grid(_cells(3)).size == (128, 96)  # round(sqrt(3)) = 2 rows: one empty, black spot
    assert make_grid(_cells(3)).getpixel((64, 48)) == (0, 0, 0)
    assert make_grid(_cells(6)).size == (192, 96)
    assert make_grid(_cells(4), rows=1).size == (256, 48)


def test_legend_geometry():
    w, h = 64, 48
    grid = make_grid(_cells(4), rows=2)
    size = (w + h) // 25
    spacing = size // 2
    measure = Image.new("RGB", (1, 1))
    from PIL import ImageDraw
    box = ImageDraw.Draw(measure).multiline_textbbox((0, 0), "A: 1", font=font(size))
    text_height = box[3] - box[1]
    out = annotate(grid, w, h, [[GridText("A: 1")], [GridText("A: 2")]], [[GridText("B")], [GridText("C")]],
                   margin=6)
    pad_top, pad_left = text_height + spacing * 2, w * 3 // 4
    assert out.size == (2 * w + pad_left + 6, 2 * h + pad_top + 6)
    cell = np.asarray(out)[pad_top + h + 6:, pad_left + w + 6:]
    assert np.array_equal(cell, np.asarray(grid)[h:, w:])  # the last cell, after the margins
    assert np.asarray(out)[pad_top + h + 2, pad_left + 5].tolist() == [255, 255, 255]  # the margin is white


def test_no_text_no_bands():
    grid = make_grid(_cells(2), rows=1)
    out = annotate(grid, 64, 48, [[GridText("")], [GridText("")]], [[GridText()]])
    assert out.size == grid.size


def test_inactive_text_is_grey_and_struck_through():
    grid = make_grid(_cells(2, (256, 200)), rows=1)
    out = np.asarray(annotate(grid, 256, 200, [[GridText("on")], [GridText("off", active=False)]], [[GridText()]]))
    band = out[: out.shape[0] - 200]
    assert (band[:, :256] < 40).all(axis=-1).any()  # black text over the first column
    grey = (band[:, 256:] == INACTIVE).all(axis=-1)
    assert grey.sum() > 40 and not (band[:, 256:] < 40).all(axis=-1).any()


def test_legends_use_a1111s_font():
    assert font(20).getname() == ("Roboto", "Regular")
