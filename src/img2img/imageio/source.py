"""Reading a source image: any common format and mode, upright, as 8-bit sRGB, with its alpha kept aside.

Checks happen before decoding where they can: the pixel count is read from the header, so a decompression bomb
is refused without allocating it; a truncated or corrupt file is refused with its name.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageColor, ImageOps, UnidentifiedImageError

from img2img.errors import InvalidArgument, SourceImageError

DEFAULT_MAX_PIXELS = 40_000_000  # about 7300x5500; refused before decoding
SOFT_SHORT_SIDE = 256  # below this the model has too little detail to work with
READABLE = "a PNG, JPEG, WebP, BMP, TIFF or GIF image"


@dataclass(frozen=True)
class SourceImage:
    """A decoded source: ``rgb`` is what the engine works on; ``alpha`` is the original transparency, if any."""

    rgb: Image.Image
    alpha: Image.Image | None
    notes: tuple[str, ...]  # warnings for the user, one line each
    name: str  # the file name, or "image" for an in-memory picture

    @cached_property
    def sha256(self) -> str:
        """Computed once: every record of a batch or sweep carries it."""
        return pixels_sha256(self.rgb)


def read_source(
    source: Image.Image | Path | str | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, background: str = "white",
    field: str = "source",
) -> SourceImage:
    """Decode ``source`` (a path, the bytes of a file, or a PIL image) into an upright 8-bit sRGB picture.

    Transparent areas are composited onto ``background`` (any CSS colour name or #rrggbb); the alpha channel is
    returned separately so that it can be put back on the result. Errors name ``field``.
    """
    fill = parse_background(background)
    name, image = _open(source, max_pixels, field)
    notes: list[str] = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"{name} has {frames} frames; only the first is used")
    image = _upright(image, name)
    alpha = _alpha_of(image)
    rgb = _to_srgb(image, fill)
    if min(rgb.size) < SOFT_SHORT_SIDE:
        notes.append(f"{name} is {rgb.width}x{rgb.height}; under {SOFT_SHORT_SIDE} px on the short side the result "
                     "will be soft (upscale the source or pass --size)")
    return SourceImage(rgb, alpha, tuple(notes), name)


def load_source(source: Image.Image | Path | str, max_pixels: int = DEFAULT_MAX_PIXELS,
                background: str = "white") -> Image.Image:
    """The RGB picture of ``read_source``."""
    return read_source(source, max_pixels=max_pixels, background=background).rgb


def parse_background(colour: str) -> tuple[int, int, int]:
    try:
        return ImageColor.getrgb(colour)[:3]
    except (ValueError, AttributeError) as exc:
        raise InvalidArgument("background", "a colour name or #rrggbb", colour) from exc


def pixels_sha256(image: Image.Image) -> str:
    """SHA-256 of an RGB image's size and pixels: the same for the same picture in any file format."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.convert("RGB").tobytes())
    return digest.hexdigest()


def _open(source: Image.Image | Path | str | bytes, max_pixels: int, field: str) -> tuple[str, Image.Image]:
    if isinstance(source, Image.Image):
        _check_pixels("image", source, max_pixels, field)
        return "image", source
    if isinstance(source, bytes):
        name, stream = "upload", io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            found = "is not a file" if path.exists() else "does not exist"
            raise SourceImageError(f"{field} should be an image file, but {path} {found}")
        name, stream = str(path), path.open("rb")
    try:
        image = open_checked(stream, max_pixels, field, name)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise SourceImageError(f"{field} {name} is truncated or corrupt ({exc})") from exc
    return name, image


def open_checked(file: bytes | BinaryIO | Path, max_pixels: int, field: str, name: str | None = None
                 ) -> Image.Image:
    """Open an image's header (nothing decoded yet) and refuse it, naming ``field``, when it is not an image or
    has more than ``max_pixels``: every reader of untrusted pictures goes through here, so a decompression bomb
    is refused before it is allocated."""
    stream = io.BytesIO(file) if isinstance(file, bytes) else file
    name = name or ("the upload" if isinstance(file, bytes) else str(file))
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check works on its global limit; ours is per call and checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except Image.DecompressionBombError as exc:  # Pillow's hard limit, hit in the header before ours
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found[1]):,} pixels" if found else "larger"
        raise SourceImageError(f"{field} should have at most {max_pixels:,} pixels, but {name} is {size}") from exc
    except UnidentifiedImageError as exc:
        raise SourceImageError(f"{field} should be {READABLE}, but {name} is not one") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise SourceImageError(f"{field} {name} is truncated or corrupt ({exc})") from exc
    _check_pixels(name, image, max_pixels, field)
    return image


def _check_pixels(name: str, image: Image.Image, max_pixels: int, field: str = "source") -> None:
    if image.width < 1 or image.height < 1:
        raise SourceImageError(f"{field} should have pixels, but {name} is {image.width}x{image.height}")
    if image.width * image.height > max_pixels:
        raise SourceImageError(f"{field} should have at most {max_pixels:,} pixels, but {name} is "
                               f"{image.width}x{image.height} ({image.width * image.height:,})")


def _upright(image: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation, as every photo viewer does."""
    try:
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, OSError) as exc:  # a broken EXIF block should not hide the picture
        warnings.warn(f"{name}: EXIF orientation unreadable ({exc}); used as stored", stacklevel=3)
        return image


def _alpha_of(image: Image.Image) -> Image.Image | None:
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        return None if alpha.getextrema() == (255, 255) else alpha
    return None


def _to_srgb(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """8-bit RGB in sRGB: deep images scaled (not clipped), colour profiles applied, transparency flattened."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _deep_to_8bit(image)
    image = _apply_icc_profile(image)
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        flat = Image.new("RGBA", image.size, (*fill, 255))
        flat.alpha_composite(image.convert("RGBA"))
        return flat.convert("RGB")
    return image.convert("RGB")


def _deep_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8 bits by scaling; Pillow's own conversion clips everything above 255."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0  # float images are either 0..1 or 0..255
    else:
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0.0) > 255 else 255.0
    scaled = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _apply_icc_profile(image: Image.Image) -> Image.Image:
    """Convert from the embedded colour profile (Display P3 phone photos, CMYK print files) to sRGB."""
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return image
    try:
        embedded = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(image, embedded, ImageCms.createProfile("sRGB"), outputMode=output_mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # an unusable profile: fall back to the numbers as stored
    return converted if converted is not None else image
