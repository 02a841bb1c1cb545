"""ControlNets and T2I-Adapters as people have them: single files in both key layouts, adapter folders, names
registered or found in the ControlNet folder, and a model of another base refused."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors.torch import save_file

from img2img import ControlUnit, Engine, GenerationRequest, InvalidArgument
from img2img.engine.samplers import build_scheduler
from test_cli import img2img
from tiny_control import STANDARD_HINT, build_tiny_adapter, build_tiny_controlnet, original_layout
from tiny_models import build_tiny_sd, square_photo

PROMPT = "a lighthouse on a cliff"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype="float32", backend="torch")


@pytest.fixture(scope="module")
def adapted_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD model with its cross-attention block first, as SD's, so that adapter features fit it."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-adapted", attention_first=True)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working size itself (64x64), so that our engine and diffusers' pipelines see the same pixels."""
    return square_photo(tmp_path_factory.mktemp("square"))


@pytest.fixture(scope="module")
def edges(photo: Path) -> Image.Image:
    grey = Image.open(photo).convert("L")
    return grey.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 30 else 0).convert("RGB")


def _run(engine: Engine, model: Path, photo: Path, *units: ControlUnit, strength: float = 0.7,
         seed: int = 5) -> np.ndarray:
    result = engine.generate(GenerationRequest(
        source=photo, prompt=PROMPT, negative_prompt="fog", strength=strength, guidance_scale=7.5, steps=8,
        sampler="Euler", seed=seed, model=str(model), prompt_syntax="plain", control=units))
    return np.asarray(result.images[0], dtype=np.int16)


def test_single_files_in_either_key_layout_give_the_folders_result(engine, photo, edges, tmp_path) -> None:
    tiny_sd = build_tiny_sd(tmp_path / "tiny-sd-8", vae_blocks=4)  # the hint encoder divides the size by 8
    folder = build_tiny_controlnet(tiny_sd, tmp_path / "control_tiny", hint=STANDARD_HINT, seed=4)
    files = {"control_v11p_tiny.safetensors": original_layout(folder),
             "control_tiny_v10.safetensors": original_layout(folder, "control_model."),
             "diffusers_keys.safetensors": diffusers.ControlNetModel.from_pretrained(folder).state_dict()}
    expected = _run(engine, tiny_sd, photo, ControlUnit(model=folder, image=edges))
    assert np.abs(expected - _run(engine, tiny_sd, photo)).mean() > 1, "the ControlNet acts"
    for name, state in files.items():
        save_file({key: value.contiguous() for key, value in state.items()}, str(tmp_path / name))
        got = _run(engine, tiny_sd, photo, ControlUnit(model=tmp_path / name, image=edges))
        assert np.array_equal(got, expected), name


def _adapter_reference(model: Path, adapter: Path, photo: Path, edges: Image.Image, weight: float) -> np.ndarray:
    """diffusers' img2img pipeline with the adapter's features given to its UNet at every step, the way diffusers'
    StableDiffusionAdapterPipeline (text to image only) computes, scales and batches them."""
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(model, safety_checker=None, feature_extractor=None,
                                                                    requires_safety_checker=False)
    pipe.scheduler = build_scheduler("Euler", dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    net = diffusers.T2IAdapter.from_pretrained(adapter)
    pixels = torch.from_numpy(np.asarray(edges, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        state = [torch.cat([feature * weight] * 2) for feature in net(pixels)]
    forward = pipe.unet.forward
    pipe.unet.forward = lambda *args, **kwargs: forward(  # type: ignore[method-assign]
        *args, **kwargs, down_intrablock_additional_residuals=[feature.clone() for feature in state])
    image = pipe(prompt=PROMPT, negative_prompt="fog", image=Image.open(photo).convert("RGB"), strength=0.7,
                 guidance_scale=7.5, num_inference_steps=8, generator=torch.Generator("cpu").manual_seed(5)).images[0]
    return np.asarray(image, dtype=np.int16)


def test_an_adapter_matches_diffusers_adapter_pipeline(engine, adapted_sd, photo, edges, tmp_path) -> None:
    tiny_sd = adapted_sd
    adapter = build_tiny_adapter(tmp_path / "t2i-tiny")
    ours = _run(engine, tiny_sd, photo, ControlUnit(model=adapter, image=edges, weight=0.8))
    reference = _adapter_reference(tiny_sd, adapter, photo, edges, 0.8)
    assert np.abs(ours - reference).max() <= 2
    plain = _run(engine, tiny_sd, photo)
    assert np.abs(ours - plain).mean() > 1, "the adapter acts"
    assert np.array_equal(_run(engine, tiny_sd, photo, ControlUnit(model=adapter, image=edges, weight=0)), plain)
    half = _run(engine, tiny_sd, photo, ControlUnit(model=adapter, image=edges, weight=0.8, end=0.5))
    assert 0 < np.abs(half - plain).mean() < np.abs(ours - plain).mean()
    grey = build_tiny_adapter(tmp_path / "t2i-sketch", in_channels=1)  # sketch and canny adapters read one channel
    result = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, steps=3, seed=1, model=str(tiny_sd),
                                               control=(ControlUnit(model=grey, image=edges),)))
    assert result.record.conditions[0]["kind"] == "t2i-adapter" and result.record.conditions[0]["model"] == "t2i-sketch"


def test_a_control_model_of_another_base_is_refused_naming_both(engine, tiny_sd, tiny_sdxl, tiny_controlnet,
                                                                 photo, tmp_path) -> None:
    def run(model: Path, control: Path) -> None:
        engine.generate(GenerationRequest(source=photo, prompt=PROMPT, steps=2, model=str(model),
                                          control=(ControlUnit(model=control),)))

    with pytest.raises(InvalidArgument, match=r"control\.model should be a ControlNet for SDXL \(the model tiny-sdxl\)"
                                              r", but got .*tiny-controlnet \(made for a model 32 wide\)"):
        run(tiny_sdxl, tiny_controlnet)
    xl_adapter = build_tiny_adapter(tmp_path / "t2i-xl", xl=True)
    with pytest.raises(InvalidArgument, match=r"should be a T2I-Adapter for a model 32 wide .* \(made for SDXL\)"):
        run(tiny_sd, xl_adapter)
    xl_controlnet = build_tiny_controlnet(tiny_sdxl, tmp_path / "cn-xl")
    result = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, steps=2, seed=1, model=str(tiny_sdxl),
                                               control=(ControlUnit(model=xl_controlnet),)))
    assert result.record.conditions[0]["kind"] == "controlnet"


