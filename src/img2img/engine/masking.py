"""Masks in pixels: reading one, growing the canvas for an outpaint, blurring, the "only masked" box, the fill
for the masked area, and the paste-back that keeps every unmasked pixel of the source exactly.

A mask here is an 8-bit greyscale image: 255 repaints, 0 keeps, grey blends. The mask's blurred form is the
paste-back weight; the loop binarizes it at one half (``img2img.engine.mask_conditioner``), as diffusers and A1111
do, so the blur softens the seam without widening what the model repaints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from img2img.engine.inpaint import ALPHA, Inpaint
from img2img.errors import InvalidArgument, SourceImageError
from img2img.imageio.resize import fit_to_size
from img2img.imageio.source import SourceImage, open_checked

FILL_RADII = (256, 64, 16, 4, 1)  # coarse to fine: far from the edge the fill is smooth, near it sharp


@dataclass(frozen=True)
class Masking:
    """A request's mask resolved against its source: what the pipeline's stages need.

    ``canvas`` is the source, grown when the request outpaints; ``weights`` is the blurred mask at the canvas's
    size (the paste-back's weights). ``sha256`` identifies the mask as given (None for "alpha" or an outpaint
    alone, which the source determines).
    """

    inpaint: Inpaint
    canvas: SourceImage
    weights: Image.Image  # L, at the canvas size
    sha256: str | None
    notes: tuple[str, ...]
    source_sha256: str  # of the source as given (the canvas of an outpaint is not what reproduce reads)

    @property
    def empty(self) -> bool:
        """An all-black mask: nothing to repaint."""
        return self.weights.getbbox() is None

    def at(self, size: tuple[int, int], mode: str) -> tuple[Image.Image, Image.Image]:
        """The canvas and the weights at the output ``size`` (resized as the request's resize mode says)."""
        if size == self.canvas.rgb.size:
            return self.canvas.rgb, self.weights
        return fit_to_size(self.canvas.rgb, size, mode), fit_to_size(self.weights, size, mode)  # type: ignore[arg-type]

    def region(self, output_size: tuple[int, int], mode: str) -> tuple[int, int, int, int] | None:
        """The box that the model paints, in output pixels: None for the whole picture."""
        if self.inpaint.inpaint_area != "masked":
            return None
        return crop_region(self.at(output_size, mode)[1], self.inpaint.masked_padding)

    def plan(self, output_size: tuple[int, int], working_size: tuple[int, int], mode: str) -> MaskPlan:
        """The mask's part of the stages, once the sizes are known."""
        base, weights = self.at(output_size, mode)
        region = self.region(output_size, mode)
        if region is None:
            working = fit_to_size(self.canvas.rgb, working_size, mode)  # type: ignore[arg-type]
            working_weights = weights.resize(working_size, Image.BILINEAR)
        else:
            working = base.crop(region).resize(working_size, Image.LANCZOS)
            working_weights = weights.crop(region).resize(working_size, Image.BILINEAR)
        if self.inpaint.masked_content == "fill":
            working = fill_masked(working, working_weights)
        return MaskPlan(self.inpaint, base, weights, region, working, working_weights, self.sha256, self.empty,
                        self.source_sha256)


@dataclass(frozen=True)
class MaskPlan:
    """What the stages need of a mask: the pictures at the output and the working size."""

    inpaint: Inpaint
    base: Image.Image  # the canvas at the output size: the paste-back keeps its pixels
    weights: Image.Image  # L at the output size: the paste-back's weights
    region: tuple[int, int, int, int] | None  # the box painted (only masked), in output pixels
    working: Image.Image  # what the model starts from, at the working size (pre-filled for "fill")
    working_weights: Image.Image  # L at the working size: what the loop repaints (binarized there)
    sha256: str | None
    empty: bool  # an all-black mask: nothing is painted
    source_sha256: str

    def keep(self, painted: Image.Image, source: Image.Image) -> Image.Image:
        """A pass's result at the working size with the unmasked area of ``source`` put back."""
        return Image.composite(painted, source, self.working_weights)

    def finish(self, painted: Image.Image) -> Image.Image:
        """The result at the output size: ``painted`` through the mask over the canvas, kept pixels exact."""
        return paste_back(self.base, painted, self.weights, self.region)


def resolve_mask(inpaint: Inpaint, source: SourceImage, max_pixels: int) -> Masking:
    """Read ``inpaint``'s mask against ``source``, grow the canvas for an outpaint and blur the mask."""
    notes: list[str] = []
    if inpaint.mask is None:
        mask, sha256 = Image.new("L", source.rgb.size, 0), None
    elif inpaint.mask == ALPHA:
        if source.alpha is None:
            raise InvalidArgument("mask", "a source with transparent pixels for 'alpha'",
                                  f"{source.name} without transparency")
        mask, sha256 = ImageChops.invert(source.alpha), None
    else:
        mask, sha256 = read_mask(inpaint.mask, max_pixels)
        if mask.size != source.rgb.size:
            notes.append(_resized_note(mask.size, source.rgb.size))
            mask = mask.resize(source.rgb.size, Image.BILINEAR)
    if inpaint.invert_mask:
        mask = ImageChops.invert(mask)
    canvas = source
    if inpaint.outpaints:
        canvas, mask = grow_canvas(source, mask, inpaint.outpaint, inpaint.mask_blur, max_pixels)
    weights = mask.filter(ImageFilter.GaussianBlur(inpaint.mask_blur)) if inpaint.mask_blur else mask
    if weights.getbbox() is None:
        notes.append("the mask is all black: nothing to repaint, so the source comes back unchanged")
    return Masking(inpaint, canvas, weights, sha256, tuple(notes), source.sha256)


def read_mask(mask: Image.Image | Path | str | bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """The mask as 8-bit greyscale and the SHA-256 of its pixels; transparent pixels read as black (keep)."""
    if isinstance(mask, Image.Image):
        image = mask
    elif isinstance(mask, bytes):
        try:
            image = open_checked(mask, max_pixels, "mask")
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise SourceImageError(f"mask is truncated or corrupt ({exc})") from exc
    else:
        path = Path(mask)
        if not path.is_file():
            found = "is not a file" if path.exists() else "does not exist"
            raise SourceImageError(f"mask should be an image file or 'alpha', but {path} {found}")
        try:
            with path.open("rb") as stream:
                image = open_checked(stream, max_pixels, "mask", str(path))
                image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise SourceImageError(f"mask {path} is truncated or corrupt ({exc})") from exc
    if image.width * image.height > max_pixels:
        raise SourceImageError(f"mask should have at most {max_pixels:,} pixels, but it is "
                               f"{image.width}x{image.height}")
    if image.mode in ("RGBA", "LA", "PA", "P", "RGBa", "La") or "transparency" in image.info:
        flat = Image.new("RGBA", image.size, (0, 0, 0, 255))
        flat.alpha_composite(image.convert("RGBA"))
        image = flat
    grey = image.convert("L")
    digest = hashlib.sha256(f"{grey.width}x{grey.height}:".encode())
    digest.update(grey.tobytes())
    return grey, digest.hexdigest()


def grow_canvas(source: SourceImage, mask: Image.Image, pads: tuple[int, int, int, int], blur: int,
                max_pixels: int) -> tuple[SourceImage, Image.Image]:
    """The source with ``pads`` (left, top, right, bottom) added, the new area filled with the edge's colours,
    and the mask grown to cover it, reaching ``blur`` pixels into the old picture so that the seam is repainted."""
    left, top, right, bottom = pads
    width, height = source.rgb.width + left + right, source.rgb.height + top + bottom
    if width * height > max_pixels:
        raise InvalidArgument("outpaint", f"a canvas of at most {max_pixels:,} pixels",
                              f"{width}x{height} ({width * height:,})")
    pixels = np.pad(np.asarray(source.rgb), [(top, bottom), (left, right), (0, 0)], mode="edge")
    added = np.full((height, width), 255, np.uint8)
    added[top:top + source.rgb.height, left:left + source.rgb.width] = 0
    grown = np.full((height, width), 255, np.uint8)  # the added area and a band of the old edge beside it
    grown[top + (blur if top else 0):top + source.rgb.height - (blur if bottom else 0),
          left + (blur if left else 0):left + source.rgb.width - (blur if right else 0)] = 0
    old = np.zeros((height, width), np.uint8)
    old[top:top + source.rgb.height, left:left + source.rgb.width] = np.asarray(mask)
    new_mask = Image.fromarray(np.maximum(grown, old), "L")
    # The edge's colours streaked outwards, then smoothed into the surrounding colours.
    canvas = fill_masked(Image.fromarray(pixels, "RGB"), Image.fromarray(added, "L"))
    alpha = None
    if source.alpha is not None:
        alpha = Image.new("L", (width, height), 255)
        alpha.paste(source.alpha, (left, top))
    note = f"outpainted {source.rgb.width}x{source.rgb.height} to {width}x{height}"
    return SourceImage(canvas, alpha, (*source.notes, note), source.name), new_mask


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The masked area filled with the surrounding colours, blurred (A1111's "fill"); kept pixels unchanged.

    Each pass estimates every masked pixel as the blur of the kept pixels weighted by how much of them the blur
    reaches (a normalised convolution), from a wide radius to a narrow one.
    """
    keep = ImageChops.invert(mask.point(lambda v: 255 if v >= 128 else 0))
    if keep.getbbox() is None:
        return image.copy()  # nothing kept to take colours from
    result = image.copy()
    for radius in FILL_RADII:
        weighted = image.convert("RGBA")
        weighted.putalpha(keep)
        blurred = weighted.convert("RGBa").filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        reached = blurred.getchannel("A").point(lambda v: 255 if v >= 8 else 0)
        result.paste(blurred.convert("RGB"), (0, 0), ImageChops.multiply(reached, mask.point(
            lambda v: 255 if v >= 128 else 0)))
    return result


def crop_region(weights: Image.Image, padding: int) -> tuple[int, int, int, int]:
    """A1111's "only masked" box: the mask's bounding box plus ``padding``, inside the picture."""
    box = weights.getbbox()
    if box is None:
        return (0, 0, *weights.size)
    left, top, right, bottom = box
    return (max(0, left - padding), max(0, top - padding), min(weights.width, right + padding),
            min(weights.height, bottom + padding))


def paste_back(base: Image.Image, painted: Image.Image, weights: Image.Image,
               region: tuple[int, int, int, int] | None = None) -> Image.Image:
    """``painted`` over ``base`` through ``weights`` (``painted`` covers ``region``, or all of ``base``).

    Where the weight is 0 the result is ``base``'s pixel exactly; where it is 255, ``painted``'s.
    """
    full = base.copy()
    if region is None:
        layer = painted if painted.size == base.size else painted.resize(base.size, Image.LANCZOS)
        return Image.composite(layer, full, weights)
    size = (region[2] - region[0], region[3] - region[1])
    layer = full.copy()
    layer.paste(painted if painted.size == size else painted.resize(size, Image.LANCZOS), region[:2])
    return Image.composite(layer, full, weights)


def _resized_note(given: tuple[int, int], wanted: tuple[int, int]) -> str:
    ratio = abs(given[0] / given[1] - wanted[0] / wanted[1]) > 0.01
    shape = " (another aspect ratio: stretched)" if ratio else ""
    return f"the mask is {given[0]}x{given[1]} and the source {wanted[0]}x{wanted[1]}: mask resized{shape}"
