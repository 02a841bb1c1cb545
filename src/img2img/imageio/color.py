"""Colour matching: give a result the colour distribution of a reference (the source), in CIELAB.

Repeated img2img passes drift in colour (loopback turns photos magenta or brown); matching each channel's
histogram in LAB to the source's keeps the tones while leaving the structure of the result alone. sRGB <-> LAB uses
the D65 white point and the sRGB transfer curve (IEC 61966-2-1).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_D65 = np.array([0.95047, 1.0, 1.08883])
_EPSILON, _KAPPA = 216 / 24389, 24389 / 27  # CIE constants


def match_colors(image: Image.Image, reference: Image.Image) -> Image.Image:
    """``image`` with each LAB channel's histogram mapped onto ``reference``'s."""
    lab = srgb_to_lab(np.asarray(image.convert("RGB")))
    target = srgb_to_lab(np.asarray(reference.convert("RGB")))
    matched = np.stack([_match_channel(lab[..., c], target[..., c]) for c in range(3)], axis=-1)
    return Image.fromarray(lab_to_srgb(matched))


def srgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """uint8 sRGB (H, W, 3) to float LAB (L in 0..100)."""
    linear = _decode_gamma(pixels.astype(np.float64) / 255.0)
    xyz = linear @ _RGB_TO_XYZ.T / _D65
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """Float LAB to uint8 sRGB, clipping colours outside the sRGB gamut."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f**3 > _EPSILON, f**3, (116 * f - 16) / _KAPPA) * _D65
    linear = np.clip(xyz @ np.linalg.inv(_RGB_TO_XYZ).T, 0.0, 1.0)
    return (np.clip(_encode_gamma(linear), 0.0, 1.0) * 255).round().astype(np.uint8)


def _decode_gamma(values: np.ndarray) -> np.ndarray:
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def _encode_gamma(values: np.ndarray) -> np.ndarray:
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * values ** (1 / 2.4) - 0.055)


def _match_channel(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map each value to the reference value at the same quantile (histogram specification); equal values stay
    equal, so flat areas do not turn into noise."""
    _, inverse, counts = np.unique(values.ravel(), return_inverse=True, return_counts=True)
    reference_levels, reference_counts = np.unique(reference.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / values.size
    reference_quantiles = np.cumsum(reference_counts) / reference.size
    return np.interp(quantiles, reference_quantiles, reference_levels)[inverse].reshape(values.shape)
