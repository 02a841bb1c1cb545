"""A tiny autoencoder (TAESD) in place of the model's VAE: diffusers' result, both backends, found by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from img2img import Engine, GenerationRequest, InvalidArgument
from tiny_models import build_tiny_sd, reference_img2img, square_photo


@pytest.fixture(scope="module")
def tiny_sd8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD model with a VAE that divides the size by 8, as real ones (and TAESD) do."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-8", vae_blocks=4)


@pytest.fixture(scope="module")
def taesd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random AutoencoderTiny saved as madebyollin/taesd is: a diffusers folder."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("vae") / "taesd"
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photo at the working size itself (64x64), so that both pipelines see the same pixels."""
    return square_photo(tmp_path_factory.mktemp("photo"))


def _request(photo, model, **fields) -> GenerationRequest:
    return GenerationRequest(**{"source": photo, "prompt": "a cup of coffee", "strength": 0.6, "steps": 10,
                                "guidance_scale": 6.0, "seed": 99, "model": str(model), "sampler": "Euler",
                                **fields})


def test_a_tiny_vae_gives_what_diffusers_gives_with_it(tiny_sd8, taesd, photo) -> None:
    from diffusers import AutoencoderTiny

    ours = Engine(device="cpu", dtype="float32", backend="torch").generate(_request(photo, tiny_sd8, vae=str(taesd)))
    pipe = reference_img2img(tiny_sd8)
    pipe.vae = AutoencoderTiny.from_pretrained(taesd)
    reference = pipe(prompt="a cup of coffee", image=Image.open(photo).convert("RGB"), strength=0.6,
                     guidance_scale=6.0, num_inference_steps=10, generator=torch.Generator("cpu").manual_seed(99),
                     output_type="np").images[0]
    assert np.abs(np.asarray(ours.images[0], float) - (reference * 255).round()).max() <= 2
    record = ours.record
    assert record.vae_sha256 and "VAE: taesd" in record.to_parameters_text()


@pytest.mark.slow  # 12 s (three OpenVINO engines); CI runs it with -m slow
def test_a_tiny_vae_runs_beside_openvino_reproduces_and_gives_the_model_its_vae_back(tiny_sd8, taesd, photo) -> None:
    engine = Engine(device="cpu", dtype="float32", backend="openvino")
    base = engine.generate(_request(photo, tiny_sd8))
    tiny = engine.generate(_request(photo, tiny_sd8, vae=str(taesd)))
    again = Engine(device="cpu", dtype="float32", backend="openvino").generate(_request(photo, tiny_sd8,
                                                                                        vae=str(taesd)))
    after = engine.generate(_request(photo, tiny_sd8))
    assert tiny.images[0].tobytes() == again.images[0].tobytes()
    assert tiny.images[0].tobytes() != base.images[0].tobytes()
    assert after.images[0].tobytes() == base.images[0].tobytes()
    assert not [note for note in tiny.notes if "could not" in note]
    torch_made = Engine(device="cpu", dtype="float32", backend="torch").generate(
        _request(photo, tiny_sd8, vae=str(taesd)))
    assert np.abs(np.asarray(tiny.images[0], float) - np.asarray(torch_made.images[0], float)).max() <= 2


def test_taesd_is_found_by_name_in_the_hugging_face_cache(tiny_sd8, taesd, photo, tmp_path, monkeypatch) -> None:
    from img2img.models.vae import vae_path

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--madebyollin--taesd"
    shutil.copytree(taesd, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert vae_path("taesd", {}) == repo / "snapshots" / revision
    assert vae_path("madebyollin/taesd", {}) == repo / "snapshots" / revision
    with pytest.raises(InvalidArgument, match=r"^vae should be a taesdxl folder in a VAE folder \(.*\) or "
                                              r"madebyollin/taesdxl in the Hugging Face cache, but got 'taesdxl'$"):
        vae_path("taesdxl", {})  # not downloaded

    by_name = Engine(device="cpu", dtype="float32", backend="torch").generate(_request(photo, tiny_sd8, vae="taesd"))
    by_path = Engine(device="cpu", dtype="float32", backend="torch").generate(_request(photo, tiny_sd8,
                                                                                       vae=str(taesd)))
    assert by_name.images[0].tobytes() == by_path.images[0].tobytes() and by_name.record.vae == "taesd"


def test_a_tiny_vae_in_one_file_or_as_its_author_ships_it(tiny_sd8, photo, tmp_path, monkeypatch) -> None:
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file

    from img2img.models.vae import is_tiny_file

    torch.manual_seed(4)
    made = AutoencoderTiny()  # TAESD's own architecture, as its single files hold it
    single = tmp_path / "taesd-one.safetensors"
    save_file(made.state_dict(), str(single))
    made.save_pretrained(tmp_path / "taesd-folder")
    assert is_tiny_file(single) and is_tiny_file(tmp_path / "taesd-folder")
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    by_file = engine.generate(_request(photo, tiny_sd8, vae=str(single)))
    by_folder = engine.generate(_request(photo, tiny_sd8, vae=str(tmp_path / "taesd-folder")))
    assert by_file.images[0].tobytes() == by_folder.images[0].tobytes()

    # The author's two files, as ComfyUI keeps them in vae_approx/: the decoder's layers count from its clamp.
    state = made.state_dict()
    pair = tmp_path / "vae" / "vae_approx"
    pair.mkdir(parents=True)
    save_file({key.removeprefix("encoder.layers."): value for key, value in state.items()
               if key.startswith("encoder.")}, str(pair / "taesd_encoder.safetensors"))
    save_file({f"{int(key.split('.')[2]) + 1}.{key.split('.', 3)[3]}": value for key, value in state.items()
               if key.startswith("decoder.")}, str(pair / "taesd_decoder.safetensors"))
    assert is_tiny_file(pair)
    monkeypatch.setenv("IMG2IMG_VAE_DIR", str(tmp_path / "vae"))
    by_pair = engine.generate(_request(photo, tiny_sd8, vae="vae_approx"))
    assert by_pair.images[0].tobytes() == by_folder.images[0].tobytes()
    (pair / "taesd_decoder.safetensors").unlink()
    with pytest.raises(InvalidArgument, match=r"^vae should be a VAE registered"):
        engine.generate(_request(photo, tiny_sd8, vae="vae_approx"))
