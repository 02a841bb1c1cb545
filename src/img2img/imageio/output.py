"""Writing results: PNG with the generation record, atomically, never overwriting by accident."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin

from img2img.engine.result import GenerationRecord
from img2img.errors import OutputPathError

MAX_NUMBERED = 100_000


def save_png(image: Image.Image, path: Path, record: GenerationRecord, overwrite: bool = False) -> Path:
    """Write ``image`` to ``path`` with A1111's "parameters" text and our JSON record as PNG text chunks.

    The file appears complete or not at all. When ``path`` exists and ``overwrite`` is False, the next free
    numbered name (``name-1.png``, ``name-2.png``, ...) is used. Returns the path written.
    """
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"output folder should exist, but {folder} does not")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", record.to_parameters_text())
    info.add_itxt("img2img", record.to_json())
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=".png")
    try:
        with os.fdopen(handle, "wb") as out:
            image.save(out, format="PNG", pnginfo=info)
        if overwrite:
            Path(temporary).replace(path)
            return path
        return _link_to_free_name(Path(temporary), path)
    finally:
        Path(temporary).unlink(missing_ok=True)


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
