"""Parameters written by other generators: read with sd-parsers, shown by info, and used by --params-from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from foreign_files import CFG, DENOISE, FORMATS, NEGATIVE, PROMPT, SEED, STEPS, comfyui_graph
from img2img import Engine, GenerationRequest, params_from
from img2img.imageio.foreign import our_sampler, read_foreign
from server_process import ServerProcess, b64, serving_tiny, wait_final
from test_cli import assert_one_line_error, img2img

# What each format can say: NovelAI and Fooocus keep no separate schedule; Fooocus and Dream files no strength.
SAMPLERS = {"a1111.png": "DPM++ 2M Karras", "a1111.jpg": "DPM++ 2M Karras", "a1111-stealth.png": "DPM++ 2M Karras",
            "comfyui.png": "DPM++ 2M Karras", "invokeai.png": "DPM++ 2M Karras", "invokeai-sd-metadata.png": "Euler a",
            "invokeai-dream.png": "LMS", "fooocus.png": "DPM++ 2M SDE Karras", "novelai.png": "Euler a",
            "text-after-idat.png": "DPM++ 2M Karras"}
NO_STRENGTH = {"fooocus.png", "invokeai-dream.png"}
NO_NEGATIVE = {"invokeai-sd-metadata.png"}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("foreign")
    for name, (build, _) in FORMATS.items():
        (folder / name).write_bytes(build())
    (folder / "truncated-json.png").write_bytes(comfyui_graph(truncate=True))
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_reads_back_as_the_same_settings(name, made) -> None:
    found = read_foreign(made / name)
    assert found.generator == FORMATS[name][1]
    first = found.samplers[0]
    assert (first.prompt, first.seed, first.steps, first.cfg) == (PROMPT, SEED, STEPS, CFG)
    assert first.negative_prompt == ("" if name in NO_NEGATIVE else NEGATIVE)
    fields = params_from(made / name).fields
    assert fields["sampler"] == SAMPLERS[name]
    assert fields.get("strength") == (None if name in NO_STRENGTH else DENOISE)
    assert (fields["prompt"], fields["seed"], fields["steps"], fields["guidance_scale"]) == (PROMPT, SEED, STEPS, CFG)


def test_comfyui_graphs_list_each_sampler(made) -> None:
    found = read_foreign(made / "comfyui.png")
    assert [(s.sampler, s.scheduler, s.seed, s.steps, s.denoise) for s in found.samplers] == [
        ("dpmpp_2m", "karras", SEED, STEPS, DENOISE), ("euler_ancestral", "normal", SEED + 1, 10, 0.3)]
    assert found.samplers[0].model == "dreamshaper_8.safetensors"
    assert "2 samplers; the first one's settings are used" in params_from(made / "comfyui.png").warnings[0]


def test_sampler_names_of_other_tools_map_to_ours_or_say_why_not() -> None:
    assert our_sampler("euler_ancestral", "normal") == ("Euler a", None)
    assert our_sampler("dpmpp_2m_sde_gpu", "karras") == ("DPM++ 2M SDE Karras", None)
    assert our_sampler("k_dpmpp_2m", None) == ("DPM++ 2M", None)
    assert our_sampler("euler_k", None)[0] == "Euler"  # no Euler Karras here: said in the warning
    assert "Karras schedule has no counterpart" in (our_sampler("euler_k", None)[1] or "")
    assert our_sampler("Euler a", "Automatic") == ("Euler a", None)
    name, warning = our_sampler("dpmpp_3m_sde", "exponential")
    assert name is None and "dpmpp_3m_sde" in (warning or "")
    assert "'exponential' has no counterpart" in (our_sampler("dpmpp_2m", "exponential")[1] or "")


def test_info_shows_every_format_as_text_and_json(made) -> None:
    for name in ("comfyui.png", "novelai.png", "a1111-stealth.png"):
        text = img2img("info", str(made / name))
        assert text.returncode == 0, text.stderr
        assert f"Generator: {FORMATS[name][1]}" in text.stdout and f"Prompt: {PROMPT}" in text.stdout
        assert f"Seed: {SEED}" in text.stdout and f"CFG scale: {CFG}" in text.stdout
        record = json.loads(img2img("info", str(made / name), "--json").stdout)
        assert record["generator"] == FORMATS[name][1] and record["samplers"][0]["seed"] == SEED
    assert "Sampler 2 of 2:" in img2img("info", str(made / "comfyui.png")).stdout


def test_broken_metadata_is_one_line_and_exit_2(made, photo) -> None:
    assert_one_line_error(img2img("info", str(made / "truncated-json.png")),
                          "its ComfyUI 'prompt' data is not valid JSON")
    assert_one_line_error(img2img("info", str(made / "empty.png")), "FILE should be", "empty.png")
    assert_one_line_error(img2img("info", str(photo)), "should hold generation parameters", "astronaut.png")
    assert_one_line_error(img2img("run", str(photo), "--params-from", str(made / "empty.png")),
                          "--params-from should be", "empty.png")
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("img2img", '{"prompt": "cut sho')
    Image.new("RGB", (8, 8)).save(made / "broken-record.png", pnginfo=info)
    assert_one_line_error(img2img("info", str(made / "broken-record.png"), "--json"),
                          "FILE should hold a readable img2img record")


@pytest.mark.slow  # 13 s; CI runs it with -m slow
def test_run_params_from_takes_the_settings_and_options_override(made, tiny_sd, photo, tmp_path) -> None:
    out = tmp_path / "from-comfy.png"
    result = img2img("run", str(photo), "--params-from", str(made / "comfyui.png"), "--model", str(tiny_sd),
                     "--steps", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "2 samplers" in result.stderr and "dreamshaper_8" in result.stderr  # what did not carry over
    record = json.loads(Image.open(out).text["img2img"])
    assert (record["prompt"], record["negative_prompt"], record["seed"]) == (PROMPT, NEGATIVE, SEED)
    assert (record["steps"], record["guidance_scale"], record["sampler"]) == (3, CFG, "DPM++ 2M Karras")
    assert record["strength"] == DENOISE
    # Our own file as the source of parameters gives the same request again, byte for byte.
    again = tmp_path / "again.png"
    assert img2img("run", str(photo), "--params-from", str(out), "--model", str(tiny_sd), "-o", str(again)
                   ).returncode == 0
    assert again.read_bytes() == out.read_bytes()
    assert_one_line_error(img2img("run", str(photo)), "PROMPT should be given (or found in --params-from FILE)")


def test_the_library_starts_a_request_from_a_file(made, tiny_sd, photo) -> None:
    found = params_from(made / "novelai.png")
    assert found.generator == "NovelAI"
    request = GenerationRequest(source=photo, **{**found.fields, "steps": 2}, model=str(tiny_sd))
    record = Engine(device="cpu", dtype="float32").generate(request).record
    assert (record.prompt, record.seed, record.sampler, record.strength) == (PROMPT, SEED, "Euler a", DENOISE)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path):  # type: ignore[no-untyped-def]
    yield from serving_tiny(tmp_path_factory, tiny_sd, "foreign")


def test_the_api_reads_parameters_and_starts_jobs_from_them(server: ServerProcess, made, photo) -> None:
    with server.client() as client:
        found = client.post("/v1/parameters", files={"image": ("c.png", (made / "fooocus.png").read_bytes())})
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["generator"] == "Fooocus" and body["fields"]["sampler"] == "DPM++ 2M SDE Karras"
        none = client.post("/v1/parameters", files={"image": ("p.png", photo.read_bytes())})
        assert none.status_code == 422 and none.json()["error"]["field"] == "image"
        response = client.post("/v1/jobs/form", files={"source": ("p.png", photo.read_bytes()),
                                                       "params_from": ("a.png", (made / "a1111.png").read_bytes())},
                               data={"request": json.dumps({"model": "tiny", "steps": 2})})
        assert response.status_code == 202, response.text
        assert any("v1-5-pruned-emaonly" in note for note in response.json()["notes"])
        done = wait_final(client, response.json()["id"])
        assert done["state"] == "done", done
        assert (done["request"]["prompt"], done["request"]["seed"], done["request"]["steps"]) == (PROMPT, SEED, 2)
        as_json = client.post("/v1/jobs", json={"source": b64(photo.read_bytes()), "model": "tiny", "steps": 2,
                                                "params_from": b64(photo.read_bytes())})
        assert as_json.status_code == 422 and as_json.json()["error"]["field"] == "params_from"
