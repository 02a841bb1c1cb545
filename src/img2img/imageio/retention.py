"""How much of the source a result kept: three scores between 0 and 1, cheap enough to give for every image.

Both pictures are brought to one small size (the result's shape, ``SIDE`` pixels on its longer side; the source is
stretched to that shape, as the engine fits it) and compared there:

- **structure**: SSIM of their edge maps (the Sobel gradient magnitude of the luminance): where the outlines and
  shapes are, whatever their colours. A restyle that keeps the layout keeps it high.
- **colour**: ``exp(-ΔE / 20)`` of their mean CIELAB distance (ΔE76) after a blur to ``COLOUR_SIDE`` pixels, so that
  it weighs the colours of regions, not of single pixels: ΔE 2 (barely visible) gives 0.90, 10 gives 0.61, 20 gives
  0.37.
- **detail**: SSIM of the luminance itself: textures and fine shading as well as shapes.

SSIM is Wang et al.'s, with a Gaussian window (sigma 1.5) and the usual constants for values in [0, 1]; a negative
SSIM counts as 0. Identical pictures score 1 on all three. About 10 ms for a 1024x1024 result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SIDE = 256  # pixels on the longer side where structure and detail are compared
COLOUR_SIDE = 32  # ... and where colour is
COLOUR_SCALE = 20.0  # ΔE at which colour falls to 1/e
SIGMA = 1.5  # SSIM's Gaussian window
C1, C2 = 0.01**2, 0.03**2  # SSIM's constants for a dynamic range of 1
NAMES = ("structure", "colour", "detail")


@dataclass(frozen=True)
class Retention:
    structure: float
    colour: float
    detail: float

    def as_dict(self) -> dict[str, float]:
        return {"structure": self.structure, "colour": self.colour, "detail": self.detail}


def describe(scores: dict[str, float]) -> str:
    """A record's scores as a phrase: "kept structure 0.83, colour 0.48, detail 0.77" (none: empty)."""
    return ", ".join(f"{name} {scores[name]:.2f}" for name in NAMES).join(("kept ", "")) if scores else ""


def short(scores: dict[str, float]) -> str:
    """The scores under a grid cell: "S 0.83  C 0.48  D 0.77" (none: empty)."""
    return "  ".join(f"{name[0].upper()} {scores[name]:.2f}" for name in NAMES) if scores else ""


def retention(source: Image.Image, result: Image.Image) -> Retention:
    """The three scores of ``result`` against ``source`` (any sizes and modes)."""
    size = _common_size(result.size, SIDE)
    before, after = (_rgb(picture, size) for picture in (source, result))
    luma_before, luma_after = _luma(before), _luma(after)
    structure = _ssim(_edges(luma_before), _edges(luma_after))
    detail = _ssim(luma_before, luma_after)
    small = _common_size(result.size, COLOUR_SIDE)
    lab_before, lab_after = (_lab(_rgb(picture, small)) for picture in (source, result))
    delta = float(np.sqrt(((lab_before - lab_after) ** 2).sum(axis=-1)).mean())
    colour = float(np.exp(-delta / COLOUR_SCALE))
    return Retention(*(round(min(max(value, 0.0), 1.0), 4) for value in (structure, colour, detail)))


def _common_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _rgb(picture: Image.Image, size: tuple[int, int]) -> np.ndarray:
    if picture.mode != "RGB":
        picture = picture.convert("RGB")
    if picture.size != size:
        shrink = max(1, min(picture.width // size[0], picture.height // size[1]))
        if shrink > 2:  # box-reduce first: Lanczos over a 1024 px picture would cost more than the scores
            picture = picture.reduce(shrink // 2)
        picture = picture.resize(size, Image.LANCZOS)
    return np.asarray(picture, dtype=np.float32) / 255.0


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _edges(luma: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude, scaled so that a black-to-white step gives 1."""
    padded = np.pad(luma, 1, mode="edge")
    smooth_rows = padded[:-2] + 2 * padded[1:-1] + padded[2:]  # [1 2 1] down the columns
    smooth_cols = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
    gx = smooth_rows[:, 2:] - smooth_rows[:, :-2]
    gy = smooth_cols[2:] - smooth_cols[:-2]
    return np.minimum(np.hypot(gx, gy) / 4.0, 1.0)


def _blur(values: np.ndarray) -> np.ndarray:
    """A separable Gaussian (SIGMA), with edge padding."""
    radius = int(3 * SIGMA + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-(offsets**2) / (2 * SIGMA**2))
    kernel /= kernel.sum()
    padded = np.pad(values, radius, mode="edge")
    rows = sum(weight * padded[index:index + values.shape[0]] for index, weight in enumerate(kernel))
    return sum(weight * rows[:, index:index + values.shape[1]] for index, weight in enumerate(kernel))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    mean_a, mean_b = _blur(a), _blur(b)
    var_a = _blur(a * a) - mean_a**2
    var_b = _blur(b * b) - mean_b**2
    covariance = _blur(a * b) - mean_a * mean_b
    index = ((2 * mean_a * mean_b + C1) * (2 * covariance + C2)) / ((mean_a**2 + mean_b**2 + C1) * (var_a + var_b + C2))
    return float(index.mean())


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] to CIELAB (D65)."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]],
                            dtype=np.float32)
    xyz /= np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)
