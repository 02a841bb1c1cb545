"""Size rules: the working size the model runs at, given the source and the model's native resolution."""

from __future__ import annotations

import math

LATENT_MULTIPLE = 8  # the VAE downsamples by 8
MIN_SIDE = 64


def fit_working_size(width: int, height: int, native_side: int) -> tuple[int, int]:
    """Keep the source's aspect ratio, shrink it to at most ``native_side``² pixels, round down to multiples of 8.

    Sources already within the model's pixel budget keep their size (only rounded): upscaling small sources is
    a choice left to the caller's explicit size.
    """
    scale = min(1.0, math.sqrt(native_side * native_side / (width * height)))
    return (_fit_side(width * scale), _fit_side(height * scale))


def _fit_side(side: float) -> int:
    return max(MIN_SIDE, int(side) // LATENT_MULTIPLE * LATENT_MULTIPLE)
