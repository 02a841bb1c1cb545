"""Finding, recognising and loading models: diffusers folders, single files, the HF cache, pickles, registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from img2img import Engine, GenerationRequest, ModelEntry, ModelRegistry
from img2img.errors import ModelNotFound, PickleRefused, UnknownModelFormat
from img2img.models.detect import inspect_model
from img2img.models.families import Family
from img2img.models.loading import prepared_config_dir
from ldm_layout import sd1_state_dict


@pytest.fixture(scope="module")
def single_file(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD model written out as one .safetensors in the original CompVis key layout."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    path = tmp_path_factory.mktemp("checkpoints") / "tiny-sd-single.safetensors"
    save_file(sd1_state_dict(pipeline), str(path))
    return path


def _run(engine: Engine, model: str, photo: Path) -> np.ndarray:
    request = GenerationRequest(source=photo, prompt="a castle", strength=0.6, steps=6, seed=3, model=model)
    return np.asarray(engine.generate(request).images[0], dtype=np.int16)


def test_folder_families_are_detected(tiny_sd, tiny_sdxl) -> None:
    assert inspect_model(tiny_sd).family == Family("sd1")
    assert inspect_model(tiny_sdxl).family == Family("sdxl")


def test_single_file_in_original_layout_loads_and_matches_the_folder(single_file, tiny_sd, photo) -> None:
    assert inspect_model(single_file).layout == "single_file"
    assert inspect_model(single_file).family == Family("sd1")
    registry = ModelRegistry()
    registry.add(ModelEntry("single", str(single_file), config=str(tiny_sd)))
    engine = Engine(device="cpu", registry=registry)
    from_file = _run(engine, "single", photo)
    from_folder = _run(Engine(device="cpu"), str(tiny_sd), photo)
    assert np.abs(from_file - from_folder).max() <= 1


def test_pickled_checkpoints_are_refused_without_opt_in(single_file, tmp_path) -> None:
    pickled = tmp_path / "model.ckpt"
    from safetensors.torch import load_file

    torch.save({"state_dict": load_file(str(single_file))}, pickled)
    with pytest.raises(PickleRefused, match="pickle"):
        inspect_model(pickled)
    with pytest.raises(PickleRefused):
        Engine(device="cpu").load(str(pickled))
    assert inspect_model(pickled, allow_pickle=True).family == Family("sd1")


def test_pickled_folder_weights_are_refused(tiny_sd, tmp_path) -> None:
    folder = shutil.copytree(tiny_sd, tmp_path / "pickled-folder")
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(PickleRefused, match="allow-pickle"):
        inspect_model(folder)


def test_repo_id_is_found_in_the_local_hugging_face_cache(tiny_sd, tmp_path, photo, monkeypatch) -> None:
    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_sd, cache / "models--acme--tiny-sd" / "snapshots" / revision)
    (cache / "models--acme--tiny-sd" / "refs").mkdir()
    (cache / "models--acme--tiny-sd" / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    engine = Engine(device="cpu")
    assert engine.load("acme/tiny-sd").family == Family("sd1")
    assert _run(engine, "acme/tiny-sd", photo).std() > 1
    with pytest.raises(ModelNotFound, match="local Hugging Face cache"):
        engine.load("acme/not-downloaded")


def test_what_is_not_a_model_is_named(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnknownModelFormat, match=r"notes\.txt"):
        inspect_model(tmp_path)
    weights = tmp_path / "classifier.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(weights))
    with pytest.raises(UnknownModelFormat, match="1 tensors, 0 of them UNet"):
        inspect_model(weights)
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxFillPipeline"}))  # [dev] and Kontext run
    with pytest.raises(UnknownModelFormat, match="FluxFillPipeline, which is not supported yet"):
        inspect_model(flux)
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    with pytest.raises(UnknownModelFormat, match="PixArtSigmaPipeline"):
        inspect_model(flux)
    with pytest.raises(ModelNotFound, match="does not exist"):
        inspect_model(tmp_path / "missing.safetensors")


def test_family_details_from_config_and_name(tiny_sd, tmp_path) -> None:
    folder = shutil.copytree(tiny_sd, tmp_path / "sd-turbo-copy")
    assert inspect_model(folder).family.distillation == "turbo"
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config |= {"_class_name": "LCMScheduler", "prediction_type": "v_prediction"}
    config_path.write_text(json.dumps(config))
    family = inspect_model(folder, name="plain").family
    assert (family.distillation, family.prediction) == ("lcm", "v_prediction")
    assert (family.default_steps, family.default_guidance, family.default_sampler) == (4, 1.0, "LCM")


def test_registry_add_list_default_remove(tiny_sd, tiny_sdxl) -> None:
    registry = ModelRegistry()
    assert registry.add(ModelEntry("small", str(tiny_sd))) == Family("sd1")
    registry.add(ModelEntry("xl", str(tiny_sdxl)))
    assert registry.default_name() == "small"  # the first one added
    registry.set_default("xl")
    assert ModelRegistry().default_name() == "xl"
    assert [e.name for e in registry.entries()] == ["small", "xl"]
    registry.remove("xl")
    assert registry.default_name() is None
    with pytest.raises(ModelNotFound, match="small"):
        registry.set_default("xl")


# Full-size parameter counts of the public architectures: a check that the shipped configs are the real ones.
FULL_SIZE_UNET_PARAMETERS = {"sd1": 859_520_964, "sdxl": 2_567_463_684}


@pytest.mark.parametrize("family", [Family("sd1"), Family("sd2", "v_prediction"), Family("sdxl")])
def test_shipped_configs_build_full_size_architectures_offline(family) -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    folder = prepared_config_dir(family)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    unet_parameters = sum(p.numel() for p in unet.parameters())
    assert unet_parameters == FULL_SIZE_UNET_PARAMETERS.get(family.base, unet_parameters)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
