"""Stable Diffusion 3.x (flow matching): detection, parity with diffusers' own pipelines, the flow-matching form of
the strength contract, every face's basics, and one-line refusals of what was made for UNets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from img2img import Engine, GenerationRequest
from img2img.engine.diffusion import DiffusionJob, run_diffusion
from img2img.engine.samplers import FLOW_SAMPLERS, build_scheduler
from img2img.errors import InvalidArgument
from img2img.models.detect import inspect_model

PROMPT, NEGATIVE = "a painting of a cat in winter", "blurry"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu")


def _pipeline(folder: Path, sampler: str = "Euler", **components: object) -> diffusers.StableDiffusion3Img2ImgPipeline:
    pipe = diffusers.StableDiffusion3Img2ImgPipeline.from_pretrained(folder, **components)
    pipe.scheduler = build_scheduler(sampler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_an_sd3_folder_is_detected_with_its_defaults(tiny_sd3: Path) -> None:
    family = inspect_model(tiny_sd3).family
    assert (family.base, family.flow, family.label) == ("sd3", True, "SD 3.x")
    assert family.defaults_text == "28 steps, CFG 7, Euler" and family.native_side == 1024


@pytest.mark.parametrize(("sampler", "strength", "guidance"),
                         [("Euler", 0.6, 7.0), ("Euler", 0.3, 1.0), ("Heun", 0.75, 4.5)])
def test_img2img_matches_diffusers(tiny_sd3: Path, photo: Path, sampler: str, strength: float,
                                   guidance: float) -> None:
    source = Image.open(photo).convert("RGB")
    pipe = _pipeline(tiny_sd3, sampler)
    reference = pipe(PROMPT, negative_prompt=NEGATIVE, image=source, strength=strength, num_inference_steps=8,
                     guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(21), height=48, width=64,
                     output_type="np").images
    job = DiffusionJob(PROMPT, NEGATIVE, strength, guidance, 8, sampler, (21,))
    ours = run_diffusion(_pipeline(tiny_sd3, sampler), job, source).images
    assert ours.shape == reference.shape == (1, 48, 64, 3)
    assert ours.std() > 0.01, "a constant image would match trivially"
    assert np.abs(ours - reference).max() <= 2 / 255


def test_strength_one_is_text_to_image_with_no_trace_of_the_source(tiny_sd3: Path, photo: Path) -> None:
    source = Image.open(photo).convert("RGB")
    pipe = _pipeline(tiny_sd3)
    reference = diffusers.StableDiffusion3Pipeline.from_pipe(pipe)(
        PROMPT, height=48, width=64, num_inference_steps=6, guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(8), output_type="np").images
    job = DiffusionJob(PROMPT, "", 1.0, 5.0, 6, "Euler", (8,))
    full = run_diffusion(pipe, job, source)
    other = run_diffusion(pipe, job, Image.new("RGB", source.size, "orange"))
    assert np.abs(full.images - reference).max() <= 2 / 255
    assert full.images.tobytes() == other.images.tobytes()  # nothing of either source is left
    assert (full.steps_run, full.start_sigma) == (6, 1.0)


@pytest.mark.parametrize("sampler", list(FLOW_SAMPLERS))
def test_the_strength_contract_in_its_flow_matching_form(tiny_sd3: Path, photo: Path, sampler: str) -> None:
    """Steps run and the start sigma (the share of noise on the straight path) grow with the strength, in both
    steps modes: diffusers' rounding (up, for flow matching) and the exact mode, which runs the steps asked for."""
    source = Image.open(photo).convert("RGB")
    pipe = _pipeline(tiny_sd3)
    runs = {(mode, strength): run_diffusion(pipe, DiffusionJob(PROMPT, "", strength, 1.0, 10, sampler, (2,),
                                                               steps_mode=mode), source)
            for mode in ("diffusers", "exact") for strength in (0.25, 0.65)}
    assert [runs["diffusers", s].steps_run for s in (0.25, 0.65)] == [3, 7]  # 2.5 and 6.5 steps, rounded up
    assert [runs["exact", s].steps_run for s in (0.25, 0.65)] == [10, 10]
    for mode in ("diffusers", "exact"):
        low, high = runs[mode, 0.25].start_sigma, runs[mode, 0.65].start_sigma
        assert 0.0 < low < high < 1.0, (mode, low, high)
        assert np.isfinite(runs[mode, 0.25].images).all()


