"""Control units through the HTTP faces of a real server: native JSON and form jobs, the ControlNet and
preprocessor lists and the map preview, A1111's alwayson_scripts.controlnet and its /controlnet routes, and bad
units as 4xx naming the field."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2img.engine.preprocessors import preprocess
from img2img.imageio.metadata import read_metadata
from server_process import ServerProcess, b64, submit, wait_final
from tiny_models import square_photo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path, tiny_controlnet: Path):  # type: ignore[no-untyped-def]
    from img2img.models.registry import ModelEntry, ModelRegistry

    config = tmp_path_factory.mktemp("control-config")
    ModelRegistry(config).add(ModelEntry("tiny", str(tiny_sd)))
    ModelRegistry(config).add_addon("edges", tiny_controlnet, "controlnet")
    folder = tmp_path_factory.mktemp("controlnet-folder")
    shutil.copytree(tiny_controlnet, folder / "lines-net")
    process = ServerProcess(tmp_path_factory.mktemp("control-data"), config,
                            env={"IMG2IMG_CONTROLNET_DIR": str(folder)})
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def square(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return square_photo(tmp_path_factory.mktemp("square"), "coffee")


@pytest.fixture(scope="module")
def edges_png(square: Path) -> bytes:
    buffer = io.BytesIO()
    preprocess("canny", Image.open(square).convert("RGB")).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_native_json_and_form_jobs_with_units(server: ServerProcess, square: Path, edges_png: bytes) -> None:
    units = [{"model": "edges", "image": b64(edges_png), "weight": 0.8, "end": 0.7},
             {"model": "lines-net", "preprocessor": "canny", "mode": "prompt"}]
    with server.client() as client:
        job = submit(client, square.read_bytes(), prompt="a cup of tea", model="tiny", steps=4, seed=2, control=units)
        done = wait_final(client, job["id"])
        assert done["state"] == "done", done
        assert [unit.get("image") for unit in done["request"]["control"]] == [None, None]  # pictures are blobs
        assert "control_images" not in done["request"]
        png = client.get(f"/v1/jobs/{job['id']}/images/0").content
        metadata = read_metadata(io.BytesIO(png))
        assert 'ControlNet 0: "Module: none, Model: edges [' in metadata.parameters
        assert 'ControlNet 1: "Module: canny, Model: lines-net [' in metadata.parameters
        assert [entry["image"] for entry in json.loads(metadata.record)["conditions"]] == ["given", "source"]

        form_units = [{**units[0], "image": "upload"}, units[1]]
        form = client.post("/v1/jobs/form", files=[("source", square.read_bytes()), ("control_images", edges_png)],
                           data={"request": json.dumps({"prompt": "a cup of tea", "model": "tiny", "steps": 4,
                                                        "seed": 2, "control": form_units})})
        assert form.status_code == 202, form.text
        assert wait_final(client, form.json()["id"])["state"] == "done"
        again = client.get(f"/v1/jobs/{form.json()['id']}/images/0").content
        assert np.array_equal(_pixels(again), _pixels(png))

        plain = submit(client, square.read_bytes(), prompt="a cup of tea", model="tiny", steps=4, seed=2)
        wait_final(client, plain["id"])
        assert not np.array_equal(_pixels(client.get(f"/v1/jobs/{plain['id']}/images/0").content), _pixels(png))


def test_lists_and_the_map_preview(server: ServerProcess, square: Path, edges_png: bytes) -> None:
    with server.client() as client:
        listed = client.get("/v1/controlnets").json()["controlnets"]
        assert [(entry["name"], entry["kind"]) for entry in listed] == [("edges", "controlnet"),
                                                                      ("lines-net", "controlnet")]
        names = [entry["name"] for entry in client.get("/v1/preprocessors").json()["preprocessors"]]
        assert names[:3] == ["none", "canny", "lineart"] and "inpaint" in names
        made = client.post("/v1/preprocess", files={"image": square.read_bytes()}, data={"name": "canny"})
        assert made.status_code == 200 and made.headers["content-type"] == "image/png"
        assert np.array_equal(_pixels(made.content), _pixels(edges_png))
        bad = client.post("/v1/preprocess", files={"image": square.read_bytes()}, data={"name": "pose"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "preprocessor"
        assert "canny" in bad.json()["error"]["choices"]


@pytest.mark.parametrize(("unit", "field", "fragment"), [
    ({"model": "../../etc/controlnet"}, "control.0.model", "should be a ControlNet's or an adapter's name"),
    ({"model": "no-such-net"}, "control.model", "edges, lines-net"),
    ({"model": "tiny"}, "control.model", "should be a ControlNet or T2I-Adapter"),
    ({"model": "edges", "weight": 3}, "control.0.weight", "less than or equal to 2"),
    ({"model": "edges", "start": 0.9, "end": 0.1}, "control.end", "at least start (0.9)"),
    ({"model": "edges", "preprocessor": "pose"}, "control.0.preprocessor", "canny"),
    ({"model": "edges", "preprocessor": "depth"}, "preprocessor", "depth with a depth model registered"),
    ({"model": "edges", "image": b64(b"not a picture")}, "control_image", "should be a PNG"),
    ({"model": "edges", "colour": "red"}, "control.0.colour", "extra inputs are not permitted"),
])
def test_bad_units_are_a_422_naming_the_field(server: ServerProcess, square: Path, unit, field, fragment) -> None:
    with server.client() as client:
        response = client.post("/v1/jobs", json={"source": b64(square.read_bytes()), "prompt": "x", "model": "tiny",
                                                 "control": [unit]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and fragment in error["message"], error


def test_too_many_units_and_units_with_the_builtin_engine(server: ServerProcess, square: Path) -> None:
    with server.client() as client:
        many = client.post("/v1/jobs", json={"source": b64(square.read_bytes()), "prompt": "x", "model": "tiny",
                                             "control": [{"model": "edges"}] * 4})
        builtin = client.post("/v1/jobs", json={"source": b64(square.read_bytes()), "prompt": "bold-outline",
                                                "model": "builtin", "control": [{"model": "edges"}]})
    assert many.status_code == 422 and many.json()["error"]["field"] == "control"
    assert builtin.status_code == 422 and "used with diffusion models only" in builtin.json()["error"]["message"]


def test_a1111_alwayson_controlnet_and_its_routes(server: ServerProcess, square: Path, edges_png: bytes) -> None:
    with server.client() as client:
        assert client.get("/controlnet/version").json() == {"version": 2}
        models = client.get("/controlnet/model_list").json()["model_list"]
        assert models[0].startswith("edges [") and len(models) == 2
        modules = client.get("/controlnet/module_list").json()["module_list"]
        assert "canny" in modules and "softedge_hed" in modules
        detected = client.post("/controlnet/detect", json={
            "controlnet_module": "canny", "controlnet_input_images": [b64(square.read_bytes())],
            "controlnet_threshold_a": 100, "controlnet_threshold_b": 200}).json()
        assert np.array_equal(_pixels(base64.b64decode(detected["images"][0])), _pixels(edges_png))

        unit = {"enabled": True, "module": "canny", "model": models[0], "weight": 0.9, "resize_mode": "Crop and Resize",
                "guidance_start": 0.0, "guidance_end": 0.8, "control_mode": 0, "pixel_perfect": True,
                "threshold_a": 100, "threshold_b": 200, "processor_res": 512}
        body = {"init_images": [b64(square.read_bytes())], "prompt": "a cup", "steps": 4, "seed": 3, "width": 64,
                "height": 64, "denoising_strength": 0.7, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
        answer = client.post("/sdapi/v1/img2img", json=body)
        assert answer.status_code == 200, answer.text
        info = json.loads(answer.json()["info"])
        text = info["infotexts"][0]
        assert 'ControlNet 0: "Module: canny, Model: edges [' in text and "Resize Mode: Crop and Resize" in text
        assert "Guidance End: 0.8" in text and "Threshold A: 100" in text
        assert any("pixel_perfect" in warning for warning in info["warnings"])

        txt = client.post("/sdapi/v1/txt2img", json={"prompt": "a cup", "steps": 3, "width": 64, "height": 64,
                                                     "alwayson_scripts": {"ControlNet": {"args": [
                                                         {**unit, "image": b64(edges_png), "module": "none"}]}}})
        assert txt.status_code == 200, txt.text
        assert "ControlNet 0" in json.loads(txt.json()["info"])["infotexts"][0]

        for args, field in (([{**unit, "module": "openpose_full"}], "alwayson_scripts.controlnet.args.0.module"),
                            ([{**unit, "control_mode": 7}], "alwayson_scripts.controlnet.args.0.control_mode"),
                            ([["canny", "edges"]], "alwayson_scripts.controlnet.args")):
            scripts = {"controlnet": {"args": args}}
            refused = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": scripts})
            assert refused.status_code == 422 and refused.json()["error"]["field"] == field, refused.text
        blank = client.post("/sdapi/v1/txt2img", json={"prompt": "a cup", "width": 64, "height": 64,
                                                       "alwayson_scripts": {"controlnet": {"args": [unit]}}})
        assert blank.status_code == 422 and "txt2img has no init image" in blank.text
