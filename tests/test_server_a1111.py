"""The A1111-compatible API against a real server, called as A1111 clients call it."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from server_process import ServerProcess, b64, image_from, serving_tiny


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path):  # type: ignore[no-untyped-def]
    yield from serving_tiny(tmp_path_factory, tiny_sd, "a1111")


def _img2img(server: ServerProcess, **fields: Any) -> Any:
    with server.client() as client:
        return client.post("/sdapi/v1/img2img", json=fields, timeout=300)


def test_img2img_answers_as_a1111_does(server: ServerProcess, photo: Path) -> None:
    response = _img2img(server, init_images=[b64(photo.read_bytes())], prompt="a red boat", negative_prompt="fog",
                        denoising_strength=0.6, steps=8, cfg_scale=5, seed=7, batch_size=2, n_iter=1,
                        sampler_name="Euler a", width=64, height=64, restore_faces=True, not_a_field=1,
                        override_settings={"sd_model_checkpoint": "tiny [abc123]", "CLIP_stop_at_last_layers": 2,
                                           "token_merging_ratio": 0.5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 2
    images = [image_from(base64.b64decode(data)) for data in body["images"]]
    assert all(image.size == (64, 64) for image in images)
    assert body["parameters"]["denoising_strength"] == 0.6 and body["parameters"]["init_images"] is None
    info = json.loads(body["info"])
    assert info["seed"] == 7 and info["all_seeds"] == [7, 8] and info["sd_model_name"] == "tiny"
    assert info["sampler_name"] == "Euler a" and info["width"] == 64 and len(info["infotexts"]) == 2
    assert "Seed: 7" in info["infotexts"][0] and "Negative prompt: fog" in info["infotexts"][0]
    warnings = " | ".join(info["warnings"])
    for name in ("restore_faces", "not_a_field"):
        assert name in warnings
    assert "CLIP_stop_at_last_layers" not in warnings and info["clip_skip"] == 2  # A1111's clip skip acts
    assert "Clip skip: 2" in info["infotexts"][0]
    assert "token_merging_ratio" not in warnings and "Token merging ratio: 0.5" in info["infotexts"][0]
    assert "steps" not in warnings and "seed" not in warnings

    with server.client() as client:
        read = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + body["images"][1]})
    assert read.status_code == 200
    parsed = read.json()
    assert parsed["info"] == info["infotexts"][1]
    assert parsed["parameters"]["Seed"] == 8 and parsed["parameters"]["Prompt"] == "a red boat"
    assert parsed["parameters"]["Negative prompt"] == "fog" and parsed["parameters"]["Size-1"] == 64


def test_options_choose_the_model(server: ServerProcess, photo: Path) -> None:
    with server.client() as client:
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny"
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "builtin"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "builtin"
        response = _img2img(server, init_images=[b64(photo.read_bytes())], prompt="fauve", seed=1)
        assert json.loads(response.json()["info"])["sd_model_name"] == "builtin"
        refused = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "/etc/passwd"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "model"
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"})
        titles = [model["title"] for model in client.get("/sdapi/v1/sd-models").json()]
        assert titles == ["tiny", "builtin"]
        samplers = [sampler["name"] for sampler in client.get("/sdapi/v1/samplers").json()]
        assert "Euler a" in samplers and "DPM++ 2M Karras" in samplers


def test_progress_and_interrupt(server: ServerProcess, photo: Path) -> None:
    answers: list[Any] = []
    request = {"init_images": [b64(photo.read_bytes())], "prompt": "a red boat", "denoising_strength": 1.0,
               "steps": 150, "width": 64, "height": 64}
    blocking = threading.Thread(target=lambda: answers.append(_img2img(server, **request)))
    blocking.start()
    with server.client() as client:
        deadline = time.monotonic() + 120
        progress = client.get("/sdapi/v1/progress").json()
        while progress["state"]["sampling_step"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            progress = client.get("/sdapi/v1/progress").json()
        assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 150
        assert progress["eta_relative"] > 0 and progress["textinfo"].startswith("step ")
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        blocking.join(120)
        assert client.get("/sdapi/v1/progress").json()["progress"] == 0
    assert answers[0].status_code == 409 and answers[0].json()["error"]["code"] == "interrupted"


def test_img2img_bad_input(server: ServerProcess) -> None:
    response = _img2img(server, prompt="x")
    assert response.status_code == 422 and response.json()["error"]["field"] == "init_images"
    response = _img2img(server, prompt="x", init_images=["aGVsbG8="])
    assert response.status_code == 422 and response.json()["error"]["field"] == "source"
    response = _img2img(server, prompt="x", init_images=["aGVsbG8="], denoising_strength=3)
    assert response.status_code == 422 and response.json()["error"]["field"] == "denoising_strength"


def test_an_edit_model_takes_image_cfg_scale(server: ServerProcess, photo: Path, tiny_sd_edit: Path) -> None:
    from img2img.models.registry import ModelEntry, ModelRegistry

    ModelRegistry(server.config_dir).add(ModelEntry("pix", str(tiny_sd_edit)))
    response = _img2img(server, init_images=[b64(photo.read_bytes())], prompt="make it winter", steps=2,
                        denoising_strength=1.0, image_cfg_scale=2.5, seed=3, width=64, height=64,
                        override_settings={"sd_model_checkpoint": "pix"})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert "Image CFG scale: 2.5" in info["infotexts"][0] and "image_cfg_scale" not in " ".join(info["warnings"])
    with server.client() as client:
        listed = {entry["name"]: entry for entry in client.get("/v1/models").json()["models"]}
    assert listed["pix"]["edit"] and listed["pix"]["defaults"]["image_cfg"] == 1.5
    assert listed["tiny"]["family"] == "SD 1.x" and not listed["tiny"]["edit"]