def test_the_engine_runs_any_size_reproduces_and_records_the_family(engine: Engine, tiny_sd3: Path) -> None:
    """A 130x97 photo (its 128x96 working size is a whole number of 16-pixel patches) and a working size whose
    latents have an odd side (72 px: 9 latents, padded to the transformer's 2x2 patches)."""
    photo = Image.open(Path(__file__).parent.parent / "examples" / "astronaut.png").convert("RGB").resize((130, 97))
    request = GenerationRequest(source=photo, prompt=PROMPT, strength=0.7, steps=4, seed=5, model=str(tiny_sd3),
                                num_images=2)
    result = engine.generate(request)
    record = result.record
    assert result.images[0].size == (130, 97) and result.images[0].tobytes() != result.images[1].tobytes()
    assert (record.model_family, record.sampler, record.steps_run) == ("SD 3.x", "Euler", 3)  # 2.8, rounded up
    assert "Model family: SD 3.x" in record.to_parameters_text() and "Sampler: Euler" in record.to_parameters_text()
    if engine.placement.backend == "openvino":
        assert any("SD 3.x models run with PyTorch" in note for note in result.notes), result.notes
    again = engine.generate(replace(record.to_request(photo), model=str(tiny_sd3)))
    assert again.images[0].tobytes() == result.images[0].tobytes()
    odd = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, strength=0.5, steps=4, seed=5,
                                            model=str(tiny_sd3), size=(72, 64)))
    assert odd.images[0].size == (72, 64) and np.asarray(odd.images[0]).std() > 1


def test_a_model_without_t5_runs_as_diffusers_runs_it(tmp_path: Path, photo: Path) -> None:
    from tiny_models import build_tiny_sd3

    model = build_tiny_sd3(tmp_path / "tiny-sd3-no-t5", t5=False)
    source = Image.open(photo).convert("RGB")
    reference = _pipeline(model, text_encoder_3=None, tokenizer_3=None)(
        PROMPT, image=source, strength=0.6, num_inference_steps=5, guidance_scale=7.0, height=48, width=64,
        generator=torch.Generator("cpu").manual_seed(3), output_type="np").images
    loaded = Engine(device="cpu", dtype="float32", backend="torch").load(str(model)).pipeline  # our loader
    assert loaded.text_encoder_3 is None
    ours = run_diffusion(loaded, DiffusionJob(PROMPT, "", 0.6, 7.0, 5, "Euler", (3,)), source).images
    assert np.abs(ours - reference).max() <= 2 / 255


def test_what_was_made_for_unets_is_refused_in_one_line(engine: Engine, tiny_sd3: Path,
                                                        tiny_controlnet: Path) -> None:
    from img2img.engine.control import ControlUnit

    source = Image.new("RGB", (64, 48), "teal")
    common = {"source": source, "prompt": PROMPT, "steps": 2, "seed": 1, "model": str(tiny_sd3)}
    cases = [({"control": (ControlUnit(model=tiny_controlnet, image=source),)}, r"^control should be left out with "
              r"SD 3\.x models"),
             ({"cache_steps": 2}, r"^cache_steps should be 1 with SD 3\.x models"),
             ({"merge_tokens": 0.5}, r"^merge_tokens should be 0 with SD 3\.x models"),
             ({"prompt": "a cat <lora:style:0.8>"}, r"^prompt should be no LoRA tags with SD 3\.x models"),
             ({"sampler": "LMS"}, r"^sampler should be one of Euler, Heun, DPM\+\+ 2M, UniPC for SD 3\.x models")]
    for change, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            engine.generate(GenerationRequest(**{**common, **change}))  # type: ignore[arg-type]


