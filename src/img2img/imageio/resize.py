"""Fitting a picture into a size of another aspect ratio, as A1111's resize modes do.

- ``just``: stretch to the size (the aspect ratio changes).
- ``crop``: scale to cover the size and cut the overflow equally from both sides.
- ``fill``: scale to fit inside the size and extend the edge pixels into the empty bands.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from img2img.engine.sizing import ResizeMode


def fit_to_size(image: Image.Image, size: tuple[int, int], mode: ResizeMode = "just") -> Image.Image:
    """Return ``image`` at exactly ``size`` (width, height), handling a different aspect ratio by ``mode``."""
    if image.size == size:
        return image.copy()
    width, height = size
    if mode == "just":
        return image.resize(size, Image.LANCZOS)
    cover = mode == "crop"
    scale = (max if cover else min)(width / image.width, height / image.height)
    scaled_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(scaled_size, Image.LANCZOS)
    if cover:
        left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    return _extend_edges(scaled, size)


def _extend_edges(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre ``image`` in ``size`` and repeat its outermost rows and columns outwards."""
    pixels = np.asarray(image)
    left, top = (size[0] - image.width) // 2, (size[1] - image.height) // 2
    pad = [(top, size[1] - image.height - top), (left, size[0] - image.width - left)]
    pad += [(0, 0)] * (pixels.ndim - 2)
    return Image.fromarray(np.pad(pixels, pad, mode="edge"), mode=image.mode)
