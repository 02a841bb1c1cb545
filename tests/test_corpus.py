"""The files people actually have, through every face: a result at the right size or one line naming the problem.

The studio's upload goes through the same API as the server test here (it only posts what the API takes).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from corpus import corpus, expected_size
from img2img import Engine, GenerationRequest, Img2ImgError, InvalidArgument
from img2img.models.memory import diffusion_peak_bytes, parse_bytes, style_peak_bytes
from server_process import serving_tiny, submit, wait_final
from test_cli import assert_one_line_error, img2img

CORPUS = corpus()
OK = [(name, data) for name, data, outcome in CORPUS if outcome == "ok"]
REFUSED = [(name, data) for name, data, outcome in CORPUS if outcome == "refused"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, data, _ in CORPUS:
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("model", ["builtin", "tiny"])
def test_the_library_gives_a_result_or_one_line_for_every_file(model, files, tiny_sd) -> None:
    engine = Engine(device="cpu", dtype="float32")
    for name, data in OK:
        request = GenerationRequest(source=files / name, prompt="fauve" if model == "builtin" else "a red fox",
                                    strength=0.5, steps=2, seed=1, model=None if model == "builtin" else str(tiny_sd))
        result = engine.generate(request)
        assert result.images[0].size == expected_size(name, data), name
    for name, _ in REFUSED:
        with pytest.raises(Img2ImgError) as caught:
            engine.generate(GenerationRequest(source=files / name, prompt="fauve", strength=0.5))
        message = str(caught.value)
        assert "\n" not in message and "source should be" in message and name.split("-")[-1][:-4] in message


def test_orientations_5_to_8_come_out_upright(files) -> None:
    engine = Engine(device="cpu")
    for orientation in (5, 6, 7, 8):
        picture = engine.read_source(GenerationRequest(source=files / f"orientation-{orientation}.jpg", prompt="x"))
        assert picture.rgb.size == (40, 60)
        # The yellow marker was the stored image's top-left corner; upright, each orientation moves it elsewhere.
        corners = {(0, 0): "top-left", (39, 0): "top-right", (0, 59): "bottom-left", (39, 59): "bottom-right"}
        yellow = [where for xy, where in corners.items() if picture.rgb.getpixel(xy)[2] < 100]
        assert yellow == [{5: "top-left", 6: "top-right", 7: "bottom-right", 8: "bottom-left"}[orientation]]


def test_transparent_pixels_are_composited_and_alpha_can_come_back(files) -> None:
    engine = Engine(device="cpu")
    request = GenerationRequest(source=files / "transparent.png", prompt="fauve", strength=0.5, seed=2,
                                background="black", keep_alpha=True)
    assert engine.read_source(request).rgb.getextrema() == ((0, 0), (0, 0), (0, 0))
    result = engine.generate(request)
    assert result.images[0].mode == "RGBA" and result.images[0].getchannel("A").getextrema() == (0, 0)


def test_memory_is_estimated_before_a_model_loads_and_refused_over_the_budget(tiny_sd, photo) -> None:
    request = GenerationRequest(source=photo, prompt="a red fox", strength=0.5, steps=2, model=str(tiny_sd),
                                size=(4096, 4096))
    engine = Engine(device="cpu", dtype="float32", max_memory="2GB")
    with pytest.raises(InvalidArgument, match=r"size should be a working size that fits the memory budget of 2\.0 GB "
                       r".*but got '4096x4096 with tiny-sd, about 48\.\d GB'"):
        engine.generate(request)
    assert engine._models._loaded == {}  # nothing was loaded for it
    with pytest.raises(InvalidArgument, match=r"built-in style engine, about 13\.7 GB"):
        engine.generate(GenerationRequest(source=photo, prompt="fauve", strength=0.5, size=(4096, 4096)))
    small = GenerationRequest(source=photo, prompt="a red fox", strength=0.5, steps=2, model=str(tiny_sd))
    assert engine.generate(small).images[0].size == (64, 48)
    # The estimates follow the measured peaks: SD 1.5 (2.1 GB of fp16 weights) at 512x512 in bf16 about 3.5 GB.
    assert 3.0e9 < diffusion_peak_bytes(2_132_000_000, (512, 512), 2) < 4.0e9
    assert 0.9e9 < style_peak_bytes((1024, 1024)) < 1.2e9
    assert parse_bytes("12GB", "x") == 12_000_000_000 and parse_bytes("1.5 GiB", "x") == 3 * 2**29
    with pytest.raises(InvalidArgument, match="IMG2IMG_MAX_MEMORY should be a memory size such as 12GB"):
        Engine(max_memory="lots")


@pytest.mark.slow  # 20 s of command-line subprocesses; CI runs it with -m slow
def test_the_command_line_writes_a_result_or_fails_in_one_line_with_nothing_written(files, tmp_path) -> None:
    for name in ("transparent.png", "orientation-6.jpg"):  # each is a process: the library test has them all
        out = tmp_path / name.split(".")[0]
        result = img2img("run", str(files / name), "fauve", "--seed", "3", "-o", str(out))  # no suffix: a folder
        assert result.returncode == 0, result.stderr
        [written] = list(out.iterdir())
        assert Image.open(written).size == expected_size(name, (files / name).read_bytes())
    for name in ("strip-16000000x1.png",):
        out = tmp_path / f"refused-{name.split('.')[0]}"
        result = img2img("run", str(files / name), "fauve", "-o", str(out))
        assert_one_line_error(result, "SOURCE should be an image no more than 16 times longer than it is wide")
        assert not out.exists() or not list(out.iterdir())
    huge = img2img("run", str(files / "one-pixel.png"), "fauve", "--size", "4096x4096", "-o", str(tmp_path / "h"),
                   env={"IMG2IMG_MAX_MEMORY": "1GB"})
    assert_one_line_error(huge, "--size should be a working size that fits the memory budget of 1.0 GB")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path):  # type: ignore[no-untyped-def]
    yield from serving_tiny(tmp_path_factory, tiny_sd, "corpus", max_memory="3GB")


def test_the_server_answers_every_file_with_a_result_or_a_4xx_naming_the_field(server, files) -> None:
    with server.client() as client:
        for name, data in OK:
            job = submit(client, data, model="tiny", prompt="a red fox", strength=0.5, steps=2)
            done = wait_final(client, job["id"])
            assert done["state"] == "done", (name, done)
            image = Image.open(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/images/0").content))
            assert image.size == expected_size(name, data), name
        for name, data in REFUSED:
            response = client.post("/v1/jobs/form", files={"source": (name, data, "image/png")},
                                   data={"request": '{"prompt": "fauve", "strength": 0.5}'})
            assert response.status_code == 422, (name, response.text)
            error = response.json()["error"]
            assert error["field"] == "source" and "16 times longer" in error["message"], error
        too_big = submit(client, OK[0][1], expect=422, prompt="fauve", strength=0.5, size=[4096, 4096])
        assert too_big["error"]["field"] == "size" and "memory budget of 3.0 GB" in too_big["error"]["message"]
        assert client.get("/v1/health").status_code == 200
