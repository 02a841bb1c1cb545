"""The inpainting part of a request: which pixels to repaint (a mask, or the area an outpaint adds) and how.

``Inpaint`` is one typed, self-checking part of ``GenerationRequest`` (its ``inpaint``). Its scalar fields are
declared with their specs as the request's are (``img2img.engine.fields``), so the CLI options, the server's
schema and the studio derive from them; the A1111 names that differ in type (``inpainting_fill`` 0..3,
``inpaint_full_res``) are mapped by the A1111 face.

How the mask acts: ``img2img.engine.masking`` (pixels: blur, crop, fill, paste-back) and
``img2img.engine.mask_conditioner`` (latents, inside the denoising loop).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from PIL import Image

from img2img.engine.fields import FieldSpec, field_table, scalar
from img2img.errors import InvalidArgument

AREAS: tuple[str, ...] = ("whole", "masked")
CONTENTS: tuple[str, ...] = ("original", "fill", "noise", "nothing")
MAX_BLUR = 64
MAX_PADDING = 512
MAX_OUTPAINT = 2048  # pixels a side; the grown canvas must still pass the source's pixel limit
SIDES: tuple[str, ...] = ("left", "top", "right", "bottom")
ALPHA = "alpha"  # the mask's word for "the source's transparent pixels"


@dataclass(frozen=True)
class Inpaint:
    """What to repaint, and how.

    Attributes:
        mask: white repaints, black keeps, grey blends (a PIL image, a path or a file's bytes; resized to the
            source when the sizes differ, with a note), or ``"alpha"``: the source's transparent pixels. None with
            an outpaint alone: the added area is the mask.
        outpaint: pixels to add on each side (left, top, right, bottom); the added area is pre-filled as
            ``masked_content`` says and repainted, overlapping the old edge by the mask blur.
    """

    mask: Image.Image | Path | str | bytes | None = None
    mask_blur: int = scalar(int, 4, "Blur the mask's edge by this many pixels, so that the repaint blends in.",
                            0, MAX_BLUR, a1111="mask_blur")
    invert_mask: bool = scalar(bool, False, "Repaint the black part of the mask instead of the white.")
    inpaint_area: str = scalar(str, "whole", "whole: the whole picture at the working size; masked: only the "
                               "mask's box plus the padding, scaled to the model's native size (detail on big "
                               "photos).", choices=AREAS)
    masked_padding: int = scalar(int, 32, "With --inpaint-area masked: pixels of context around the mask's box.",
                                 0, MAX_PADDING, a1111="inpaint_full_res_padding")
    masked_content: str = scalar(str, "original", "What the masked area starts from: original (the source), fill "
                                 "(the surrounding colours, blurred), noise (latent noise) or nothing (a zeroed "
                                 "latent).", choices=CONTENTS)
    outpaint: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def outpaints(self) -> bool:
        return any(self.outpaint)

    def validated(self) -> Inpaint:
        """Check every field; InvalidArgument names the first that is wrong."""
        from img2img.engine.request import check_scalar

        for spec in INPAINT_FIELDS:
            check_scalar(spec, getattr(self, spec.name))
        if self.mask is None and not self.outpaints:
            raise InvalidArgument("mask", "an image, a path or 'alpha' (or an outpaint)", None)
        if isinstance(self.mask, str) and self.mask.lower() == ALPHA:
            return replace(self, mask=ALPHA, outpaint=check_outpaint(self.outpaint))
        if self.mask is not None and not isinstance(self.mask, Image.Image | Path | str | bytes):
            raise InvalidArgument("mask", "an image, a path or 'alpha'", type(self.mask).__name__)
        return replace(self, outpaint=check_outpaint(self.outpaint))


INPAINT_FIELDS: tuple[FieldSpec, ...] = field_table(Inpaint)
INPAINT_SPEC: MappingProxyType[str, FieldSpec] = MappingProxyType({spec.name: spec for spec in INPAINT_FIELDS})


def check_outpaint(value: object) -> tuple[int, int, int, int]:
    """Four whole numbers of pixels in [0, MAX_OUTPAINT], as (left, top, right, bottom)."""
    ok = isinstance(value, tuple | list) and len(value) == 4 and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_OUTPAINT for v in value)
    if not ok:
        raise InvalidArgument("outpaint", f"four whole numbers of pixels (left, top, right, bottom) in "
                              f"[0, {MAX_OUTPAINT}]", value)
    return tuple(value)  # type: ignore[return-value]


def parse_outpaint(text: str) -> tuple[int, int, int, int]:
    """``--outpaint`` as typed: ``128`` (every side) or ``right=256,bottom=128``."""
    text = text.strip()
    if text.isdigit():
        return check_outpaint((int(text),) * 4)
    sides = dict.fromkeys(SIDES, 0)
    for item in text.split(","):
        name, _, number = item.partition("=")
        name = name.strip().lower()
        if name not in sides or not number.strip().isdigit():
            raise InvalidArgument("outpaint", "pixels for every side (128) or per side (right=256,bottom=128; "
                                  f"sides {', '.join(SIDES)})", text)
        sides[name] = int(number)
    return check_outpaint(tuple(sides.values()))
