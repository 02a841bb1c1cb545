"""Size rules: the output size and the working size the model runs at, from the source and the request.

- Neither ``size`` nor ``max_side``: the output keeps the source's size; the model works at the source's aspect
  ratio shrunk to its native pixel budget (512² for SD 1.x, 1024² for SDXL), in multiples of 8, and the result
  is resized back.
- ``size=(w, h)``: the output is exactly w x h and the model works at that size; a different aspect ratio is
  handled by the resize mode (``img2img.imageio.resize``).
- ``max_side=n``: the output keeps the source's aspect ratio with its long side n, in multiples of 8, and the model
  works at that size (upscaling small sources, unlike the default).

A working size longer than 16 times its width (or the reverse) is refused: no model paints such a strip (SDXL's
training buckets stop near 4:1), and a 16,000,000x1 file that passes the pixel cap would otherwise ask for a
working size of 2,048,000x64.
"""

from __future__ import annotations

import math
from typing import Literal

from img2img.errors import InvalidArgument

ResizeMode = Literal["just", "crop", "fill"]
RESIZE_MODES: tuple[str, ...] = ("just", "crop", "fill")
LATENT_MULTIPLE = 8  # the VAE downsamples by 8
MIN_SIDE = 64
MAX_SIDE = 4096  # the largest working side we accept
MAX_ASPECT = 16  # the longest working side over the shortest


def plan_sizes(
    source: tuple[int, int], native_side: int, size: tuple[int, int] | None = None, max_side: int | None = None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return ``(output_size, working_size)`` as (width, height) pairs."""
    if size is not None:
        check_aspect(size, "size")
        return size, size
    if max_side is not None:
        scaled = fit_long_side(*source, max_side)
        check_aspect(scaled, "source", source)
        return scaled, scaled
    working = fit_working_size(*source, native_side)
    check_aspect(working, "source", source)
    return source, working


def check_aspect(working: tuple[int, int], field: str, given: tuple[int, int] | None = None) -> None:
    """Refuse a working size more than MAX_ASPECT times longer than it is wide (or the reverse)."""
    if max(working) > MAX_ASPECT * min(working) or max(working) > MAX_SIDE:
        width, height = given or working
        raise InvalidArgument(field, f"an image no more than {MAX_ASPECT} times longer than it is wide (and a working "
                              f"size of at most {MAX_SIDE} px a side)", f"{width}x{height}")


def fit_working_size(width: int, height: int, native_side: int) -> tuple[int, int]:
    """Keep the aspect ratio, shrink to at most ``native_side``² pixels, round down to multiples of 8."""
    scale = min(1.0, math.sqrt(native_side * native_side / (width * height)))
    return (_fit_side(width * scale), _fit_side(height * scale))


def scale_to_native(width: int, height: int, native_side: int) -> tuple[int, int]:
    """Keep the aspect ratio and scale, up or down, to about ``native_side``² pixels in multiples of 8 (an "only
    masked" box is painted at the model's own resolution, whatever its size in the photo)."""
    scale = math.sqrt(native_side * native_side / (width * height))
    return (_fit_side(width * scale), _fit_side(height * scale))


def fit_long_side(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Scale so that the long side is ``long_side`` (a multiple of 8); round the short side to a multiple of 8."""
    scale = long_side / max(width, height)
    return (_round_side(width * scale), _round_side(height * scale))


def _fit_side(side: float) -> int:
    return max(MIN_SIDE, int(side) // LATENT_MULTIPLE * LATENT_MULTIPLE)


def _round_side(side: float) -> int:
    return max(MIN_SIDE, round(side / LATENT_MULTIPLE) * LATENT_MULTIPLE)
