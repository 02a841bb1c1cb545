"""Names for the 26 styles of the built-in network, a few named blends, and reading a prompt as styles.

The network came with numbers only. Each name below was chosen by looking at the style on three photographs
(scikit-image's astronaut, cat and coffee cup); the words say what it does to a photo.

A prompt names styles, separated by commas or "+", each optionally weighted: ``"starry-swirl"``,
``"ink-drawing + frost-wash"``, ``"fauve:2, crimson:1"``. Names are matched without regard to case, and spaces
may stand for hyphens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from img2img.errors import InvalidArgument


@dataclass(frozen=True)
class Style:
    index: int  # in the 26-style network
    name: str
    description: str


STYLES: tuple[Style, ...] = (
    Style(0, "pastel-gold", "soft yellow and sky-blue pastel painting"),
    Style(1, "bold-outline", "thick black outlines, flat yellow and white"),
    Style(2, "soft-sketch", "grey and peach shaded sketch"),
    Style(3, "ribbons", "abstract red, blue and yellow ribbons; the picture dissolves"),
    Style(4, "fauve", "warm reds and yellows against pale blue, fauvist"),
    Style(5, "amber-impasto", "thick orange and amber paint texture"),
    Style(6, "indigo-cells", "dark indigo with cell-like dots, very abstract"),
    Style(7, "night-fire", "dark blues and glowing yellows, flame-like strokes"),
    Style(8, "candy-sketch", "white paper with pink and cyan line work"),
    Style(9, "teal-mosaic", "teal and red mosaic pattern"),
    Style(10, "rust-oil", "brown and rust oil portrait tones"),
    Style(11, "ink-drawing", "brown ink lines on cream paper"),
    Style(12, "lilac-haze", "hazy lilac and butter-yellow pastel"),
    Style(13, "green-cubist", "acid green and yellow cubist planes"),
    Style(14, "frost-wash", "pale icy-blue watercolour wash"),
    Style(15, "stained-glass", "pastel panes with dark leading"),
    Style(16, "blue-strokes", "blue and orange brush strokes"),
    Style(17, "brick-grid", "red, orange and blue rectangles; the picture dissolves"),
    Style(18, "sepia-woodcut", "beige and brown woodcut lines"),
    Style(19, "starry-swirl", "deep blue and yellow swirls, Van Gogh-like"),
    Style(20, "crimson", "red expressionist painting with dark outlines"),
    Style(21, "pop-blocks", "flat pop-art colour blocks"),
    Style(22, "slate-poster", "slate blue and cream poster with dark outlines"),
    Style(23, "smoky-oil", "dark smoky greens and greys, soft oil"),
    Style(24, "delft-etch", "cream and blue etched texture"),
    Style(25, "copper-mosaic", "dense copper and blue mosaic strokes"),
)

BLENDS: dict[str, tuple[str, dict[str, float]]] = {
    "sunset": ("fauve and crimson: hot reds and golds", {"fauve": 1.0, "crimson": 1.0}),
    "sketchbook": ("ink lines with a pale watercolour wash", {"ink-drawing": 1.0, "frost-wash": 1.0}),
    "starry-fire": ("Van Gogh swirls with glowing night colours", {"starry-swirl": 1.0, "night-fire": 1.0}),
    "pastel-dream": ("gold and lilac pastels", {"pastel-gold": 1.0, "lilac-haze": 1.0}),
    "old-print": ("sepia woodcut over blue etching", {"sepia-woodcut": 1.0, "delft-etch": 1.0}),
}

_BY_NAME = {style.name: style for style in STYLES}
_PART = re.compile(r"^(?P<name>[a-z][a-z -]*?)\s*(?::\s*(?P<weight>[0-9]*\.?[0-9]+))?$")


def style_names() -> list[str]:
    return [style.name for style in STYLES] + list(BLENDS)


def parse_styles(prompt: str) -> dict[int, float]:
    """The prompt as network style weights {index: weight}, summing to 1; empty for an empty prompt.

    Raises InvalidArgument naming the first part that is not a style.
    """
    weights: dict[int, float] = {}
    for part in (p.strip().lower() for p in re.split(r"[,+]", prompt)):
        if not part:
            continue
        match = _PART.match(part)
        name = re.sub(r"[ -]+", "-", match["name"]) if match else part
        if match is None or (name not in _BY_NAME and name not in BLENDS):
            raise InvalidArgument(
                "prompt", f"built-in style names such as {', '.join(style_names()[:4])} (img2img styles lists "
                "all 31); free-text prompts need a diffusion model (img2img models add NAME PATH)", part)
        weight = float(match["weight"]) if match["weight"] else 1.0
        if weight <= 0:
            raise InvalidArgument("prompt", "style weights above 0", part)
        components = BLENDS[name][1] if name in BLENDS else {name: 1.0}
        share = sum(components.values())
        for component, amount in components.items():
            index = _BY_NAME[component].index
            weights[index] = weights.get(index, 0.0) + weight * amount / share
    total = sum(weights.values())
    return {index: value / total for index, value in sorted(weights.items())}
