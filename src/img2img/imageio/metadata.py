"""Generation metadata inside image files, in the two forms that matter.

- ``parameters``: A1111's text (prompt, ``Negative prompt: ...``, then ``Steps: ..., Sampler: ...``), which the
  ecosystem's tools read (A1111's PNG Info, ComfyUI loaders, civitai, sd-parsers).
- ``img2img``: our complete JSON record (``img2img.engine.result.GenerationRecord``), which ``reproduce`` needs.

PNG keeps both as text chunks (``parameters`` as tEXt like A1111, ``img2img`` as UTF-8 iTXt). JPEG and WebP keep
them in EXIF, where A1111 puts its text: the parameters in UserComment (``UNICODE`` then UTF-16BE, as A1111 writes
it) and our record in MakerNote (``img2img`` then UTF-8 JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, PngImagePlugin

from img2img.errors import InvalidArgument, SourceImageError

OUTPUT_FORMATS: dict[str, str] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
SUFFIXES: dict[str, str] = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
EXIF_IFD, USER_COMMENT, MAKER_NOTE = 0x8769, 0x9286, 0x927C
_UNICODE, _ASCII, _OURS = b"UNICODE\0", b"ASCII\0\0\0", b"img2img\0"


@dataclass(frozen=True)
class Metadata:
    parameters: str | None  # A1111's text
    record: str | None  # our JSON record

    def __bool__(self) -> bool:
        return self.parameters is not None or self.record is not None


def format_name(text: str) -> str:
    """Canonical output format from a name such as "PNG", "jpg" or "webp"."""
    name = text.strip().lower().lstrip(".")
    canonical = OUTPUT_FORMATS.get(f".{name}")
    if canonical is None:
        raise InvalidArgument("format", "png, jpeg or webp", text)
    return canonical


def format_of(path: Path) -> str:
    """The output format a file name asks for, from its suffix."""
    canonical = OUTPUT_FORMATS.get(path.suffix.lower())
    if canonical is None:
        raise InvalidArgument("output", "a file name ending in .png, .jpg, .jpeg or .webp", str(path))
    return canonical


def save_options(format_: str, metadata: Metadata, quality: int) -> dict[str, Any]:
    """Keyword arguments for ``Image.save`` that write ``metadata`` in ``format_``."""
    if format_ == "png":
        info = PngImagePlugin.PngInfo()
        if metadata.parameters is not None:
            info.add_text("parameters", metadata.parameters)
        if metadata.record is not None:
            info.add_itxt("img2img", metadata.record)
        return {"format": "PNG", "pnginfo": info}
    exif = Image.Exif()
    fields = exif.get_ifd(EXIF_IFD)
    if metadata.parameters is not None:
        fields[USER_COMMENT] = _UNICODE + metadata.parameters.encode("utf-16-be")
    if metadata.record is not None:
        fields[MAKER_NOTE] = _OURS + metadata.record.encode("utf-8")
    if format_ == "jpeg":
        return {"format": "JPEG", "quality": quality, "exif": exif.tobytes()}
    lossless = quality >= 100  # WebP at quality 100 is stored losslessly
    return {"format": "WEBP", "quality": quality, "lossless": lossless, "method": 4, "exif": exif.tobytes()}


def read_metadata(path: Path | BinaryIO) -> Metadata:
    """The parameters text and our record from a PNG, JPEG or WebP file (either may be absent)."""
    try:
        with Image.open(path) as image:
            if image.format == "PNG":
                text = getattr(image, "text", {})
                return Metadata(text.get("parameters"), text.get("img2img"))
            fields = image.getexif().get_ifd(EXIF_IFD)
    except (OSError, SyntaxError, ValueError) as exc:
        raise SourceImageError(f"FILE should be an image with generation parameters, but {path} is unreadable "
                               f"({exc})") from exc
    return Metadata(_decode_user_comment(fields.get(USER_COMMENT)), _decode_maker_note(fields.get(MAKER_NOTE)))


def _decode_user_comment(value: object) -> str | None:
    if isinstance(value, str):  # some writers store it as plain text
        return value
    if not isinstance(value, bytes) or len(value) < 8:
        return None
    prefix, body = value[:8], value[8:]
    if prefix == _UNICODE:
        return body.decode("utf-16-be", errors="replace")
    if prefix == _ASCII:
        return body.decode("ascii", errors="replace")
    return body.decode("utf-8", errors="replace")


def _decode_maker_note(value: object) -> str | None:
    if isinstance(value, bytes) and value.startswith(_OURS):
        return value[len(_OURS):].decode("utf-8", errors="replace")
    return None
