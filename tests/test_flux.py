"""FLUX.1 ([dev] and [schnell]): detection, parity with diffusers' FluxImg2ImgPipeline and FluxPipeline, the
strength contract on its size-shifted schedule, guidance as an input, and one-line refusals."""

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
from img2img.errors import InvalidArgument
from img2img.models.detect import inspect_model

PROMPT = "a painting of a cat in winter"


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-flux-dev")


@pytest.fixture(scope="module")
def tiny_schnell(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-flux-schnell", guidance=False)


def _pipeline(folder: Path) -> diffusers.FluxImg2ImgPipeline:
    pipe = diffusers.FluxImg2ImgPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_dev_and_schnell_are_detected_with_their_defaults(tiny_flux: Path, tiny_schnell: Path) -> None:
    dev, schnell = inspect_model(tiny_flux).family, inspect_model(tiny_schnell).family
    assert (dev.label, dev.defaults_text, dev.samplers) == ("FLUX.1 [dev]", "28 steps, CFG 3.5, Euler",
                                                           ["Euler", "DPM++ 2M"])
    assert (schnell.label, schnell.defaults_text) == ("FLUX.1 [schnell]", "4 steps, CFG 0, Euler")


@pytest.mark.parametrize(("model", "strength", "guidance"), [("dev", 0.6, 3.5), ("dev", 0.35, 5.0),
                                                              ("schnell", 0.75, 0.0)])
def test_img2img_matches_diffusers(tiny_flux: Path, tiny_schnell: Path, photo: Path, model: str, strength: float,
                                   guidance: float) -> None:
    folder = tiny_flux if model == "dev" else tiny_schnell
    source = Image.open(photo).convert("RGB")
    pipe = _pipeline(folder)
    reference = pipe(PROMPT, image=source, strength=strength, num_inference_steps=8, guidance_scale=guidance,
                     height=48, width=64, generator=torch.Generator("cpu").manual_seed(21), output_type="np").images
    ours = run_diffusion(pipe, DiffusionJob(PROMPT, "", strength, guidance, 8, "Euler", (21,)), source).images
    assert ours.shape == reference.shape == (1, 48, 64, 3)
    assert ours.std() > 0.01, "a constant image would match trivially"
    assert np.abs(ours - reference).max() <= 2 / 255


def test_strength_one_is_text_to_image_and_guidance_is_an_input(tiny_flux: Path, photo: Path) -> None:
    source = Image.open(photo).convert("RGB")
    pipe = _pipeline(tiny_flux)
    reference = diffusers.FluxPipeline.from_pipe(pipe)(
        PROMPT, height=48, width=64, num_inference_steps=5, guidance_scale=3.5,
        generator=torch.Generator("cpu").manual_seed(8), output_type="np").images
    full = run_diffusion(pipe, DiffusionJob(PROMPT, "", 1.0, 3.5, 5, "Euler", (8,)), source)
    assert np.abs(full.images - reference).max() <= 2 / 255
    assert (full.steps_run, full.start_sigma) == (5, 1.0)
    other = run_diffusion(pipe, DiffusionJob(PROMPT, "", 1.0, 3.5, 5, "Euler", (8,)), Image.new("RGB", (64, 48)))
    assert full.images.tobytes() == other.images.tobytes()
    stronger = run_diffusion(pipe, DiffusionJob(PROMPT, "", 1.0, 7.0, 5, "Euler", (8,)), source)
    assert stronger.images.tobytes() != full.images.tobytes()  # the guidance input acts, in one pass per step


def test_the_engine_runs_records_and_reproduces(tiny_flux: Path) -> None:
    engine = Engine(device="cpu")
    photo = Image.open(Path(__file__).parent.parent / "examples" / "astronaut.png").convert("RGB").resize((130, 97))
    request = GenerationRequest(source=photo, prompt=PROMPT, negative_prompt="blurry", strength=0.6, steps=4,
                                seed=5, model=str(tiny_flux))
    result = engine.generate(request)
    record = result.record
    assert result.images[0].size == (130, 97)
    assert (record.model_family, record.sampler, record.guidance_scale, record.steps_run) == (
        "FLUX.1 [dev]", "Euler", 3.5, 3)
    assert any(note.startswith("negative_prompt: FLUX.1 [dev] runs one pass per step") for note in result.notes)
    again = engine.generate(replace(record.to_request(photo), model=str(tiny_flux)))
    assert again.images[0].tobytes() == result.images[0].tobytes()
    odd = engine.generate(replace(request, size=(72, 64), negative_prompt=""))
    assert odd.images[0].size == (72, 64) and np.asarray(odd.images[0]).std() > 1
    with pytest.raises(InvalidArgument, match=r"^sampler should be one of Euler, DPM\+\+ 2M for FLUX\.1 \[dev\]"):
        engine.generate(replace(request, sampler="Heun"))
    with pytest.raises(InvalidArgument, match=r"^cache_steps should be 1 with FLUX\.1 \[dev\] models"):
        engine.generate(replace(request, cache_steps=2))


def test_kontext_reads_the_source_as_tokens_as_diffusers_does(tmp_path: Path, photo: Path) -> None:
    """Strength 1 is diffusers' FluxKontextPipeline (at the source's own size); below 1 the source is also noised
    partway."""
    from tiny_models import build_tiny_flux

    model = build_tiny_flux(tmp_path / "tiny-kontext", kontext=True)
    family = inspect_model(model).family
    assert (family.label, family.edit, family.defaults_text) == ("FLUX.1 Kontext", True, "28 steps, CFG 2.5, Euler")
    source = Image.open(photo).convert("RGB").resize((80, 64))  # our smallest working side is 64
    pipe = diffusers.FluxKontextPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(image=source, prompt="make it winter", num_inference_steps=5, guidance_scale=2.5, height=64,
                     width=80, max_area=80 * 64, _auto_resize=False, generator=torch.Generator("cpu").manual_seed(4),
                     output_type="np").images
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    request = GenerationRequest(source=source, prompt="make it winter", strength=1.0, steps=5, seed=4,
                                model=str(model))
    ours = engine.generate(request)
    assert ours.record.model_family == "FLUX.1 Kontext" and ours.record.guidance_scale == 2.5
    assert np.abs(np.asarray(ours.images[0], float) / 255 - reference[0]).max() <= 2 / 255
    other = engine.generate(replace(request, source=Image.new("RGB", (80, 64), "orange")))
    assert other.images[0].tobytes() != ours.images[0].tobytes()  # the source is read even from pure noise
    partway = engine.generate(replace(request, strength=0.5))
    assert partway.record.steps_run == 3 and partway.images[0].tobytes() != ours.images[0].tobytes()


def test_dpm_solver_runs_flux_on_its_own_shifted_sigmas(tiny_flux: Path, photo: Path) -> None:
    """DPM++ 2M on flow sigmas with [dev]'s size shift: the strength contract holds (steps, a start sigma below 1
    that grows with the strength) and it paints otherwise than Euler."""
    source = Image.open(photo).convert("RGB")
    pipe = _pipeline(tiny_flux)
    runs = {(sampler, strength): run_diffusion(pipe, DiffusionJob(PROMPT, "", strength, 3.5, 8, sampler, (3,)), source)
            for sampler in ("Euler", "DPM++ 2M") for strength in (0.4, 0.8)}
    for sampler in ("Euler", "DPM++ 2M"):
        low, high = runs[sampler, 0.4], runs[sampler, 0.8]
        assert (low.steps_run, high.steps_run) == (4, 7)  # 3.2 and 6.4, rounded up
        assert 0.0 < low.start_sigma < high.start_sigma < 1.0
    assert runs["Euler", 0.8].images.tobytes() != runs["DPM++ 2M", 0.8].images.tobytes()


def test_a_photo_size_with_a_mask_keeps_the_working_size(tiny_flux: Path) -> None:
    """451x300 works at 448x296, 37 latents high: Flux's own image processor would round it to 448x288 (16-px
    steps), so the decoded picture would not match the mask's working size."""
    from PIL import ImageDraw

    from img2img.engine.inpaint import Inpaint

    photo = Image.open(Path(__file__).parent.parent / "examples" / "astronaut.png").convert("RGB").resize((451, 300))
    mask = Image.new("L", photo.size, 0)
    ImageDraw.Draw(mask).rectangle((100, 50, 300, 200), fill=255)
    result = Engine(device="cpu").generate(GenerationRequest(source=photo, prompt=PROMPT, strength=0.7, steps=3,
                                                             seed=1, model=str(tiny_flux), inpaint=Inpaint(mask=mask)))
    record = result.record
    assert (record.working_width, record.working_height) == (448, 296) and result.images[0].size == (451, 300)
    kept, source = np.asarray(result.images[0], int), np.asarray(photo, int)
    assert np.abs(kept[260:] - source[260:]).max() == 0  # outside the mask: the photo
    assert np.abs(kept[80:180, 150:250] - source[80:180, 150:250]).mean() > 5  # inside: painted
