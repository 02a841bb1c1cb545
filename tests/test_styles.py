"""The built-in style engine on real photos: every named style, style images, strength, seeds, sizes, the network
files' integrity, and the CLI with no model installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2img import Engine, GenerationRequest, InvalidArgument
from img2img.errors import StyleNetworkError
from img2img.styles.catalog import BLENDS, STYLES, parse_styles, style_names
from img2img.styles.networks import StyleNetworks, default_networks_dir
from test_cli import assert_one_line_error, img2img


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu")


@pytest.fixture(scope="module")
def cat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's cat photo at 240x160: big enough for the networks' strokes, small enough to be quick."""
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(data.chelsea()).resize((240, 160), Image.LANCZOS).save(path)
    return path


@pytest.fixture(scope="module")
def painting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A style picture: blue and yellow diagonal bands."""
    y, x = np.mgrid[0:256, 0:256]
    bands = ((x + y) // 16) % 2 == 0
    pixels = np.where(bands[..., None], np.array([30, 60, 200]), np.array([250, 210, 40])).astype(np.uint8)
    path = tmp_path_factory.mktemp("styles") / "bands.png"
    Image.fromarray(pixels).save(path)
    return path


def _request(source: Path, **fields) -> GenerationRequest:
    return GenerationRequest(**{"source": source, "prompt": "starry-swirl", "strength": 1.0, "seed": 1,
                                "model": "builtin", **fields})


def _distance(image: Image.Image, source: Path) -> float:
    return float(np.abs(np.asarray(image, dtype=float) - np.asarray(Image.open(source).convert("RGB"),
                                                                       dtype=float)).mean())


def test_names_cover_every_network_style_once() -> None:
    assert sorted(style.index for style in STYLES) == list(range(26))
    assert len(set(style_names())) == 26 + len(BLENDS)
    assert parse_styles("Starry Swirl") == {19: 1.0}
    assert parse_styles("fauve:3, crimson") == {4: 0.75, 20: 0.25}
    assert parse_styles("sunset + fauve") == {4: 0.75, 20: 0.25}  # a blend plus one of its parts


def test_every_named_style_restyles_the_photo(engine, cat) -> None:
    results = {}
    for name in style_names():
        image = engine.generate(_request(cat, prompt=name)).images[0]
        assert image.size == (240, 160)
        assert _distance(image, cat) > 10, name
        results[name] = np.asarray(image, dtype=float)
    distinct = {name: min(np.abs(pixels - other).mean() for key, other in results.items() if key != name)
                for name, pixels in results.items()}
    assert min(distinct.values()) > 3  # no two styles give the same picture


def test_a_prompt_that_names_no_style_says_what_to_do(engine, cat) -> None:
    with pytest.raises(InvalidArgument, match=r"built-in style names such as .*free-text prompts need a diffusion"):
        engine.generate(_request(cat, prompt="a cat wearing a hat"))
    with pytest.raises(InvalidArgument, match="or a style image"):
        engine.generate(_request(cat, prompt=""))


@pytest.mark.parametrize("fields", [{"prompt": "starry-swirl"}, {"prompt": "", "style_image": "PAINTING"},
                                    {"prompt": "ink-drawing, frost-wash", "style_image": "PAINTING"}])
def test_strength_zero_is_the_source_and_distance_grows_with_strength(engine, cat, painting, fields) -> None:
    fields = {key: painting if value == "PAINTING" else value for key, value in fields.items()}
    unchanged = engine.generate(_request(cat, strength=0.0, **fields))
    assert unchanged.images[0].tobytes() == Image.open(cat).convert("RGB").tobytes()
    distances = [_distance(engine.generate(_request(cat, strength=s, **fields)).images[0], cat)
                 for s in (0.1, 0.3, 0.5, 0.75, 1.0)]
    assert distances == sorted(distances), distances
    assert distances[0] < 8 < distances[-1]  # low strength stays close to the photo


def test_a_style_image_carries_its_colours(engine, cat, painting) -> None:
    result = engine.generate(_request(cat, prompt="", style_image=painting))
    assert result.record.style_image_sha256 and result.images[0].size == (240, 160)
    mean = np.asarray(result.images[0], dtype=float).mean(axis=(0, 1))
    photo_mean = np.asarray(Image.open(cat).convert("RGB"), dtype=float).mean(axis=(0, 1))
    assert mean[2] - photo_mean[2] > 15  # the bands' blue came in


def test_same_inputs_same_bytes_and_seeds_vary_only_blends(engine, cat, painting) -> None:
    def pixels(**fields) -> bytes:
        return engine.generate(_request(cat, **fields)).images[0].tobytes()

    assert pixels(prompt="sunset", seed=3) == pixels(prompt="sunset", seed=3)
    assert pixels(prompt="sunset", seed=3) != pixels(prompt="sunset", seed=4)
    assert pixels(prompt="", style_image=painting, seed=3) == pixels(prompt="", style_image=painting, seed=4)
    assert pixels(prompt="crimson", seed=3) == pixels(prompt="crimson", seed=4)  # one style: nothing to vary


def test_any_size_and_aspect_keeps_the_source_size(engine, tmp_path, painting) -> None:
    from skimage import data

    wide = tmp_path / "wide.jpg"
    Image.fromarray(data.coffee()).resize((1600, 1200)).save(wide)
    result = engine.generate(_request(wide, prompt="fauve", style_image=painting, seed=2))
    assert result.images[0].size == (1600, 1200)
    assert (result.record.working_width, result.record.working_height) == (1176, 880)  # about a megapixel
    assert result.record.model == "builtin-style" and result.record.engine == "style"


def test_missing_or_altered_network_files_are_refused(tmp_path) -> None:
    copy = tmp_path / "networks"
    shutil.copytree(default_networks_dir(), copy)
    StyleNetworks(copy).verify()
    damaged = bytearray((copy / "multistyle26.onnx").read_bytes())
    damaged[1000] ^= 0xFF
    (copy / "multistyle26.onnx").write_bytes(bytes(damaged))
    with pytest.raises(StyleNetworkError, match=r"multistyle26\.onnx should have SHA-256 0a2a0c9436a935cd"):
        StyleNetworks(copy).verify()
    (copy / "arbitrary_predict.onnx").unlink()
    with pytest.raises(StyleNetworkError, match=r"arbitrary_predict\.onnx should be in"):
        StyleNetworks(copy).style_vector(np.zeros((256, 256, 3), np.float32))


def test_the_cli_restyles_with_no_model_installed(cat, tmp_path) -> None:
    result = img2img("run", str(cat), "starry-swirl", "--strength", "0.8", "--seed", "9", "-o", str(tmp_path / "a.png"))
    assert result.returncode == 0, result.stderr
    assert "builtin-style" in result.stdout and "adds no new content" in result.stdout
    text = Image.open(tmp_path / "a.png").text
    assert "Model: builtin-style" in text["parameters"] and json.loads(text["img2img"])["engine"] == "style"
    again = img2img("reproduce", str(tmp_path / "a.png"), "--source", str(cat), "-o", str(tmp_path / "b.png"))
    assert again.returncode == 0 and (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    assert_one_line_error(img2img("run", str(cat), "a cat in a hat"), "PROMPT should be built-in style names",
                          "free-text prompts need a diffusion model")


def test_the_cli_lists_styles_and_renders_a_sheet(cat, tmp_path) -> None:
    listed = img2img("styles")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 26 + len(BLENDS)
    assert listed.stdout.splitlines()[19].startswith("starry-swirl")
    sheet = img2img("styles", "--sheet", str(cat), "-o", str(tmp_path / "sheet.png"))
    assert sheet.returncode == 0, sheet.stderr
    assert Image.open(tmp_path / "sheet.png").width == 6 * 240  # source + 31 samples, six per row


def test_altered_networks_end_in_one_line_on_the_cli(cat, tmp_path) -> None:
    copy = tmp_path / "networks"
    shutil.copytree(default_networks_dir(), copy)
    (copy / "arbitrary_transform.onnx").write_bytes(b"not a network")
    result = img2img("run", str(cat), "", "--style-image", str(cat), env={"IMG2IMG_STYLE_NETWORKS": str(copy)})
    assert_one_line_error(result, "arbitrary_transform.onnx should have SHA-256", "reinstall")
