"""The built-in style engine: restyle a photo with named styles and/or a style picture, at a strength.

It restyles; it does not generate new content. What each request field means here:

- **prompt**: style names (see ``img2img.styles.catalog``); several names blend in the 26-style network's own
  style space (its conditional-normalisation weights).
- **style_image**: any picture used as the style (Midjourney's --sref): its 100-number style vector comes from
  the arbitrary-style predictor.
- **strength**: 0 returns the photo. For the style picture the strength moves the style vector from the photo's
  own style to the picture's (style-space interpolation) while the output fades in from the photo over the first
  half of the range, so low strengths stay close to the photo. The 26-style network has no "photo's own style"
  to start from, so named styles are mixed with the photo in pixels, in proportion to the strength.
- **seed**: when a style has two or more components (names, or names and a style picture), each component's
  share is multiplied by exp(0.15 z) with z drawn from the seed, then renormalised: seeds give reproducible
  variations of a blend. A single component has nothing to vary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from img2img.styles.networks import PREDICTOR_SIDE, STYLE_COUNT, StyleNetworks

BLEND_JITTER = 0.15  # lognormal spread of each component's share, per seed
NATIVE_SIDE = 1024  # the styles' strokes are sized for photos of about a megapixel


@dataclass(frozen=True)
class StyleRecipe:
    weights: dict[int, float]  # named styles, summing to 1 (empty without names)
    style_vector: np.ndarray | None  # of the style picture, if any

    @property
    def components(self) -> int:
        return len(self.weights) + (self.style_vector is not None)


class StyleEngine:
    def __init__(self, networks: StyleNetworks) -> None:
        self.networks = networks

    def recipe(self, weights: dict[int, float], style_image: Image.Image | None) -> StyleRecipe:
        vector = None if style_image is None else self.networks.style_vector(_predictor_input(style_image))
        return StyleRecipe(weights, vector)

    def restyle(self, photo: Image.Image, recipe: StyleRecipe, strength: float, seed: int) -> Image.Image:
        """``photo`` restyled by ``recipe`` at ``strength`` (0 < strength <= 1)."""
        pixels = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
        shares = _jittered_shares(recipe, seed)
        result = pixels.copy()
        if recipe.weights:
            named = np.zeros(STYLE_COUNT, dtype=np.float32)
            for (index, _), share in zip(recipe.weights.items(), shares, strict=False):
                named[index] = share
            named_share = float(named.sum())
            styled = self.networks.stylize(pixels, named / named_share)
            result += named_share * strength * (styled - pixels)
        if recipe.style_vector is not None:
            own = self.networks.style_vector(_predictor_input(photo))
            vector = own + strength * (recipe.style_vector - own)
            styled = self.networks.transform(pixels, vector)
            result += shares[-1] * min(1.0, 2.0 * strength) * (styled - pixels)
        return Image.fromarray((np.clip(result, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def _jittered_shares(recipe: StyleRecipe, seed: int) -> list[float]:
    """Each component's share of the style (names in index order, then the style picture), summing to 1."""
    shares = [*recipe.weights.values(), *([1.0] if recipe.style_vector is not None else [])]
    if recipe.weights and recipe.style_vector is not None:
        shares = [share * len(recipe.weights) / (len(recipe.weights) + 1) for share in shares[:-1]]
        shares.append(1.0 / (len(recipe.weights) + 1))  # the picture counts as one more name
    if len(shares) > 1:
        factors = np.exp(BLEND_JITTER * np.random.default_rng(seed).standard_normal(len(shares)))
        shares = [share * float(factor) for share, factor in zip(shares, factors, strict=True)]
    total = sum(shares)
    return [share / total for share in shares]


def _predictor_input(image: Image.Image) -> np.ndarray:
    square = image.convert("RGB").resize((PREDICTOR_SIDE, PREDICTOR_SIDE), Image.LANCZOS)
    return np.asarray(square, dtype=np.float32) / 255.0
