"""The built-in style engine: restyle a photo with named styles and/or a style picture, at a strength.

It restyles; it does not generate new content. What each request field means here:

- **prompt**: style names (see ``img2img.styles.catalog``); several names blend in the 26-style network's own
  style space (its conditional-normalisation weights).
- **style_image** and **image_prompts**: pictures used as the style (Midjourney's --sref): each one's 100-number
  style vector comes from the arbitrary-style predictor; several blend as their weighted mean (``img2img blend``).
  Each picture counts as its weight's worth of style names beside the prompt's names.
- **strength**: 0 returns the photo. For the style picture the strength moves the style vector from the photo's
  own style to the picture's (style-space interpolation) while the output fades in from the photo over the first
  half of the range, so low strengths stay close to the photo. The 26-style network has no "photo's own style"
  to start from, so named styles are mixed with the photo in pixels, in proportion to the strength.
- **seed**: when a style has two or more components (names, or names and a style picture), each component's
  share is multiplied by exp(0.15 z) with z drawn from the seed, then renormalised: seeds give reproducible
  variations of a blend. A single component has nothing to vary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from img2img.styles.networks import PREDICTOR_SIDE, STYLE_COUNT, StyleNetworks

BLEND_JITTER = 0.15  # lognormal spread of each component's share, per seed
NATIVE_SIDE = 1024  # the styles' strokes are sized for photos of about a megapixel


@dataclass(frozen=True)
class StyleRecipe:
    weights: dict[int, float]  # named styles, summing to 1 (empty without names)
    style_vectors: tuple[np.ndarray, ...] = ()  # of the style pictures, if any
    picture_weights: tuple[float, ...] = ()  # each picture's weight, in style names' worth

    @property
    def components(self) -> int:
        return len(self.weights) + len(self.style_vectors)


class StyleEngine:
    def __init__(self, networks: StyleNetworks) -> None:
        self.networks = networks

    def recipe(self, weights: dict[int, float], pictures: Sequence[tuple[Image.Image, float]] = ()) -> StyleRecipe:
        """The style of named ``weights`` and ``pictures`` (each with its weight; those of weight 0 left out)."""
        kept = [(picture, weight) for picture, weight in pictures if weight > 0]
        vectors = tuple(self.networks.style_vector(_predictor_input(picture)) for picture, _ in kept)
        return StyleRecipe(weights, vectors, tuple(weight for _, weight in kept))

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
        if recipe.style_vectors:
            picture_shares = shares[len(recipe.weights):]
            share = sum(picture_shares)
            target = recipe.style_vectors[0] if len(recipe.style_vectors) == 1 else sum(
                s * v for s, v in zip(picture_shares, recipe.style_vectors, strict=True)) / share
            own = self.networks.style_vector(_predictor_input(photo))
            vector = own + strength * (target - own)
            styled = self.networks.transform(pixels, vector)
            result += share * min(1.0, 2.0 * strength) * (styled - pixels)
        return Image.fromarray((np.clip(result, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def _jittered_shares(recipe: StyleRecipe, seed: int) -> list[float]:
    """Each component's share of the style (names in index order, then the pictures), summing to 1: a picture
    counts as its weight's worth of names."""
    names = len(recipe.weights)
    total = names + sum(recipe.picture_weights)
    shares = [share * names / total for share in recipe.weights.values()]
    shares += [weight / total for weight in recipe.picture_weights]
    if len(shares) > 1:
        factors = np.exp(BLEND_JITTER * np.random.default_rng(seed).standard_normal(len(shares)))
        shares = [share * float(factor) for share, factor in zip(shares, factors, strict=True)]
    total = sum(shares)
    return [share / total for share in shares]


def _predictor_input(image: Image.Image) -> np.ndarray:
    square = image.convert("RGB").resize((PREDICTOR_SIDE, PREDICTOR_SIDE), Image.LANCZOS)
    return np.asarray(square, dtype=np.float32) / 255.0
