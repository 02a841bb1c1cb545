"""Image to prompt without a captioning model: what can be measured in a picture, in words.

``measure(picture)`` reports the dominant palette with colour names (k-means in CIELAB, each centre named by the
nearest of a small table of colour names), the light (brightness and contrast from L*, colour temperature from
the mean b* against a*), sharpness (the variance of the Laplacian at a fixed size) and noise (the median absolute
deviation of the finest wavelet-like detail, Donoho's estimator), and the orientation and aspect. Nothing here
recognises what the picture shows: the description says so, and a captioning model the user brings adds that
(``describe``'s ``caption``), with the terms a CLIP model ranked best for the picture (``ranked``: the best
mediums, movements, artists and flavours, as ``img2img.models.captioners`` finds them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from img2img.imageio.color import srgb_to_lab

ANALYSIS_SIDE = 256  # pictures are measured at this long side, so that the figures do not depend on the size
PALETTE_SIZE = 5
# Colour names and their sRGB, a small table in the spirit of the CSS names (the nearest in CIELAB wins).
COLOUR_NAMES: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20), "charcoal": (54, 69, 79), "grey": (128, 128, 128), "silver": (192, 192, 192),
    "white": (245, 245, 245), "cream": (255, 250, 220), "beige": (220, 205, 170), "tan": (210, 180, 140),
    "light brown": (185, 120, 70), "brown": (120, 72, 40), "dark brown": (70, 40, 22), "rust": (183, 65, 14),
    "orange": (240, 140, 30),
    "gold": (212, 175, 55), "yellow": (240, 220, 50), "olive": (128, 128, 0), "green": (60, 150, 60),
    "dark green": (20, 80, 40), "teal": (0, 128, 128), "cyan": (60, 200, 220), "sky blue": (135, 195, 235),
    "blue": (40, 80, 200), "navy": (20, 30, 90), "purple": (120, 50, 150), "lavender": (190, 170, 220),
    "pink": (240, 160, 180), "magenta": (200, 40, 140), "red": (200, 30, 30), "dark red": (120, 20, 25),
    "peach": (230, 185, 150),
}
MEASURED = ("palette", "brightness", "contrast", "colour temperature", "sharpness", "noise", "orientation",
            "aspect")


@dataclass(frozen=True)
class Swatch:
    name: str
    hex: str
    share: float  # of the picture's pixels


@dataclass(frozen=True)
class Measurements:
    width: int
    height: int
    orientation: str  # "portrait", "landscape" or "square"
    aspect: str  # the nearest common ratio, e.g. "3:2"
    palette: tuple[Swatch, ...]  # the dominant colours, largest share first
    brightness: float  # mean L*, 0..100
    contrast: float  # standard deviation of L*
    temperature: float  # mean b* minus a quarter of mean a*'s distance from 0: above 0 warm, below cool
    sharpness: float  # variance of the Laplacian of L* at ANALYSIS_SIDE
    noise: float  # estimated noise level of L*, in L* units

    @property
    def words(self) -> dict[str, str]:
        """Each measurement as the word a person would use."""
        return {
            "brightness": _band(self.brightness, (30, 45, 62), ("dark", "dim", "evenly lit", "bright")),
            "contrast": _band(self.contrast, (12, 22), ("low contrast", "moderate contrast", "high contrast")),
            "colour temperature": _band(self.temperature, (-4, 6), ("cool tones", "neutral tones", "warm tones")),
            "sharpness": _band(self.sharpness, (40, 250), ("soft focus", "moderately sharp", "sharp detail")),
            "noise": _band(self.noise, (1.2, 3.0), ("clean", "slightly grainy", "grainy")),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"words": self.words, "measured": list(MEASURED)}


def measure(picture: Image.Image) -> Measurements:
    """The measurements of ``picture`` (any mode; measured as RGB at ANALYSIS_SIDE on its long side)."""
    rgb = picture.convert("RGB")
    scale = ANALYSIS_SIDE / max(rgb.size)
    small = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BILINEAR)
    lab = srgb_to_lab(np.asarray(small))
    lightness = lab[..., 0]
    return Measurements(
        width=rgb.width, height=rgb.height, orientation=_orientation(rgb.width, rgb.height),
        aspect=_aspect(rgb.width, rgb.height), palette=_palette(lab),
        brightness=round(float(lightness.mean()), 2), contrast=round(float(lightness.std()), 2),
        temperature=round(float(lab[..., 2].mean() - 0.25 * abs(lab[..., 1].mean())), 2),
        sharpness=round(_laplacian_variance(lightness), 2), noise=round(_noise(lightness), 3),
    )


def _palette(lab: np.ndarray) -> tuple[Swatch, ...]:
    """The dominant colours: k-means on the pixels in CIELAB (OpenCV, a fixed seed), each centre named."""
    import cv2

    samples = lab.reshape(-1, 3).astype(np.float32)
    count = min(PALETTE_SIZE, len(samples))
    cv2.setRNGSeed(0)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 0.5)
    _compactness, labels, centres = cv2.kmeans(samples, count, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    shares = np.bincount(labels.ravel(), minlength=count) / len(samples)
    names = _name_table()
    swatches: dict[str, list[float]] = {}
    for centre, share in zip(centres, shares, strict=True):
        name = min(names, key=lambda key: float(np.sum((names[key] - centre) ** 2)))
        rgb = _lab_to_rgb(centre)
        found = swatches.setdefault(name, [0.0, *rgb])
        found[0] += float(share)
    ranked = sorted(swatches.items(), key=lambda item: -item[1][0])
    return tuple(Swatch(name, "#{:02x}{:02x}{:02x}".format(*map(int, values[1:])), round(values[0], 3))
                 for name, values in ranked)


def _name_table() -> dict[str, np.ndarray]:
    colours = np.asarray(list(COLOUR_NAMES.values()), dtype=np.uint8)[None]
    lab = srgb_to_lab(colours)[0]
    return dict(zip(COLOUR_NAMES, lab, strict=True))


def _lab_to_rgb(centre: np.ndarray) -> tuple[int, int, int]:
    from img2img.imageio.color import lab_to_srgb

    red, green, blue = lab_to_srgb(centre.astype(np.float64)[None, None])[0, 0]
    return int(red), int(green), int(blue)


def _laplacian_variance(lightness: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(lightness.astype(np.float32), cv2.CV_32F).var())


def _noise(lightness: np.ndarray) -> float:
    """Donoho's estimate: the median absolute deviation of the finest diagonal detail, over 0.6745."""
    values = lightness.astype(np.float64)
    height, width = (values.shape[0] // 2) * 2, (values.shape[1] // 2) * 2
    if height < 2 or width < 2:
        return 0.0
    v = values[:height, :width]
    diagonal = (v[0::2, 0::2] - v[0::2, 1::2] - v[1::2, 0::2] + v[1::2, 1::2]) / 2
    return float(np.median(np.abs(diagonal)) / 0.6745)


def _orientation(width: int, height: int) -> str:
    if abs(width - height) <= 0.05 * max(width, height):
        return "square"
    return "landscape" if width > height else "portrait"


def _aspect(width: int, height: int) -> str:
    ratios = ((1, 1), (5, 4), (4, 3), (3, 2), (16, 10), (16, 9), (2, 1), (21, 9), (3, 1))
    long, short = max(width, height), min(width, height)
    best = min(ratios, key=lambda r: abs(np.log(long / short) - np.log(r[0] / r[1])))
    return f"{best[0]}:{best[1]}" if width >= height else f"{best[1]}:{best[0]}"


def _band(value: float, edges: tuple[float, ...], words: tuple[str, ...]) -> str:
    return words[sum(value >= edge for edge in edges)]


STYLES = ("sd", "midjourney", "plain")
# The seeds' table: the strength for each kind of change (a range, and where to start).
CHANGES: dict[str, tuple[float, float, float]] = {"subtle": (0.2, 0.3, 0.25), "restyle": (0.4, 0.6, 0.5),
                                                  "rework": (0.7, 0.9, 0.8)}
UNMEASURED = "what the picture shows (no captioning model was used: only colour, light, focus and shape are measured)"


@dataclass(frozen=True)
class Description:
    prompt: str
    negative_prompt: str
    style: str
    measurements: Measurements
    strength: dict[str, float]  # the suggested strength for the change asked: low, high and a start
    change: str
    caption: str | None = None  # a captioning model's sentence, when one was used
    ranked: dict[str, list[tuple[str, float]]] | None = None  # a CLIP model's best terms per list, with scores
    models: dict[str, str] | None = None  # the models used, by role ("captioner", "clip")

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"captioned": self.caption is not None}
        if self.caption is None:
            extra["not_measured"] = UNMEASURED
        else:
            extra["caption"] = self.caption
        if self.ranked is not None:
            extra["ranked"] = {name: [{"term": term, "score": score} for term, score in terms]
                               for name, terms in self.ranked.items()}
        if self.models:
            extra["models"] = self.models
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "style": self.style,
                "change": self.change, "strength": self.strength, **extra, **self.measurements.to_dict()}


