"""Reading sources in every format and mode, fitting sizes, colour matching, metadata, atomic writes and grids."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2img.errors import InvalidArgument, OutputPathError, SourceImageError
from img2img.imageio.color import lab_to_srgb, match_colors, srgb_to_lab
from img2img.imageio.grid import contact_sheet, labelled_grid
from img2img.imageio.metadata import Metadata, read_metadata
from img2img.imageio.output import save_image
from img2img.imageio.resize import fit_to_size
from img2img.imageio.source import read_source

ORANGE = (240, 120, 30)


def _gradient(width: int = 300, height: int = 260) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    pixels = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                             np.full((height, width, 1), 90.0)], axis=2)
    return Image.fromarray(pixels.astype(np.uint8))


def _png_bytes(width: int, height: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand, for layouts Pillow will not write (16-bit RGB) and broken headers."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tiff"])
def test_common_formats_read_as_rgb_of_the_same_picture(tmp_path: Path, suffix: str) -> None:
    original = _gradient()
    path = tmp_path / f"picture{suffix}"
    original.save(path, **({"quality": 95} if suffix in (".jpg", ".webp") else {}))
    source = read_source(path)
    assert source.rgb.mode == "RGB" and source.rgb.size == original.size and source.alpha is None
    error = np.abs(np.asarray(source.rgb, dtype=float) - np.asarray(original, dtype=float)).mean()
    assert error < 3, error


@pytest.mark.parametrize("mode", ["L", "P", "1", "LA", "I;16"])
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"mode-{mode.replace(';', '')}.png"
    _gradient().convert("L" if mode == "I;16" else mode).save(path)
    assert read_source(path).rgb.mode == "RGB"


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256 * 256).reshape(256, 256).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    pixels = np.asarray(read_source(path).rgb)[..., 0].astype(float)
    expected = ramp / 257.0
    assert np.abs(pixels - expected).max() <= 1.0  # Pillow's own conversion would clip everything above 255


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    row = b"\x00" + np.tile(np.array([65535, 32768, 0], dtype=">u2"), 4).tobytes()
    path = tmp_path / "deep-rgb.png"
    path.write_bytes(_png_bytes(4, 3, 16, 2, row * 3))
    assert read_source(path).rgb.getpixel((1, 1)) == (255, 128, 0)


def test_cmyk_jpeg_converts_to_the_right_colour(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (300, 300), (0, 255, 255, 0)).save(path, quality=95)  # pure red ink
    red, green, blue = read_source(path).rgb.getpixel((150, 150))
    assert red > 220 and green < 40 and blue < 40


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """A phone stores a portrait photo as landscape pixels plus 'rotate 90'; the source must come out upright."""
    stored = Image.new("RGB", (400, 300), "white")
    stored.paste(Image.new("RGB", (100, 300), "red"), (0, 0))  # red band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    upright = read_source(path).rgb
    assert upright.size == (300, 400)
    red, green, _ = upright.getpixel((150, 20))  # the stored left edge is now the top
    assert red > 200 and green < 60


def _swapped_primaries_profile() -> bytes:
    """A minimal ICC v2 RGB profile whose red and green primaries are sRGB's green and red (linear curves)."""
    def fixed(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + fixed(x) + fixed(y) + fixed(z)

    linear = b"curv\0\0\0\0" + struct.pack(">IH", 1, 256) + b"\0\0"
    red, green, blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)  # sRGB, D50
    tags = [(b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(*green)), (b"gXYZ", xyz(*red)),
            (b"bXYZ", xyz(*blue)), (b"rTRC", linear), (b"gTRC", linear), (b"bTRC", linear)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    header = (struct.pack(">I", offset + len(data)) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + bytes(12) + b"acsp" + bytes(28) + fixed(0.9642) + fixed(1.0) + fixed(0.8249) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + data


def test_embedded_colour_profiles_are_converted_to_srgb(tmp_path: Path) -> None:
    """Pixels tagged with another profile (a phone's Display P3, a print file's CMYK) are converted to sRGB,
    not read as if they were sRGB: here the profile's "red" is sRGB's green."""
    path = tmp_path / "tagged.png"
    Image.new("RGB", (300, 300), (255, 0, 0)).save(path, icc_profile=_swapped_primaries_profile())
    red, green, blue = read_source(path).rgb.getpixel((5, 5))
    assert green > 240 and red < 15 and blue < 15


def test_transparent_areas_go_onto_the_background_and_alpha_is_kept(tmp_path: Path) -> None:
    image = Image.new("RGBA", (300, 300), (0, 0, 255, 255))
    image.paste((0, 0, 0, 0), (0, 0, 150, 300))
    path = tmp_path / "cutout.png"
    image.save(path)
    white = read_source(path)
    assert white.rgb.getpixel((10, 10)) == (255, 255, 255) and white.rgb.getpixel((200, 10)) == (0, 0, 255)
    assert white.alpha is not None and white.alpha.getpixel((10, 10)) == 0
    assert read_source(path, background="#00ff00").rgb.getpixel((10, 10)) == (0, 255, 0)
    with pytest.raises(InvalidArgument, match="background"):
        read_source(path, background="not-a-colour")


def test_animated_gif_uses_the_first_frame_with_a_note(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (300, 300), colour) for colour in ("red", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    source = read_source(path)
    assert source.rgb.getpixel((5, 5))[0] > 200
    assert any("2 frames" in note for note in source.notes)


def test_small_sources_get_a_softness_note(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    _gradient(200, 150).save(path)
    assert any("soft" in note for note in read_source(path).notes)
    big = tmp_path / "big.png"
    _gradient(300, 260).save(big)
    assert read_source(big).notes == ()


def test_truncated_corrupt_zero_sized_and_non_images_are_refused_by_name(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.png"
    buffer = io.BytesIO()
    _gradient().save(buffer, format="PNG")
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(SourceImageError, match=r"truncated\.png is truncated or corrupt"):
        read_source(truncated)
    zero = tmp_path / "zero.png"
    zero.write_bytes(_png_bytes(0, 0, 8, 2, b""))
    with pytest.raises(SourceImageError, match=r"zero\.png"):
        read_source(zero)
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(SourceImageError, match=r"notes\.jpg is not one"):
        read_source(text)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """PNG headers that promise huge images over a tiny compressed body: refused from the header alone."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bytes(10000, 5000, 8, 0, (b"\x00" + bytes(10000)) * 8))  # over our 40 MP limit
    with pytest.raises(SourceImageError, match=r"at most 40,000,000 pixels, but .*bomb.png is 10000x5000"):
        read_source(bomb)
    with pytest.raises(SourceImageError, match="at most 1,000 pixels"):
        read_source(bomb, max_pixels=1000)
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_bytes(20000, 20000, 8, 0, (b"\x00" + bytes(20000)) * 8))  # over Pillow's own hard limit
    with pytest.raises(SourceImageError, match=r"at most 40,000,000 pixels, but .*huge.png is 400,000,000 pixels"):
        read_source(huge)


@pytest.mark.parametrize("mode", ["just", "crop", "fill"])
def test_resize_modes_give_the_exact_size(mode: str) -> None:
    assert fit_to_size(_gradient(300, 200), (128, 128), mode).size == (128, 128)  # type: ignore[arg-type]


def test_crop_keeps_the_centre_and_fill_extends_the_edges() -> None:
    wide = Image.new("RGB", (300, 100), "blue")
    wide.paste(Image.new("RGB", (100, 100), "red"), (100, 0))  # red in the middle third
    cropped = fit_to_size(wide, (100, 100), "crop")
    assert cropped.getpixel((5, 50))[0] > 200 and cropped.getpixel((95, 50))[0] > 200
    filled = np.asarray(fit_to_size(wide, (300, 300), "fill"))
    assert (filled[0] == filled[100]).all() and (filled[-1] == filled[199]).all()  # bands repeat the edge rows
    stretched = fit_to_size(wide, (100, 100), "just")
    assert stretched.getpixel((5, 50))[2] > 200  # the blue left third is still there, squeezed


def test_lab_round_trip_and_colour_matching() -> None:
    pixels = np.asarray(_gradient())
    assert np.abs(lab_to_srgb(srgb_to_lab(pixels)).astype(int) - pixels).max() <= 1
    reference = Image.new("RGB", (64, 64), (200, 60, 40))
    drifted = Image.fromarray(np.clip(np.asarray(_gradient(64, 64), dtype=int) // 3 + 80, 0, 255).astype(np.uint8))
    matched = np.asarray(match_colors(drifted, reference), dtype=float)
    assert np.abs(matched.mean(axis=(0, 1)) - np.array([200, 60, 40])).max() < 3


def test_metadata_round_trips_in_every_format(tmp_path: Path) -> None:
    metadata = Metadata("a café, oil\nNegative prompt: blur\nSteps: 20, Seed: 1", '{"prompt": "a café"}')
    for name in ("out.png", "out.jpg", "out.webp"):
        path = save_image(_gradient(), tmp_path / name, metadata)
        assert read_metadata(path) == metadata


def test_writes_never_overwrite_unless_asked_and_leave_no_partial_files(tmp_path: Path) -> None:
    target = tmp_path / "result.png"
    metadata = Metadata("x", None)
    assert save_image(_gradient(), target, metadata) == target
    assert save_image(_gradient(), target, metadata) == tmp_path / "result-1.png"
    assert save_image(Image.new("RGB", (8, 8)), target, metadata, overwrite=True) == target
    assert Image.open(target).size == (8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result-1.png", "result.png"]
    with pytest.raises(OutputPathError, match="should exist"):
        save_image(_gradient(), tmp_path / "missing" / "x.png", metadata)
    with pytest.raises(InvalidArgument, match=r"ending in \.png"):
        save_image(_gradient(), tmp_path / "x.gif", metadata)


def test_jpeg_flattens_transparency_onto_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    path = save_image(image, tmp_path / "flat.jpg", Metadata(None, None))
    assert min(Image.open(path).getpixel((5, 5))) > 245


def test_grids_lay_out_cells_and_labels() -> None:
    images = [Image.new("RGB", (100, 80), colour) for colour in ("red", "green", "blue", "white", "black")]
    sheet = contact_sheet(images, [f"seed {i}" for i in range(5)])
    assert sheet.width == 300 and sheet.height > 160  # 3 columns, 2 rows with captions
    grid = labelled_grid([images[:3], images[2:5]], ["source", "strength 0.4", "strength 0.7"], ["cfg 5", "cfg 7"])
    assert grid.width > 300 and grid.height > 160
    header = np.asarray(grid)[:20]
    assert (header < 128).any()  # the column labels are drawn
