"""The A1111 API as a real A1111 client sees it: the ``webuiapi`` library against a real server process, every
method of it that maps to a route we serve."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from server_process import ServerProcess, serving_tiny

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path):  # type: ignore[no-untyped-def]
    import torch
    from safetensors.torch import save_file

    from tiny_models import build_tiny_lora

    addons = tmp_path_factory.mktemp("server-addons")
    build_tiny_lora(tiny_sd, addons / "ink.safetensors")
    save_file({"emb_params": torch.randn(2, 32)}, str(addons / "mood.safetensors"))
    import shutil

    vaes = tmp_path_factory.mktemp("server-vaes")
    shutil.copytree(tiny_sd / "vae", vaes / "own-vae")  # the model's own VAE, chosen by name
    env = {"IMG2IMG_LORA_DIR": str(addons), "IMG2IMG_EMBEDDINGS_DIR": str(addons), "IMG2IMG_VAE_DIR": str(vaes)}
    yield from serving_tiny(tmp_path_factory, tiny_sd, "webuiapi", env=env)


@pytest.fixture(scope="module")
def api(server: ServerProcess):  # type: ignore[no-untyped-def]
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=4)


def test_txt2img_and_hires_fix(api) -> None:
    plain = api.txt2img(prompt="a (red:1.2) boat, calm sea", negative_prompt="fog", width=64, height=64, seed=3,
                        cfg_scale=5, batch_size=2)
    assert [image.size for image in plain.images] == [(64, 64), (64, 64)]
    assert plain.info["all_seeds"] == [3, 4] and plain.info["sd_model_name"] == "tiny"
    assert "Denoising strength: 1" in plain.info["infotexts"][0]
    styled = api.txt2img(prompt="a red boat, mood <lora:ink:0.8>", width=64, height=64, seed=3)
    assert 'Lora hashes: "ink: ' in styled.info["infotexts"][0] and 'TI hashes: "mood: ' in styled.info["infotexts"][0]
    again = api.txt2img(prompt="a (red:1.2) boat, calm sea", negative_prompt="fog", width=64, height=64, seed=3,
                        cfg_scale=5)
    assert again.image.tobytes() == plain.images[0].tobytes()  # same seed, same picture
    own_vae = api.txt2img(prompt="a (red:1.2) boat, calm sea", negative_prompt="fog", width=64, height=64, seed=3,
                          cfg_scale=5, override_settings={"sd_vae": "own-vae"})
    assert own_vae.image.tobytes() == plain.images[0].tobytes()  # the same weights under a VAE's name
    assert "VAE hash: " in own_vae.info["infotexts"][0] and "VAE: own-vae" in own_vae.info["infotexts"][0]

    hires = api.txt2img(prompt="a red boat", width=64, height=64, seed=3, enable_hr=True, hr_scale=1.5,
                        hr_upscaler="Lanczos", denoising_strength=0.5,
                        override_settings={"CLIP_stop_at_last_layers": 2})
    assert hires.image.size == (96, 96)
    assert "Denoising strength: 0.5" in hires.info["infotexts"][0] and "Clip skip: 2" in hires.info["infotexts"][0]
    assert hires.info["clip_skip"] == 2
    with pytest.raises(RuntimeError, match=r"422.*prompt should be a LoRA registered .* \(ink\), but got ..nope"):
        api.txt2img(prompt="a red boat <lora:nope:1>", width=64, height=64)  # refused before it is queued
    with pytest.raises(RuntimeError, match=r"422.*vae should be a VAE.{1,4}s name .* but got ../etc/passwd"):
        api.txt2img(prompt="a red boat", width=64, height=64, override_settings={"sd_vae": "/etc/passwd"})
    with pytest.raises(RuntimeError, match="hr_upscaler should be one of None, Lanczos, Nearest"):
        api.txt2img(prompt="a red boat", width=64, height=64, enable_hr=True, hr_upscaler="R-ESRGAN 4x+")


def test_img2img_png_info_and_upscale(api, photo: Path) -> None:
    source = Image.open(photo)
    result = api.img2img(images=[source], prompt="a watercolor", denoising_strength=0.5, width=96, height=64, seed=9)
    assert result.image.size == (96, 64) and result.info["seed"] == 9
    assert "mask_blur is not supported" in " | ".join(result.info["warnings"])
    info = api.png_info(result.image)
    assert info.info == result.info["infotexts"][0]

    bigger = api.extra_single_image(source, upscaler_1="Lanczos", upscaling_resize=2)
    assert bigger.image.size == (128, 96)
    exact = api.extra_single_image(source, resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                                   upscaler_1="Nearest")
    assert exact.image.size == (100, 100)
    with pytest.raises(RuntimeError, match="upscaler_1 should be one of None, Lanczos, Nearest"):
        api.extra_single_image(source, upscaler_1="R-ESRGAN 4x+")
    batch = api.extra_batch_images([source, result.image], name_list=["photo", "made"], upscaler_1="Lanczos",
                                   upscaling_resize=1.5)
    assert [image.size for image in batch.images] == [(96, 72), (144, 96)] and "made: Postprocess" in batch.info
    with pytest.raises(RuntimeError, match="gfpgan_visibility should be 0"):
        api.extra_single_image(source, gfpgan_visibility=1)


def test_the_listing_routes_answer_as_a1111s_do(api, server: ServerProcess) -> None:
    assert "tiny" in api.util_get_model_names() and "builtin" in api.util_get_model_names()
    assert "Euler a" in api.util_get_sampler_names()
    assert api.util_get_scheduler_names() == ["automatic", "karras"]
    assert [upscaler["name"] for upscaler in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert api.get_sd_vae() == [{"model_name": "own-vae", "filename": "own-vae.safetensors"}]
    for empty in (api.get_prompt_styles, api.get_latent_upscale_modes,
                  api.get_hypernetworks, api.get_face_restorers, api.get_realesrgan_models):
        assert empty() == [], empty.__name__
    assert [lora["name"] for lora in api.get_loras()] == ["ink"]
    embeddings = api.get_embeddings()
    assert list(embeddings["loaded"]) == ["mood"] and embeddings["loaded"]["mood"]["vectors"] == 2
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    flags = api.get_cmd_flags()
    assert flags["api"] is True and flags["port"] == server.port and flags["listen"] is False
    memory = api.get_memory()
    assert memory["ram"]["total"] > memory["ram"]["free"] > 0 and "cuda" in memory
    assert api.refresh_checkpoints() is None
    with server.client() as client:
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200


def test_options_progress_and_interrupt(api) -> None:
    api.util_set_model("tiny")
    assert api.util_get_current_model() == "tiny"
    assert api.get_options()["sd_model_checkpoint"] == "tiny"
    progress = api.get_progress()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0
    api.util_wait_for_ready(check_interval=0.1)
    assert api.interrupt() is None and api.skip() is None
