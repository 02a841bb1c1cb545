"""Image to prompt from measurements alone, on real photos: golden properties of each measurement, the three
prompt styles, and the command (text, JSON, bad input)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from img2img import InvalidArgument
from img2img.engine.describe import describe, measure
from test_cli import assert_one_line_error, img2img


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)())


def test_the_palette_names_the_photos_colours() -> None:
    coffee, chelsea, astronaut = (measure(_photo(name)) for name in ("coffee", "chelsea", "astronaut"))
    assert coffee.palette[0].name == "light brown" and coffee.palette[0].share > 0.3  # the table and the cup
    assert {swatch.name for swatch in chelsea.palette[:2]} <= {"brown", "light brown", "tan", "dark brown"}
    assert "rust" in {swatch.name for swatch in astronaut.palette}  # the orange suit
    assert abs(sum(swatch.share for swatch in coffee.palette) - 1) < 0.01
    big = measure(_photo("coffee").resize((1200, 800), Image.LANCZOS))
    assert [swatch.name for swatch in big.palette] == [swatch.name for swatch in coffee.palette], \
        "measured at a fixed size: the picture's size does not change the palette"


def test_light_focus_noise_and_shape() -> None:
    coffee = measure(_photo("coffee"))
    assert coffee.words["colour temperature"] == "warm tones" and measure(_photo("chelsea")).temperature > 6
    assert (coffee.orientation, coffee.aspect) == ("landscape", "3:2")
    astronaut = measure(_photo("astronaut"))
    assert (astronaut.orientation, astronaut.aspect) == ("square", "1:1")
    assert astronaut.words["contrast"] == "high contrast" and astronaut.words["noise"] == "clean"
    pixels = np.asarray(_photo("coffee"), dtype=float)
    noisy = measure(Image.fromarray(np.clip(pixels + np.random.default_rng(0).normal(0, 20, pixels.shape), 0, 255)
                                    .astype(np.uint8)))
    assert noisy.noise > 2 * coffee.noise and noisy.words["noise"] != "clean"
    soft = measure(_photo("coffee").resize((100, 66)).resize((600, 400)))
    assert soft.words["sharpness"] == "soft focus" and soft.sharpness < coffee.sharpness / 4
    dark = measure(Image.fromarray((pixels * 0.3).astype(np.uint8)))
    assert dark.words["brightness"] == "dark" and dark.brightness < coffee.brightness
    portrait = measure(_photo("coffee").rotate(90, expand=True))
    assert (portrait.orientation, portrait.aspect) == ("portrait", "2:3")


def test_the_three_prompt_styles_and_the_strength() -> None:
    sd = describe(_photo("coffee"))
    assert sd.prompt.startswith("(light brown, rust and black palette:1.2)") and "warm tones" in sd.prompt
    assert describe(_photo("coffee"), "midjourney").prompt.endswith("--ar 3:2")
    plain = describe(_photo("coffee"), "plain")
    assert "no captioning model was used" in plain.prompt
    assert describe(_photo("coffee"), change="rework").strength == {"low": 0.7, "high": 0.9, "start": 0.8}
    assert sd.to_dict()["captioned"] is False and "palette" in sd.to_dict()["measured"]
    with pytest.raises(InvalidArgument, match="style should be one of sd, midjourney, plain"):
        describe(_photo("coffee"), "flowery")
    with pytest.raises(InvalidArgument, match="change should be one of subtle, restyle, rework"):
        describe(_photo("coffee"), change="total")


def test_the_describe_command(tmp_path) -> None:
    path = tmp_path / "chelsea.png"
    _photo("chelsea").save(path)
    text = img2img("describe", str(path))
    assert text.returncode == 0, text.stderr
    assert "palette: brown #" in text.stdout and "no captioning model was used" in text.stdout
    found = json.loads(img2img("describe", str(path), "--json", "--style", "midjourney").stdout)
    assert found["prompt"].endswith("--ar 3:2") and found["negative_prompt"] and found["width"] == 451
    assert found["words"]["colour temperature"] == "warm tones" and found["captioned"] is False
    assert_one_line_error(img2img("describe", str(path), "--style", "flowery"), "--style should be one of")
    (tmp_path / "notes.txt").write_text("not a picture")
    assert_one_line_error(img2img("describe", str(tmp_path / "notes.txt")), "IMAGE should be a PNG")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd):  # type: ignore[no-untyped-def]
    from server_process import serving_tiny

    yield from serving_tiny(tmp_path_factory, tiny_sd, "describe")


def test_describe_over_http(server, tmp_path) -> None:
    import io

    from server_process import b64

    buffer = io.BytesIO()
    _photo("coffee").save(buffer, format="PNG")
    with server.client() as client:
        native = client.post("/v1/describe", files={"image": buffer.getvalue()}, data={"style": "midjourney"})
        assert native.status_code == 200, native.text
        assert native.json()["prompt"].endswith("--ar 3:2") and native.json()["palette"][0]["name"] == "light brown"
        bad = client.post("/v1/describe", files={"image": b"nope"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "image"
        flowery = client.post("/v1/describe", files={"image": buffer.getvalue()}, data={"style": "flowery"})
        assert flowery.status_code == 422 and flowery.json()["error"]["field"] == "style"
        a1111 = client.post("/sdapi/v1/interrogate", json={"image": b64(buffer.getvalue()), "model": "clip"})
        assert a1111.status_code == 200 and a1111.json()["caption"].startswith("(light brown")
        assert a1111.json()["captioned"] is False
