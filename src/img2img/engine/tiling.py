"""Tiled VAE encoding and decoding, for working sizes whose activations would not fit in memory at once.

The picture (or latent) is cut into overlapping tiles, each tile goes through the VAE alone, and the results are
blended with weights that fall linearly to zero across each overlap, so there is no hard edge anywhere. Tiles
are square, ``tile`` pixels on a side, and neighbours share ``overlap`` pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TILE_PIXELS = 512  # the VAE's training size: per-tile statistics stay close to the whole picture's
OVERLAP_PIXELS = 128
TILED_ABOVE_PIXELS = 1024 * 1024  # working sizes above this are encoded and decoded in tiles


def needs_tiles(height: int, width: int) -> bool:
    return height * width > TILED_ABOVE_PIXELS


def tiled_apply(
    function: Callable[[torch.Tensor], torch.Tensor], tensor: torch.Tensor, tile: int, overlap: int, scale: float,
    align: int = 1,
) -> torch.Tensor:
    """Apply ``function`` (which maps (B, C, h, w) to (B, C', h*scale, w*scale)) tile by tile and blend.

    ``tile`` and ``overlap`` are in input pixels; ``scale`` is the output size per input pixel (8 for a decoder,
    1/8 for an encoder); tile origins are multiples of ``align`` (8 for an encoder, so latents line up).
    """
    height, width = tensor.shape[-2:]
    rows, columns = _starts(height, tile, overlap, align), _starts(width, tile, overlap, align)
    out: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    for top in rows:
        for left in columns:
            piece = tensor[..., top:top + tile, left:left + tile]
            result = function(piece).float()
            if out is None:
                out = torch.zeros(*result.shape[:2], round(height * scale), round(width * scale))
                weights = torch.zeros(1, 1, *out.shape[-2:])
            mask = _ramp(result.shape[-2], round(overlap * scale), top > 0, top + tile < height)[:, None] * \
                _ramp(result.shape[-1], round(overlap * scale), left > 0, left + tile < width)[None, :]
            y, x = round(top * scale), round(left * scale)
            out[..., y:y + result.shape[-2], x:x + result.shape[-1]] += result * mask
            weights[..., y:y + result.shape[-2], x:x + result.shape[-1]] += mask  # type: ignore[index]
    assert out is not None and weights is not None
    return out / weights


def _starts(size: int, tile: int, overlap: int, align: int) -> list[int]:
    """Tile origins covering ``size`` with at least ``overlap`` shared between neighbours."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    count = -(-(size - overlap) // stride)  # ceil
    step = (size - tile) / (count - 1)
    return [int(index * step) // align * align for index in range(count - 1)] + [size - tile]


def _ramp(length: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """Weights along one side of a tile: 1 inside, falling linearly to near 0 across a shared edge."""
    weights = torch.ones(length)
    if overlap <= 0:
        return weights
    ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
    if rise:
        weights[:overlap] = ramp
    if fall:
        weights[-overlap:] = torch.minimum(weights[-overlap:], ramp.flip(0))
    return weights
