"""Textual-inversion embeddings used by name in the prompt, as A1111 uses them: parity with diffusers'
load_textual_inversion, records that name them by hash, and a clear line for an embedding of another model."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from img2img import Engine, GenerationRequest, InvalidArgument
from tiny_models import reference_img2img, square_photo


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return square_photo(tmp_path_factory.mktemp("square"), "coffee")


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("embeddings")
    generator = torch.Generator().manual_seed(4)
    save_file({"emb_params": torch.randn(3, 32, generator=generator)}, str(folder / "inkstyle.safetensors"))
    save_file({"<glowy>": torch.randn(32, generator=generator)}, str(folder / "glowy.safetensors"))
    save_file({"clip_l": torch.randn(2, 32, generator=generator), "clip_g": torch.randn(2, 32, generator=generator)},
              str(folder / "xlmood.safetensors"))
    save_file({"emb_params": torch.randn(1, 48, generator=generator)}, str(folder / "wide.safetensors"))
    return folder


@pytest.fixture
def embeddings(embedding_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMG2IMG_EMBEDDINGS_DIR", str(embedding_dir))
    return embedding_dir


def _request(photo: Path, model: Path, prompt: str, **fields) -> GenerationRequest:  # type: ignore[no-untyped-def]
    return GenerationRequest(source=photo, prompt=prompt, model=str(model), strength=0.6, steps=10, seed=99,
                             guidance_scale=6.0, sampler="Euler", size=(64, 64), **fields)


def _diffusers(model: Path, prompt: str, photo: Path, loads: list[tuple[Path, str]]) -> np.ndarray:
    from safetensors.torch import load_file

    xl = (model / "text_encoder_2").is_dir()
    pipe = reference_img2img(model)
    for path, token in loads:
        tensors = load_file(str(path))
        if xl:
            pipe.load_textual_inversion(tensors["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(tensors["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)
        else:
            pipe.load_textual_inversion(str(path), token=token)
    image = pipe(prompt=prompt, image=Image.open(photo).convert("RGB"), strength=0.6, guidance_scale=6.0,
                 num_inference_steps=10, generator=torch.Generator("cpu").manual_seed(99), output_type="np").images[0]
    return (image * 255).round()


def test_embeddings_match_diffusers_load_textual_inversion(tiny_sd, tiny_sdxl, photo, embeddings) -> None:
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    prompt = "a cup of coffee, inkstyle, glowy"
    ours = engine.generate(_request(photo, tiny_sd, prompt))
    reference = _diffusers(tiny_sd, prompt, photo, [(embeddings / "inkstyle.safetensors", "inkstyle"),
                                                    (embeddings / "glowy.safetensors", "glowy")])
    assert np.abs(np.asarray(ours.images[0], float) - reference).max() <= 2
    plain = engine.generate(_request(photo, tiny_sd, "a cup of coffee, ink style, glow"))
    assert np.abs(np.asarray(plain.images[0], float) - np.asarray(ours.images[0], float)).max() > 2
    assert [entry["name"] for entry in ours.record.embeddings] == ["glowy", "inkstyle"]
    assert 'TI hashes: "glowy: ' in ours.record.to_parameters_text()
    assert plain.record.embeddings == ()

    xl = engine.generate(_request(photo, tiny_sdxl, "a cup of coffee, (xlmood:1.2)"))
    reference = _diffusers(tiny_sdxl, "a cup of coffee, (xlmood:1.2)".replace("(xlmood:1.2)", "xlmood"), photo,
                           [(embeddings / "xlmood.safetensors", "xlmood")])
    unweighted = engine.generate(_request(photo, tiny_sdxl, "a cup of coffee, xlmood"))
    assert np.abs(np.asarray(unweighted.images[0], float) - reference).max() <= 2
    assert xl.images[0].tobytes() != unweighted.images[0].tobytes()  # weights reach an embedding's vectors


def test_an_embedding_of_another_model_is_refused_and_plain_prompts_ignore_them(tiny_sd, photo, embeddings) -> None:
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    with pytest.raises(InvalidArgument, match=r"prompt should be embeddings for a model 32 wide, the model in use, "
                                              r"but got 'wide \(for a model 48 wide\)'"):
        engine.generate(_request(photo, tiny_sd, "a cup, wide"))
    plain = engine.generate(_request(photo, tiny_sd, "a cup, wide", prompt_syntax="plain"))
    assert plain.record.embeddings == ()


@pytest.fixture(scope="module")
def other_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VAE of the tiny model's shape with other weights, as a diffusers folder and as an original-layout file."""
    from safetensors.torch import save_file

    from ldm_layout import vae_key
    from tiny_models import _vae

    torch.manual_seed(7)
    vae = _vae(0.18215)
    folder = tmp_path_factory.mktemp("vaes")
    vae.save_pretrained(folder / "sharp-vae")
    blocks = len(vae.config.block_out_channels)
    original = {}
    for key, value in vae.state_dict().items():
        name = vae_key(key, blocks)
        original[name] = value[:, :, None, None] if ".mid.attn_1." in name and value.ndim == 2 else value
    save_file({k: v.contiguous() for k, v in original.items()}, str(folder / "sharp.safetensors"))
    return folder


def test_a_vae_replaces_the_models_for_one_request(tiny_sd, photo, other_vae, monkeypatch) -> None:
    monkeypatch.setenv("IMG2IMG_VAE_DIR", str(other_vae))
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    base = engine.generate(_request(photo, tiny_sd, "a cup of coffee"))
    by_file = engine.generate(_request(photo, tiny_sd, "a cup of coffee", vae="sharp"))
    by_folder = engine.generate(_request(photo, tiny_sd, "a cup of coffee", vae=str(other_vae / "sharp-vae")))
    after = engine.generate(_request(photo, tiny_sd, "a cup of coffee"))
    assert np.abs(np.asarray(by_file.images[0], float) - np.asarray(by_folder.images[0], float)).max() <= 1
    assert np.abs(np.asarray(by_file.images[0], float) - np.asarray(base.images[0], float)).max() > 2
    assert after.images[0].tobytes() == base.images[0].tobytes()  # the cached model has its own VAE back

    pipe = reference_img2img(tiny_sd)
    pipe.vae = diffusers.AutoencoderKL.from_pretrained(other_vae / "sharp-vae")
    reference = pipe(prompt="a cup of coffee", image=Image.open(photo).convert("RGB"), strength=0.6,
                     guidance_scale=6.0, num_inference_steps=10, generator=torch.Generator("cpu").manual_seed(99),
                     output_type="np").images[0]
    assert np.abs(np.asarray(by_folder.images[0], float) - (reference * 255).round()).max() <= 2

    record = by_file.record
    assert record.vae == "sharp" and record.vae_sha256 and base.record.vae_sha256 is None
    assert f"VAE hash: {record.vae_sha256[:10]}, VAE: sharp" in record.to_parameters_text()
    with pytest.raises(InvalidArgument, match=r"vae should be a VAE registered .* \(sharp, sharp-vae\), "
                                              r"but got 'blurry'"):
        engine.generate(_request(photo, tiny_sd, "a cup of coffee", vae="blurry"))
