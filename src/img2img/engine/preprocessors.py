"""Control maps from pictures, with classical filters that need no weights (OpenCV): what a ControlNet unit's
``preprocessor`` names. Each takes an RGB picture and returns an RGB map of the same size; ``none`` passes the
picture through (it is a map already).

``lineart`` and ``softedge`` approximate the learned detectors of the same names (A1111's lineart and HED/PiDiNet)
with a difference of Gaussians and a blurred gradient: the ControlNets trained on those maps follow them, less
faithfully than the learned maps. ``depth`` needs a model the user brings (``img2img.models.estimators``): the
engine loads it and hands it in. Pose and segmentation need weights that no package here ships.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from img2img.errors import InvalidArgument


@dataclass(frozen=True)
class Preprocessor:
    name: str
    help: str
    make: Callable[[np.ndarray, float | None, float | None, int], np.ndarray]  # (RGB uint8, a, b, seed) -> map
    threshold_a: str = ""  # what A1111's threshold_a means here, if anything (with its default)
    threshold_b: str = ""
    needs_mask: bool = False  # made by the engine from the request's mask, not from a picture alone
    model_kind: str | None = None  # runs a model of this kind (given to ``preprocess``) instead of ``make``


def preprocess(name: str, image: Image.Image, threshold_a: float | None = None, threshold_b: float | None = None,
               seed: int = 0, model: Callable[[np.ndarray], np.ndarray] | None = None) -> Image.Image:
    """The control map ``name`` makes of ``image`` (InvalidArgument listing the names for an unknown one); a
    model-based one runs ``model`` (``Engine.preprocess`` loads it)."""
    chosen = PREPROCESSORS.get(name)
    if chosen is None:
        raise InvalidArgument("preprocessor", f"one of {', '.join(PREPROCESSORS)}", name)
    if chosen.needs_mask:
        raise InvalidArgument("preprocessor", "one that needs no mask (inpaint is made from a request's mask)", name)
    pixels = np.asarray(image.convert("RGB"))
    if chosen.model_kind is not None:
        if model is None:
            raise InvalidArgument("preprocessor", f"{name} with its model loaded (Engine.preprocess loads it)", name)
        return Image.fromarray(model(pixels).astype(np.uint8), "RGB")
    return Image.fromarray(chosen.make(pixels, threshold_a, threshold_b, seed).astype(np.uint8), "RGB")


def _cv2():  # type: ignore[no-untyped-def]
    import cv2

    return cv2


def _grey(pixels: np.ndarray) -> np.ndarray:
    return _cv2().cvtColor(pixels, _cv2().COLOR_RGB2GRAY)


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _none(pixels: np.ndarray, _a: float | None, _b: float | None, _seed: int) -> np.ndarray:
    return pixels


def _canny(pixels: np.ndarray, low: float | None, high: float | None, _seed: int) -> np.ndarray:
    low, high = low if low is not None else 100, high if high is not None else 200
    if not 0 <= low <= high <= 255 * 4:
        raise InvalidArgument("threshold_a", f"a low threshold in [0, threshold_b ({high})]", low)
    return _rgb(_cv2().Canny(_grey(pixels), low, high))


def _invert(pixels: np.ndarray, _a: float | None, _b: float | None, _seed: int) -> np.ndarray:
    return 255 - pixels


def _scribble(pixels: np.ndarray, threshold: float | None, _b: float | None, _seed: int) -> np.ndarray:
    """Any line drawing as white lines on black: dark lines on a light page are inverted first."""
    grey = _grey(pixels)
    if grey.mean() > 127:
        grey = 255 - grey
    return _rgb(np.where(grey >= (threshold if threshold is not None else 64), 255, 0).astype(np.uint8))


def _lineart(pixels: np.ndarray, sigma: float | None, _b: float | None, _seed: int) -> np.ndarray:
    """White lines on black from a difference of Gaussians (an approximation of the learned lineart detector)."""
    cv2 = _cv2()
    grey = _grey(pixels).astype(np.float32)
    sigma = sigma if sigma is not None else 1.0
    lines = cv2.GaussianBlur(grey, (0, 0), sigma * 1.6) - cv2.GaussianBlur(grey, (0, 0), sigma)
    lines = np.clip(lines * 16, 0, 255)
    return _rgb(lines.astype(np.uint8))


def _softedge(pixels: np.ndarray, blur: float | None, _b: float | None, _seed: int) -> np.ndarray:
    """Soft edges from the blurred gradient magnitude (an approximation of HED / PiDiNet)."""
    cv2 = _cv2()
    grey = cv2.GaussianBlur(_grey(pixels).astype(np.float32), (0, 0), 1.0)
    magnitude = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    magnitude = cv2.GaussianBlur(magnitude, (0, 0), blur if blur is not None else 2.0)
    top = float(np.percentile(magnitude, 99)) or 1.0
    return _rgb(np.clip(magnitude / top * 255, 0, 255).astype(np.uint8))


def _tile(pixels: np.ndarray, rate: float | None, _b: float | None, _seed: int) -> np.ndarray:
    """The picture downscaled by ``rate`` and brought back: the tile ControlNet adds the detail."""
    cv2 = _cv2()
    rate = rate if rate is not None else 4.0
    if not 1 <= rate <= 32:
        raise InvalidArgument("threshold_a", "a down-sampling rate in [1, 32]", rate)
    height, width = pixels.shape[:2]
    small = cv2.resize(pixels, (max(1, round(width / rate)), max(1, round(height / rate))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _shuffle(pixels: np.ndarray, _a: float | None, _b: float | None, seed: int) -> np.ndarray:
    """Content shuffle: the picture warped by a smooth random flow from ``seed`` (colours kept, layout lost)."""
    cv2 = _cv2()
    height, width = pixels.shape[:2]
    random = np.random.default_rng(seed)
    side = max(height, width)
    flows = []
    for _ in range(2):
        noise = random.random((max(2, height // 64), max(2, width // 64))).astype(np.float32)
        flows.append(cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC) * side)
    return cv2.remap(pixels, flows[0], flows[1], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _recolor(pixels: np.ndarray, gamma: float | None, _b: float | None, _seed: int) -> np.ndarray:
    """The picture's luminance (CIELAB L) as grey, for the recolor ControlNet."""
    cv2 = _cv2()
    lightness = cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32) / 255
    return _rgb((np.power(lightness, gamma if gamma is not None else 1.0) * 255).round().astype(np.uint8))


PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", "the picture is a control map already", _none),
    Preprocessor("canny", "Canny edges, white on black", _canny, "low threshold (100)", "high threshold (200)"),
    Preprocessor("lineart", "line art by a difference of Gaussians (approximates the learned detector)", _lineart,
                 "line width, sigma (1)"),
    Preprocessor("softedge", "soft edges by a blurred gradient (approximates HED / PiDiNet)", _softedge,
                 "softness, sigma (2)"),
    Preprocessor("scribble", "a line drawing as white lines on black (dark lines are inverted)", _scribble,
                 "threshold (64)"),
    Preprocessor("tile", "the picture blurred by down-sampling, for the tile ControlNet", _tile,
                 "down-sampling rate (4)"),
    Preprocessor("shuffle", "content shuffle: a smooth random warp from the seed", _shuffle),
    Preprocessor("recolor", "luminance as grey, for the recolor ControlNet", _recolor, "gamma (1)"),
    Preprocessor("invert", "white and black swapped (a black-on-white drawing for a white-on-black ControlNet)",
                 _invert),
    Preprocessor("inpaint", "the source with the area to paint marked, for the inpaint ControlNet (needs a mask)",
                 _none, needs_mask=True),
    Preprocessor("depth", "depth, near is white, from a depth model you register (a DPT or Depth Anything folder: "
                 "img2img models add NAME FOLDER)", _none, model_kind="depth"),
)}
