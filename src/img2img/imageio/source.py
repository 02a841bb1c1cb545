"""Reading a source image: any common format and mode, upright, as RGB."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from img2img.errors import SourceImageError

DEFAULT_MAX_PIXELS = 40_000_000  # refuses decompression bombs before decoding


def load_source(
    source: Image.Image | Path | str, max_pixels: int = DEFAULT_MAX_PIXELS, background: str = "white"
) -> Image.Image:
    """Decode ``source`` into an upright RGB image; transparency is composited onto ``background``."""
    if isinstance(source, Image.Image):
        image = source
    else:
        path = Path(source)
        if not path.is_file():
            raise SourceImageError(f"source should be an image file, but {path} does not exist")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(path)
                if image.width * image.height > max_pixels:
                    raise SourceImageError(f"source should have at most {max_pixels:,} pixels, but {path} has "
                                           f"{image.width}x{image.height}")
                image.load()
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise SourceImageError(f"source should be a PNG, JPEG, WebP or other image, but {path} is not "
                                   f"readable as one ({type(exc).__name__})") from exc
        except OSError as exc:
            raise SourceImageError(f"source {path} could not be read: {exc}") from exc
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, background)
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return image.convert("RGB")


def pixels_sha256(image: Image.Image) -> str:
    """SHA-256 of an RGB image's size and pixels: the same for the same picture in any file format."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.convert("RGB").tobytes())
    return digest.hexdigest()
