"""Files that people actually have and that break image tools, built in code.

Each entry is (name, bytes, what a face must do with it): "ok" (a result at the source's size, upright) or
"refused" (a one-line error naming the source).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms, PngImagePlugin


def _png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def grey16_with_alpha(width: int = 70, height: int = 50) -> bytes:
    """A 16-bit greyscale PNG with a 16-bit alpha channel (colour type 4, depth 16), which Pillow cannot write."""
    grey = np.linspace(0, 65535, width * height).reshape(height, width).astype(">u2")
    alpha = np.full((height, width), 65535, ">u2")
    alpha[: height // 2] = 32768
    rows = np.stack([grey, alpha], axis=-1).reshape(height, width * 2)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def cmyk_jpeg_with_profile() -> bytes:
    """A CMYK JPEG carrying an ICC profile (an sRGB one: no CMYK profile ships with Pillow), as print files do."""
    image = Image.new("CMYK", (90, 60), (0, 120, 200, 10))
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", icc_profile=profile, quality=90)
    return buffer.getvalue()


def oriented_jpeg(orientation: int) -> bytes:
    """A 60x40 photo stored sideways with EXIF orientation 5..8: upright it is 40x60."""
    image = Image.new("RGB", (60, 40), "navy")
    image.paste((255, 200, 0), (0, 0, 30, 20))  # a marker in one corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def junk_text_png() -> bytes:
    """A small PNG whose text chunks hold 10 MB of junk."""
    info = PngImagePlugin.PngInfo()
    for index in range(10):
        info.add_text(f"junk{index}", "x" * 1_000_000)
    return _png(Image.new("RGB", (80, 60), "teal"), pnginfo=info)


def strip_png(width: int, height: int) -> bytes:
    """A one-pixel strip, compressed to almost nothing: 16,000,000x1 is 15.6 KB and passes the pixel cap."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    raw = (b"\0" + bytes(width)) * height
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(
        b"IEND", b"")


def corpus() -> list[tuple[str, bytes, str]]:
    return [
        ("transparent.png", _png(Image.new("RGBA", (72, 56), (10, 200, 30, 0))), "ok"),
        ("one-pixel.png", _png(Image.new("RGB", (1, 1), "orange")), "ok"),
        ("grey16-alpha.png", grey16_with_alpha(), "ok"),
        ("cmyk-icc.jpg", cmyk_jpeg_with_profile(), "ok"),
        *[(f"orientation-{k}.jpg", oriented_jpeg(k), "ok") for k in (5, 6, 7, 8)],
        ("junk-text.png", junk_text_png(), "ok"),
        ("strip-1x300.png", strip_png(1, 300), "ok"),  # widened to 64 px: soft, but a result
        ("strip-1x100.png", strip_png(1, 100), "ok"),
        ("strip-100000x1.png", strip_png(100_000, 1), "refused"),
        ("strip-16000000x1.png", strip_png(16_000_000, 1), "refused"),
    ]


def expected_size(name: str, data: bytes) -> tuple[int, int]:
    """The upright size of a corpus file."""
    with Image.open(io.BytesIO(data)) as image:
        swapped = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        return (image.height, image.width) if swapped else image.size
