"""Image prompts through a real server: native JSON and form jobs with an IP-Adapter, the built-in engine's style
pictures, and bad image prompts as 4xx naming the field."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2img.imageio.metadata import read_metadata
from server_process import ServerProcess, b64, submit, wait_final
from tiny_models import square_photo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path, tiny_ip_adapter: Path):  # type: ignore[no-untyped-def]
    from img2img.models.registry import ModelEntry, ModelRegistry

    config = tmp_path_factory.mktemp("ip-config")
    ModelRegistry(config).add(ModelEntry("tiny", str(tiny_sd)))
    ModelRegistry(config).add_addon("tiny-ip", tiny_ip_adapter, "ip-adapter")
    process = ServerProcess(tmp_path_factory.mktemp("ip-data"), config)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    folder = tmp_path_factory.mktemp("ip-pictures")
    return square_photo(folder, "astronaut").read_bytes(), square_photo(folder, "coffee").read_bytes()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_json_and_form_jobs_with_image_prompts(server: ServerProcess, pictures: tuple[bytes, bytes]) -> None:
    source, reference = pictures
    with server.client() as client:
        job = submit(client, source, prompt="a cup of tea", model="tiny", steps=4, seed=2, ip_adapter="tiny-ip",
                     image_prompt_mode="style", image_prompts=[{"image": b64(reference), "weight": 0.8}])
        done = wait_final(client, job["id"])
        assert done["state"] == "done", done
        assert done["request"]["image_prompts"] == [{"weight": 0.8}] and "image_prompt_images" not in done["request"]
        png = client.get(f"/v1/jobs/{job['id']}/images/0").content
        entry = json.loads(read_metadata(io.BytesIO(png)).record)["conditions"][0]
        assert entry["adapter"] == "tiny-ip" and entry["mode"] == "style" and entry["images"][0]["weight"] == 0.8

        form = client.post("/v1/jobs/form", files=[("source", source), ("image_prompt_images", reference)],
                           data={"request": json.dumps({"prompt": "a cup of tea", "model": "tiny", "steps": 4,
                                                        "seed": 2, "ip_adapter": "tiny-ip", "image_prompt_mode":
                                                        "style", "image_prompts": [{"weight": 0.8}]})})
        assert form.status_code == 202, form.text
        assert wait_final(client, form.json()["id"])["state"] == "done"
        assert np.array_equal(_pixels(client.get(f"/v1/jobs/{form.json()['id']}/images/0").content), _pixels(png))

        styled = submit(client, source, prompt="", model="builtin", seed=2, strength=0.6,
                        image_prompts=[{"image": b64(reference)}])
        assert wait_final(client, styled["id"])["state"] == "done"


@pytest.mark.parametrize(("extra", "field", "fragment"), [
    ({"ip_adapter": "../tiny-ip"}, "ip_adapter", "an IP-Adapter's name"),
    ({"ip_adapter": "nowhere"}, "ip_adapter", "nowhere"),
    ({}, "ip_adapter", "an IP-Adapter to read the image prompts"),
    ({"ip_adapter": "tiny-ip", "image_prompts": [{"weight": 3}]}, "image_prompts", "less than or equal to 2"),
])
def test_bad_image_prompts_are_a_422_naming_the_field(server: ServerProcess, pictures: tuple[bytes, bytes], extra,
                                                      field, fragment) -> None:
    source, reference = pictures
    fields = {"image_prompts": [{"image": b64(reference)}], **extra}
    if "image_prompts" in extra:
        fields["image_prompts"] = [{**entry, "image": b64(reference)} for entry in extra["image_prompts"]]
    with server.client() as client:
        answer = client.post("/v1/jobs", json={"source": b64(source), "prompt": "tea", "model": "tiny", **fields})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert field in json.dumps(body) and fragment in json.dumps(body), body


def test_a_blend_job(server: ServerProcess, pictures: tuple[bytes, bytes]) -> None:
    first, second = pictures
    with server.client() as client:
        job = client.post("/v1/jobs", json={"blend": [b64(first), b64(second)], "blend_weights": [1, 3],
                                            "prompt": "", "model": "builtin", "seed": 4})
        assert job.status_code == 202, job.text
        done = wait_final(client, job.json()["id"])
        assert done["state"] == "done", done
        assert done["request"]["strength"] == 1.0 and done["request"]["image_prompt_combine"] == "average"
        assert [entry["weight"] for entry in done["request"]["image_prompts"]] == [1 / 3, 1.0]
        for body, field in (({"blend": [b64(first)]}, "blend"), ({"blend": [b64(first)] * 2, "source": b64(first)},
                                                                  "source"),
                            ({"blend": [b64(first)] * 2, "blend_weights": [1]}, "blend_weights"), ({}, "source")):
            answer = client.post("/v1/jobs", json={"prompt": "", "model": "builtin", **body})
            assert answer.status_code == 422 and field in answer.text, answer.text


def test_a1111_ip_adapter_units(server: ServerProcess, pictures: tuple[bytes, bytes]) -> None:
    source, reference = pictures
    with server.client() as client:
        models = client.get("/controlnet/model_list").json()["model_list"]
        assert any(name.startswith("tiny-ip [") for name in models)
        assert "ip-adapter_clip_sd15" in client.get("/controlnet/module_list").json()["module_list"]
        unit = {"enabled": True, "module": "ip-adapter_clip_sd15", "model": "tiny-ip [0123abcd]", "weight": 0.7,
                "image": b64(reference)}
        body = {"init_images": [b64(source)], "prompt": "a cup", "steps": 3, "seed": 3, "width": 64, "height": 64,
                "denoising_strength": 0.7, "override_settings": {"sd_model_checkpoint": "tiny"},
                "alwayson_scripts": {"controlnet": {"args": [unit, {**unit, "image": None, "weight": 0.3}]}}}
        answer = client.post("/sdapi/v1/img2img", json=body)
        assert answer.status_code == 200, answer.text
        text = json.loads(answer.json()["info"])["infotexts"][0]
        assert 'IP-Adapter: "Model: tiny-ip [' in text and ": 0.7, " in text and ": 0.3\"" in text
        other = {**unit, "model": "another-ip"}
        refused = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"controlnet": {
            "args": [unit, other]}}})
        assert refused.status_code == 422 and "args.1.model" in refused.text, refused.text
