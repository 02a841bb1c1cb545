"""A request made ready to travel: its picture files carried as bytes, since a worker on another machine cannot
read the driver's disk, and unpacked there into files of the same names.

The pictures are the source, the style picture, the inpaint mask, the control units' and the image prompts'
images. Models, LoRAs and the like are not carried: every node finds them by name (see ``img2img.cluster``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from img2img.engine.inpaint import ALPHA
from img2img.engine.request import GenerationRequest
from img2img.errors import SourceImageError

MAX_CARRIED_BYTES = 256 * 2**20  # a picture file larger than this is refused rather than sent


@dataclass(frozen=True)
class Carried:
    """A picture file on its way to a worker: the path it had on the driver and its bytes."""

    path: str
    data: bytes


def pack(request: GenerationRequest) -> GenerationRequest:
    """``request`` with each picture that is a file replaced by a ``Carried`` (others, PIL images included, stay)."""
    return _each_picture(request, _carry)


def unpack(request: GenerationRequest, folder: Path) -> tuple[GenerationRequest, dict[str, str]]:
    """``request`` with each ``Carried`` written under ``folder`` (same file name) and its path in its place, and
    the map from those paths back to the driver's (for messages that name a file)."""
    written: dict[str, str] = {}

    def place(value: Any) -> Any:
        if not isinstance(value, Carried):
            return value
        target = folder / hashlib.sha256(value.data).hexdigest()[:16] / Path(value.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(value.data)
        written[str(target)] = value.path
        return target

    return _each_picture(request, place), written


def _carry(value: Any) -> Any:
    if not isinstance(value, (str, Path)):
        return value
    path = Path(value)
    if not path.is_file():
        return value  # the worker reports it as missing, in the same words as a run here
    size = path.stat().st_size
    if size > MAX_CARRIED_BYTES:
        raise SourceImageError(f"{path} should be at most {MAX_CARRIED_BYTES // 2**20} MiB to be sent to a Ray "
                               f"worker, but is {size / 2**20:.0f} MiB")
    return Carried(str(value), path.read_bytes())


def _each_picture(request: GenerationRequest, change: Any) -> GenerationRequest:
    inpaint = request.inpaint
    if inpaint is not None and inpaint.mask != ALPHA:  # the word is not a file
        inpaint = replace(inpaint, mask=change(inpaint.mask))
    return replace(
        request, source=change(request.source),
        style_image=change(request.style_image) if request.style_image is not None else None, inpaint=inpaint,
        control=tuple(replace(unit, image=change(unit.image)) if unit.image is not None else unit
                      for unit in request.control),
        image_prompts=tuple(replace(prompt, image=change(prompt.image)) for prompt in request.image_prompts))
