"""Image grids as A1111 draws them (`modules/images.py`): batches laid out in about as many rows as columns, and
the annotated grids of the X/Y/Z plot and the prompt matrix (column texts above, row texts on the left, inactive
texts grey and struck through, optional margins between cells), in A1111's font (Roboto)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

ACTIVE = (0, 0, 0)
INACTIVE = (153, 153, 153)


def make_grid(images: list[Image.Image], rows: int | None = None) -> Image.Image:
    """A1111's image_grid with its default options (n_rows -1): `rows` or round(sqrt(n)) rows, filled row by
    row on black; the last row may have empty spots."""
    rows = rows or max(1, round(math.sqrt(len(images))))
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    return grid


@dataclass
class GridText:
    """One line of a grid's legend; an inactive one (prompt matrix) is grey and struck through."""

    text: str = ""
    active: bool = True


@dataclass
class _Line:
    text: str
    active: bool
    size: tuple[int, int]
    allowed_width: int


def font(size: int) -> ImageFont.FreeTypeFont:
    """A1111's legend font: Roboto Regular from the font-roboto package (as A1111's `fonts.ttf.Roboto`); Pillow's
    built-in scalable font where that package is missing."""
    try:
        from font_roboto import Roboto
    except ImportError:
        return ImageFont.load_default(max(1, size))
    return ImageFont.truetype(Roboto, max(1, size))


def annotate(grid: Image.Image, width: int, height: int, column_texts: list[list[GridText]],
             row_texts: list[list[GridText]], margin: int = 0) -> Image.Image:
    """A1111's draw_grid_annotations: `grid` holds cells of width x height; the font size is (w + h) // 25,
    texts wrap at word boundaries to the cell width (the row legend gets 3/4 of a cell's width, only when some
    row has text), a line still too wide is drawn in a smaller font, and `margin` pixels separate the cells."""
    size = (width + height) // 25
    spacing = size // 2
    base_font = font(size)
    pad_left = 0 if not any(t.text for texts in row_texts for t in texts) else width * 3 // 4
    cols, rows = grid.width // width, grid.height // height
    if cols != len(column_texts) or rows != len(row_texts):
        raise ValueError(f"{len(column_texts)}x{len(row_texts)} texts for a grid of {cols}x{rows} cells")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1), "white"))
    columns = [_lines(measure, texts, base_font, width) for texts in column_texts]
    rows_lines = [_lines(measure, texts, base_font, pad_left) for texts in row_texts]
    column_heights = [sum(line.size[1] + spacing for line in lines) - spacing for lines in columns]
    row_heights = [sum(line.size[1] + spacing for line in lines) - spacing * len(lines) for lines in rows_lines]
    pad_top = 0 if sum(column_heights) == 0 else max(column_heights) + spacing * 2

    result = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1),
                               grid.height + pad_top + margin * (rows - 1)), "white")
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))
    draw = ImageDraw.Draw(result)
    for col, lines in enumerate(columns):
        x = pad_left + (width + margin) * col + width / 2
        _draw_lines(draw, x, pad_top / 2 - column_heights[col] / 2, lines, size, spacing)
    for row, lines in enumerate(rows_lines):
        y = pad_top + (height + margin) * row + height / 2 - row_heights[row] / 2
        _draw_lines(draw, pad_left / 2, y, lines, size, spacing)
    return result


def _lines(measure: ImageDraw.ImageDraw, texts: list[GridText], base_font, allowed_width: int) -> list[_Line]:
    lines = []
    for text in texts:
        for wrapped in _wrap(measure, text.text, base_font, allowed_width):
            box = measure.multiline_textbbox((0, 0), wrapped, font=base_font)
            lines.append(_Line(wrapped, text.active, (box[2] - box[0], box[3] - box[1]), allowed_width))
    return lines


def _wrap(measure: ImageDraw.ImageDraw, text: str, base_font, line_length: int) -> list[str]:
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if measure.textlength(candidate, font=base_font) <= line_length:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _draw_lines(draw: ImageDraw.ImageDraw, x: float, y: float, lines: list[_Line], size: int, spacing: int) -> None:
    for line in lines:
        fitted, fitted_size = font(size), size
        while draw.textlength(line.text, font=fitted) > line.allowed_width and fitted_size > 1:
            fitted_size -= 1
            fitted = font(fitted_size)
        colour = ACTIVE if line.active else INACTIVE
        draw.multiline_text((x, y + line.size[1] / 2), line.text, font=fitted, fill=colour, anchor="mm",
                            align="center")
        if not line.active:
            middle = y + line.size[1] // 2
            draw.line((x - line.size[0] // 2, middle, x + line.size[0] // 2, middle), fill=INACTIVE, width=4)
        y += line.size[1] + spacing
