"""Writing results atomically: the file appears complete or not at all, and never replaces one by accident."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

from img2img.errors import OutputPathError
from img2img.imageio.metadata import Metadata, format_of, save_options

MAX_NUMBERED = 100_000
DEFAULT_QUALITY = 90  # JPEG and WebP; WebP at 100 is lossless


def save_image(
    image: Image.Image, path: Path, metadata: Metadata, *, quality: int = DEFAULT_QUALITY, overwrite: bool = False,
) -> Path:
    """Write ``image`` with ``metadata`` in the format ``path``'s suffix names (.png, .jpg/.jpeg, .webp).

    The data goes to a temporary file in the same folder first, so that an interrupted write leaves nothing
    behind. When ``path`` exists and ``overwrite`` is False, the next free numbered name (``name-1.png``,
    ``name-2.png``, ...) is used. JPEG has no transparency: an RGBA image is flattened onto white. Returns the
    path written.
    """
    format_ = format_of(path)
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"output folder should exist, but {folder} does not")
    if format_ == "jpeg" and image.mode != "RGB":
        image = _flatten(image)
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=path.suffix)
    except OSError as exc:
        raise OutputPathError(f"output folder should be writable, but {folder} is not ({exc.strerror})") from exc
    try:
        with os.fdopen(handle, "wb") as out:
            image.save(out, **save_options(format_, metadata, quality))
        if overwrite:
            Path(temporary).replace(path)
            return path
        return _link_to_free_name(Path(temporary), path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def check_writable(folder: Path) -> None:
    """Fail before any work is done when results could not be written into ``folder``."""
    if not folder.is_dir():
        raise OutputPathError(f"output folder should exist, but {folder} does not")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder should be writable, but {folder} is not")


def _flatten(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, "white")
    flat.alpha_composite(rgba)
    return flat.convert("RGB")


def _link_to_free_name(temporary: Path, wanted: Path) -> Path:
    """Hard-link the finished file to the first free name; a link fails rather than replace an existing file."""
    for number in range(MAX_NUMBERED):
        candidate = wanted if number == 0 else wanted.with_name(f"{wanted.stem}-{number}{wanted.suffix}")
        try:
            os.link(temporary, candidate)
            return candidate
        except FileExistsError:
            continue
    raise OutputPathError(f"output should have a free name near {wanted}, but {MAX_NUMBERED} are taken")