def test_names_come_from_the_registry_or_the_controlnet_folder(tiny_sd, adapted_sd, tiny_controlnet, photo, edges,
                                                               tmp_path, monkeypatch) -> None:
    added = img2img("models", "add", "canny-tiny", str(tiny_controlnet))
    assert added.returncode == 0 and "ControlNet for a model 32 wide" in added.stdout, added.stderr
    adapter = build_tiny_adapter(tmp_path / "controlnet" / "t2i-edges")
    monkeypatch.setenv("IMG2IMG_CONTROLNET_DIR", str(tmp_path / "controlnet"))
    listed = img2img("models", "list").stdout
    assert "canny-tiny\tcontrolnet" in listed
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    by_name = _run(engine, tiny_sd, photo, ControlUnit(model="canny-tiny", image=edges))
    assert np.array_equal(by_name, _run(engine, tiny_sd, photo, ControlUnit(model=tiny_controlnet, image=edges)))
    in_folder = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, steps=2, seed=1, model=str(adapted_sd),
                                                  control=(ControlUnit(model="t2i-edges"),)))
    assert in_folder.record.conditions[0]["model"] == "t2i-edges"
    assert in_folder.record.conditions[0]["model_sha256"] == engine_hash(adapter)
    with pytest.raises(InvalidArgument, match=r"control\.model should be a ControlNet or T2I-Adapter: .*"
                                              r"\(canny-tiny, t2i-edges\), but got 'nope'"):
        _run(engine, tiny_sd, photo, ControlUnit(model="nope"))


def engine_hash(path: Path) -> str:
    from img2img.models.loading import weights_sha256

    return weights_sha256(path)


@pytest.mark.slow
def test_an_adapter_with_openvino_runs_its_unet_in_pytorch_with_a_note(adapted_sd, photo, edges, tmp_path) -> None:
    pytest.importorskip("openvino")
    adapter = build_tiny_adapter(tmp_path / "t2i-ov")
    request = GenerationRequest(source=photo, prompt=PROMPT, strength=0.7, steps=3, seed=2, model=str(adapted_sd),
                                control=(ControlUnit(model=adapter, image=edges),), loops=2)
    reference = Engine(device="cpu", dtype="float32", backend="torch").generate(request)
    result = Engine(device="cpu", dtype="float32", backend="openvino").generate(request)
    assert any("down_intrablock_additional_residuals (from the t2i-adapter conditioner)" in note
               and "PyTorch instead" in note for note in result.notes)
    difference = np.abs(np.asarray(result.images[0], dtype=int) - np.asarray(reference.images[0], dtype=int))
    assert difference.max() <= 2
    assert result.record.loops == 2 and result.record.conditions[0]["kind"] == "t2i-adapter"
