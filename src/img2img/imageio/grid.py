"""Grids for comparing results: a contact sheet of variations and a labelled X/Y sweep grid.

The individual images are always saved at full size; grid cells are scaled down to at most ``MAX_CELL_SIDE`` so
that a 3x3 sweep of a large photo stays a file that opens anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

MAX_CELL_SIDE = 768
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def contact_sheet(images: Sequence[Image.Image], captions: Sequence[str]) -> Image.Image:
    """Images in a near-square layout, each with its caption underneath (for example its seed)."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = [list(range(start, min(start + columns, len(images)))) for start in range(0, len(images), columns)]
    cell = _cell_size(images[0])
    font = _font(cell)
    caption_height = _line_height(font) + 8
    sheet = Image.new("RGB", (columns * cell[0], len(rows) * (cell[1] + caption_height)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for row_index, row in enumerate(rows):
        top = row_index * (cell[1] + caption_height)
        for column_index, image_index in enumerate(row):
            left = column_index * cell[0]
            sheet.paste(_fit(images[image_index], cell), (left, top))
            _centred(draw, captions[image_index], font, (left, top + cell[1], left + cell[0], top + cell[1] +
                                                           caption_height))
    return sheet


def labelled_grid(
    cells: Sequence[Sequence[Image.Image]], column_labels: Sequence[str], row_labels: Sequence[str],
    captions: Sequence[Sequence[str]] | None = None,
) -> Image.Image:
    """A table of images with a header row of ``column_labels``, a first column of ``row_labels`` and, when given,
    a caption under each image (for example its retention scores)."""
    cell = _cell_size(cells[0][0])
    font = _font(cell)
    header = _line_height(font) * 2 + 12
    below = _line_height(font) + 8 if captions else 0
    gutter = max((_text_width(font, label) for label in row_labels), default=0) + 24 if any(row_labels) else 0
    width = gutter + len(column_labels) * cell[0]
    grid = Image.new("RGB", (width, header + len(cells) * (cell[1] + below)), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for column, label in enumerate(column_labels):
        left = gutter + column * cell[0]
        _centred(draw, label, font, (left, 0, left + cell[0], header))
    for row, images in enumerate(cells):
        top = header + row * (cell[1] + below)
        _centred(draw, row_labels[row], font, (0, top, gutter, top + cell[1]))
        for column, image in enumerate(images):
            left = gutter + column * cell[0]
            grid.paste(_fit(image, cell), (left, top))
            if captions and captions[row][column]:
                _centred(draw, captions[row][column], font, (left, top + cell[1], left + cell[0],
                                                             top + cell[1] + below))
    return grid


def _cell_size(image: Image.Image) -> tuple[int, int]:
    scale = min(1.0, MAX_CELL_SIDE / max(image.size))
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


def _fit(image: Image.Image, cell: tuple[int, int]) -> Image.Image:
    rgb = image.convert("RGB")
    return rgb if rgb.size == cell else rgb.resize(cell, Image.LANCZOS)


def _font(cell: tuple[int, int]) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(12, min(32, cell[0] // 14)))


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    top, bottom = font.getbbox("Ag")[1::2]
    return int(bottom - top) + 4


def _text_width(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _centred(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
             box: tuple[int, int, int, int]) -> None:
    """Draw ``text`` centred in ``box``, shortened with an ellipsis when it does not fit."""
    room = box[2] - box[0] - 8
    while text and _text_width(font, text) > room and len(text) > 1:
        text = text[:-2] + "…"
    draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), text, fill=INK, font=font, anchor="mm")
