"""Inpainting through the HTTP faces of a real server: the native API (JSON with a base64 mask, a form with a mask
file), the A1111 API (its mask fields, and webuiapi's img2img with a mask image) and their bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from img2img.imageio.metadata import read_metadata
from server_process import ServerProcess, b64, serving_tiny, submit, wait_final


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path):  # type: ignore[no-untyped-def]
    yield from serving_tiny(tmp_path_factory, tiny_sd, "inpaint", max_pixels=200_000)


@pytest.fixture(scope="module")
def mask_png() -> bytes:
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (20, 10, 44, 34))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def _kept_exactly(png: bytes, source: Path, mask_png: bytes, blur: int) -> bool:
    weights = np.asarray(Image.open(io.BytesIO(mask_png)).filter(ImageFilter.GaussianBlur(blur)))
    out = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return bool(np.array_equal(out[weights == 0], np.asarray(Image.open(source).convert("RGB"))[weights == 0]))


@pytest.mark.slow  # 13 s; CI runs it with -m slow
def test_native_json_and_form_jobs_with_a_mask(server: ServerProcess, photo: Path, mask_png: bytes) -> None:
    with server.client() as client:
        job = submit(client, photo.read_bytes(), prompt="a red door", model="tiny", steps=4, seed=2,
                     mask=b64(mask_png), inpaint={"mask_blur": 2, "masked_content": "fill"})
        done = wait_final(client, job["id"])
        assert done["state"] == "done", done
        assert done["request"]["inpaint"]["masked_content"] == "fill" and "mask" not in done["request"]
        png = client.get(f"/v1/jobs/{job['id']}/images/0").content
        assert _kept_exactly(png, photo, mask_png, 2)
        record = json.loads(read_metadata(io.BytesIO(png)).record)
        assert record["mask_blur"] == 2 and len(record["mask_sha256"]) == 64

        form = client.post("/v1/jobs/form", files={"source": photo.read_bytes(), "mask": mask_png},
                           data={"request": json.dumps({"prompt": "a red door", "model": "tiny", "steps": 4,
                                                        "seed": 2, "inpaint": {"mask_blur": 2,
                                                                               "masked_content": "fill"}})})
        assert form.status_code == 202, form.text
        assert wait_final(client, form.json()["id"])["state"] == "done"
        again = client.get(f"/v1/jobs/{form.json()['id']}/images/0").content
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(again))), np.asarray(Image.open(io.BytesIO(png))))

        grown = submit(client, photo.read_bytes(), prompt="a beach", model="tiny", steps=2, seed=1,
                       inpaint={"outpaint": [0, 0, 32, 0]})
        assert wait_final(client, grown["id"])["images"][0]["width"] == 96

        fields = client.get("/v1/fields").json()
        assert [field["name"] for field in fields["inpaint"]] == ["mask_blur", "invert_mask", "inpaint_area",
                                                                   "masked_padding", "masked_content"]


@pytest.mark.parametrize(("extra", "field", "fragment"), [
    ({"inpaint": {"mask": "alpha"}}, "mask", "mask should be a source with transparent pixels"),
    ({"mask": b64(b"not a picture")}, "mask", "mask should be a PNG"),
    ({"inpaint": {"outpaint": [400, 400, 0, 0]}}, "outpaint", "outpaint should be a canvas of at most 200,000"),
    ({"inpaint": {"mask_blur": 99}, "mask": "x"}, "inpaint.mask_blur", "less than or equal to 64"),
    ({"inpaint": {"masked_content": "blur"}}, "inpaint.masked_content", "original"),
])
def test_bad_inpainting_input_is_a_422_naming_the_field(server: ServerProcess, photo: Path, extra, field,
                                                         fragment) -> None:
    with server.client() as client:
        response = client.post("/v1/jobs", json={"source": b64(photo.read_bytes()), "prompt": "x", "model": "tiny",
                                                 **extra})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and fragment in error["message"], error


def test_a1111_img2img_with_a_mask(server: ServerProcess, photo: Path, mask_png: bytes, tmp_path: Path) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    square, square_mask = tmp_path / "square.png", io.BytesIO()  # A1111's sizes start at 64
    Image.open(photo).resize((64, 64)).save(square)
    Image.open(io.BytesIO(mask_png)).resize((64, 64)).save(square_mask, format="PNG")
    photo, mask_png = square, square_mask.getvalue()
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=4)
    result = api.img2img(images=[Image.open(photo)], mask_image=Image.open(io.BytesIO(mask_png)), prompt="a door",
                         denoising_strength=0.9, seed=4, width=64, height=64, mask_blur=3, inpainting_fill=1,
                         inpaint_full_res=False)
    assert "Mask blur: 3" in result.info["infotexts"][0] and "Masked content: original" in result.info["infotexts"][0]
    assert not [warning for warning in result.info["warnings"] if "mask" in warning or "inpaint" in warning]
    buffer = io.BytesIO()
    result.image.save(buffer, format="PNG")
    assert _kept_exactly(buffer.getvalue(), photo, mask_png, 3)
    with server.client() as client:
        response = client.post("/sdapi/v1/img2img", json={"init_images": [b64(photo.read_bytes())], "width": 64,
                                                          "height": 64, "mask": b64(mask_png), "inpainting_fill": 4})
    assert response.status_code == 422 and "inpainting_fill" in response.text