def describe(picture: Image.Image, style: str = "sd", change: str = "restyle", caption: str | None = None,
             ranked: dict[str, list[tuple[str, float]]] | None = None, models: dict[str, str] | None = None
             ) -> Description:
    """A prompt for ``picture`` written in ``style`` (sd, midjourney or plain) from its measurements, and from a
    captioning model's ``caption`` and a CLIP model's ``ranked`` terms when given, with the strength the seeds
    suggest for ``change`` (subtle, restyle or rework)."""
    from img2img.errors import InvalidArgument

    if style not in STYLES:
        raise InvalidArgument("style", f"one of {', '.join(STYLES)}", style)
    if change not in CHANGES:
        raise InvalidArgument("change", f"one of {', '.join(CHANGES)}", change)
    found = measure(picture)
    words = found.words
    colours = [swatch.name for swatch in found.palette if swatch.share >= 0.08][:3]
    palette = f"{_joined(colours)} palette"
    look = [words["brightness"], words["contrast"], words["colour temperature"], words["sharpness"]]
    negative = ["blurry", "low quality"] if words["sharpness"] != "soft focus" else ["low quality"]
    if words["noise"] != "clean":
        look.append(words["noise"])
    else:
        negative.append("noise")
    terms = _terms(ranked or {})
    subject = [caption] if caption else []
    if style == "sd":
        weighted = [f"({term}:1.1)" if index == 0 else term for index, term in enumerate(terms)]
        prompt = ", ".join([*subject, *weighted, f"({palette}:1.2)", *look, f"{found.orientation} composition"])
    elif style == "midjourney":
        prompt = f"{', '.join([*subject, *terms, palette, *look])} --ar {found.aspect}"
    elif caption:
        known = f" ({', '.join(terms)})" if terms else ""
        prompt = f"{caption[0].upper()}{caption[1:]}{known}: a {found.orientation} picture ({found.aspect}) with a " \
                 f"{palette}, {', '.join(look)}."
    else:
        prompt = (f"A {found.orientation} picture ({found.aspect}) with a {palette}: {', '.join(look)}. It does not "
                  "say what the picture shows; no captioning model was used.")
    low, high, start = CHANGES[change]
    return Description(prompt, ", ".join(negative), style, found, {"low": low, "high": high, "start": start}, change,
                       caption, ranked, models)


def _terms(ranked: dict[str, list[tuple[str, float]]]) -> list[str]:
    """The ranked terms in prompt order: medium, movement, artist ("by ..."), flavours."""
    terms = []
    for name in ("mediums", "movements", "artists", "flavors"):
        for term, _score in ranked.get(name, []):
            terms.append(f"by {term}" if name == "artists" else term)
    return terms


def _joined(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