@pytest.mark.slow  # 14 s; CI runs it with -m slow
def test_the_cli_runs_an_sd3_model_and_lists_its_family(tiny_sd3: Path, photo: Path, tmp_path: Path) -> None:
    from test_cli import assert_one_line_error, img2img

    out = tmp_path / "cat.png"
    ran = img2img("run", str(photo), PROMPT, "--model", str(tiny_sd3), "--strength", "0.6", "--steps", "3",
                  "--sampler", "Heun", "--seed", "4", "-o", str(out))
    assert ran.returncode == 0, ran.stderr
    info = img2img("info", str(out))
    assert "Sampler: Heun" in info.stdout and "Model family: SD 3.x" in info.stdout, info.stdout
    assert img2img("models", "add", "sd3", str(tiny_sd3)).returncode == 0
    assert "SD 3.x (28 steps, CFG 7, Euler)" in img2img("models", "list").stdout
    assert_one_line_error(img2img("run", str(photo), PROMPT, "--model", "sd3", "--sampler", "DDIM"), "sampler",
                          "for SD 3.x models")


def test_quantize_int8_loads_t5_with_8_bit_weights(tiny_sd3: Path, photo: Path) -> None:
    from img2img.models.text_int8 import Int8WeightLinear

    engine = Engine(device="cpu", dtype="float32", backend="openvino", quantize="int8")
    request = GenerationRequest(source=str(photo), prompt=PROMPT, strength=0.6, steps=4, seed=2, model=str(tiny_sd3))
    result = engine.generate(request)
    t5 = engine.load(str(tiny_sd3)).pipeline.text_encoder_3
    layers = [module for module in t5.modules() if isinstance(module, Int8WeightLinear)]
    assert layers and all(layer.weight.dtype == torch.int8 for layer in layers)
    assert not any(isinstance(module, torch.nn.Linear) for module in t5.modules())
    assert any("T5 encoder's weights are 8-bit" in note for note in result.notes), result.notes
    assert result.record.quantize == "int8"
    again = engine.generate(replace(result.record.to_request(str(photo)), model=str(tiny_sd3)))
    assert again.images[0].tobytes() == result.images[0].tobytes()
    full = diffusers.StableDiffusion3Pipeline.from_pretrained(tiny_sd3).text_encoder_3
    ids = torch.tensor([[5, 58, 7, 6, 1]])
    similarity = torch.nn.functional.cosine_similarity(t5(ids)[0].flatten(), full(ids)[0].flatten(), dim=0)
    assert similarity > 0.999


def test_a_registered_sd3_model_can_leave_t5_out(tiny_sd3: Path, tiny_sd: Path, photo: Path) -> None:
    from img2img.models.registry import ModelEntry, ModelRegistry

    registry = ModelRegistry()
    registry.add(ModelEntry("sd3-no-t5", str(tiny_sd3), t5=False))
    engine = Engine(device="cpu", dtype="float32", backend="torch", registry=registry)
    request = GenerationRequest(source=str(photo), prompt=PROMPT, strength=0.6, steps=4, seed=2, model="sd3-no-t5")
    without = engine.generate(request)
    assert engine.load("sd3-no-t5").pipeline.text_encoder_3 is None
    with_t5 = engine.generate(replace(request, model=str(tiny_sd3)))
    assert without.images[0].tobytes() != with_t5.images[0].tobytes()
    with pytest.raises(InvalidArgument, match=r"^t5 should be left on for SD 1\.x models"):
        registry.add(ModelEntry("sd-no-t5", str(tiny_sd), t5=False))


def test_a_working_size_beyond_the_transformers_grid_is_refused(engine: Engine, tiny_sd3: Path) -> None:
    """The tiny transformer's grid is 96 patches of 2x2 latents: 1536 px."""
    source = Image.new("RGB", (64, 64), "teal")
    with pytest.raises(InvalidArgument, match=r"^size should be a working size of at most 1536 px a side"):
        engine.generate(GenerationRequest(source=source, prompt=PROMPT, steps=2, seed=1, model=str(tiny_sd3),
                                          size=(1600, 200)))
