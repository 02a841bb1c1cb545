"""Edit models (InstructPix2Pix): detection, parity with diffusers' own pipeline, the strength contract, image
guidance in the record, and refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from img2img import Engine, GenerationRequest
from img2img.engine.diffusion import DiffusionJob, run_diffusion
from img2img.engine.edit import EditConditioner
from img2img.engine.samplers import build_scheduler
from img2img.errors import InvalidArgument, UnknownModelFormat
from img2img.imageio.metadata import read_metadata
from img2img.models.detect import inspect_model

PROMPT, NEGATIVE = "make it winter", "blurry"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu")


def _pipeline(folder: Path, sampler: str) -> diffusers.StableDiffusionInstructPix2PixPipeline:
    pipe = diffusers.StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = build_scheduler(sampler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(("sampler", "guidance", "image_guidance"),
                         [("Euler", 7.5, 1.5), ("DPM++ 2M Karras", 5.0, 2.0), ("Euler", 1.0, 1.5)])
def test_strength_one_matches_diffusers_instruct_pix2pix(tiny_sd_edit: Path, photo: Path, sampler: str,
                                                          guidance: float, image_guidance: float) -> None:
    source = Image.open(photo).convert("RGB")
    reference = _pipeline(tiny_sd_edit, sampler)(
        prompt=PROMPT, negative_prompt=NEGATIVE, image=source, num_inference_steps=8, guidance_scale=guidance,
        image_guidance_scale=image_guidance, generator=torch.Generator("cpu").manual_seed(1234),
        output_type="np").images
    job = DiffusionJob(PROMPT, NEGATIVE, 1.0, guidance, 8, sampler, (1234,),
                       conditions=(EditConditioner(image_guidance),))
    ours = run_diffusion(_pipeline(tiny_sd_edit, sampler), job, source).images
    assert ours.shape == reference.shape == (1, 48, 64, 3)
    assert ours.std() > 0.01, "a constant image would match trivially"
    assert np.abs(ours - reference).max() <= 1e-4


def test_the_source_guides_the_result(tiny_sd_edit: Path, photo: Path) -> None:
    """Image guidance changes the picture, and the source is an input: another source, another result."""
    source = Image.open(photo).convert("RGB")
    pipe = _pipeline(tiny_sd_edit, "Euler")

    def run(picture: Image.Image, image_guidance: float) -> np.ndarray:
        job = DiffusionJob(PROMPT, "", 1.0, 7.5, 4, "Euler", (7,), conditions=(EditConditioner(image_guidance),))
        return run_diffusion(pipe, job, picture).images

    plain = run(source, 1.5)
    assert np.abs(plain - run(source, 3.0)).max() > 0.01
    assert np.abs(plain - run(source.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 1.5)).max() > 0.01


def test_an_edit_model_is_detected_with_its_defaults(tiny_sd_edit: Path) -> None:
    family = inspect_model(tiny_sd_edit).family
    assert family.edit and not family.inpainting and family.label == "SD 1.x edit"
    assert family.default_image_guidance == 1.5 and family.defaults_text.endswith("image CFG 1.5")


def test_an_sdxl_edit_model_is_refused_by_name() -> None:
    from img2img.models.families import kind_from_channels

    with pytest.raises(UnknownModelFormat, match=r"SDXL one, which is not supported yet"):
        kind_from_channels(8, "sdxl", "x.safetensors")
    with pytest.raises(UnknownModelFormat, match=r"8 for an InstructPix2Pix edit model\), but x takes 5"):
        kind_from_channels(5, "sd1", "x")


def test_the_engine_records_image_guidance_and_reproduces(engine: Engine, tiny_sd_edit: Path) -> None:
    source = Image.open(Path(__file__).parent.parent / "examples" / "astronaut.png").convert("RGB").resize((130, 97))
    request = GenerationRequest(source=source, prompt=PROMPT, strength=1.0, steps=4, seed=3, model=str(tiny_sd_edit),
                                image_cfg=2.0)
    result = engine.generate(request)
    record = result.record
    assert record.request.image_cfg == 2.0 and record.model_family == "SD 1.x edit"
    assert "Image CFG scale: 2" in record.to_parameters_text()
    again = engine.generate(replace(record.to_request(source), model=str(tiny_sd_edit)))
    assert again.images[0].tobytes() == result.images[0].tobytes()
    default = engine.generate(GenerationRequest(source=source, prompt=PROMPT, strength=1.0, steps=4, seed=3,
                                                model=str(tiny_sd_edit)))
    assert default.record.request.image_cfg == 1.5
    assert default.images[0].tobytes() != result.images[0].tobytes()
    assert json.loads(default.record.to_json())["image_cfg"] == 1.5


def test_strength_keeps_the_source_as_for_any_model(engine: Engine, tmp_path: Path) -> None:
    """Below 1 the source's latents are noised partway (a VAE that passes the picture through shows it)."""
    from tiny_models import build_tiny_sd_clear

    model = build_tiny_sd_clear(tmp_path / "tiny-edit-clear", edit=True)
    source = Image.open(Path(__file__).parent.parent / "examples" / "astronaut.png").convert("RGB").resize((130, 97))
    common = {"source": source, "prompt": PROMPT, "steps": 10, "seed": 3, "model": str(model)}
    untouched = engine.generate(GenerationRequest(strength=0.0, **common))
    assert untouched.images[0].tobytes() == source.resize(untouched.images[0].size).tobytes()
    light = engine.generate(GenerationRequest(strength=0.3, **common)).record
    full = engine.generate(GenerationRequest(strength=1.0, **common)).record
    assert light.steps_run == 3 and full.steps_run == 10
    assert light.retention["structure"] > full.retention["structure"]


def test_image_cfg_elsewhere_is_noted_and_conditions_are_refused(engine: Engine, tiny_sd: Path,
                                                                  tiny_sd_edit: Path, tiny_controlnet: Path) -> None:
    source = Image.new("RGB", (64, 48), "teal")
    plain = engine.generate(GenerationRequest(source=source, prompt="x", steps=2, seed=1, model=str(tiny_sd),
                                              image_cfg=2.0))
    assert any("image_cfg acts with edit models (InstructPix2Pix) only" in note for note in plain.notes)
    assert plain.record.request.image_cfg is None and "Image CFG" not in plain.record.to_parameters_text()
    builtin = engine.generate(GenerationRequest(source=source, prompt="pastel-gold", image_cfg=2.0))
    assert any("image guidance" in note for note in builtin.notes)

    from img2img.engine.control import ControlUnit

    unit = ControlUnit(model=tiny_controlnet, image=source)
    with pytest.raises(InvalidArgument, match=r"^control should be left out with an edit model"):
        engine.generate(GenerationRequest(source=source, prompt=PROMPT, steps=2, seed=1, model=str(tiny_sd_edit),
                                          control=(unit,)))


def test_a_single_file_edit_checkpoint_is_recognised_and_loads(tiny_sd_edit: Path, photo: Path, tmp_path: Path
                                                              ) -> None:
    from safetensors.torch import save_file

    from img2img import ModelEntry, ModelRegistry
    from img2img.models.families import Family
    from img2img.models.loading import prepared_config_dir
    from ldm_layout import sd1_state_dict

    path = tmp_path / "tiny-edit.safetensors"
    save_file(sd1_state_dict(_pipeline(tiny_sd_edit, "Euler")), str(path))
    assert inspect_model(path).family == Family("sd1", edit=True)
    # The shipped SD 1.x architecture with the edit UNet's 8 input channels, for full-size checkpoints.
    shipped = json.loads((prepared_config_dir(Family("sd1", edit=True)) / "unet" / "config.json").read_text())
    assert shipped["in_channels"] == 8 and shipped["cross_attention_dim"] == 768
    registry = ModelRegistry()
    registry.add(ModelEntry("edit", str(path), config=str(tiny_sd_edit)))
    fields = {"source": photo, "prompt": PROMPT, "strength": 1.0, "steps": 4, "seed": 6}
    from_file = Engine(device="cpu", dtype="float32", backend="torch", registry=registry).generate(
        GenerationRequest(**fields, model="edit")).images[0]
    from_folder = Engine(device="cpu", dtype="float32", backend="torch").generate(
        GenerationRequest(**fields, model=str(tiny_sd_edit))).images[0]
    assert np.abs(np.asarray(from_file, dtype=int) - np.asarray(from_folder, dtype=int)).max() <= 1


@pytest.mark.slow  # 8 s (the tiny model converted); CI runs it with -m slow
def test_openvino_runs_an_edit_model_with_three_guidance_rows(tiny_sd_edit: Path, photo: Path) -> None:
    pytest.importorskip("openvino")
    from img2img.models.ov_unet import OpenVinoUNet

    request = GenerationRequest(source=photo, prompt=PROMPT, strength=0.8, steps=4, seed=6, model=str(tiny_sd_edit))
    reference = Engine(device="cpu", dtype="float32", backend="torch").generate(request).images[0]
    engine = Engine(device="cpu", dtype="float32", backend="openvino")
    assert type(engine.load(str(tiny_sd_edit)).pipeline.unet) is OpenVinoUNet
    result = engine.generate(request)
    assert not any("PyTorch" in note for note in result.notes), result.notes  # no fallback
    assert np.abs(np.asarray(result.images[0], float) - np.asarray(reference, float)).max() <= 2


@pytest.mark.slow  # 17 s; CI runs it with -m slow
def test_the_cli_takes_image_cfg_and_lists_the_family(tiny_sd_edit: Path, photo: Path, tmp_path: Path) -> None:
    from test_cli import assert_one_line_error, img2img

    out = tmp_path / "winter.png"
    ran = img2img("run", str(photo), PROMPT, "--model", str(tiny_sd_edit), "--strength", "1", "--steps", "2",
                  "--image-cfg", "2.5", "--seed", "4", "-o", str(out))
    assert ran.returncode == 0, ran.stderr
    assert "cfg 7, image cfg 2.5," in " ".join((ran.stdout + ran.stderr).split()), ran.stdout  # the summary
    info = img2img("info", str(out))
    assert info.returncode == 0 and "Image CFG scale: 2.5" in info.stdout, info.stdout
    assert img2img("models", "add", "pix", str(tiny_sd_edit)).returncode == 0
    listed = img2img("models", "list")
    assert "SD 1.x edit (25 steps, CFG 7, DPM++ 2M Karras, image CFG 1.5)" in listed.stdout, listed.stdout
    assert_one_line_error(img2img("run", str(photo), PROMPT, "--model", "pix", "--image-cfg", "-1"), "--image-cfg",
                          "[0.0, 30.0]")
    swept = img2img("sweep", str(photo), PROMPT, "--model", "pix", "--strength", "1", "--steps", "2",
                    "--image-cfg", "1,2", "--seeds", "4", "-o", str(tmp_path / "sweep"))
    assert swept.returncode == 0, swept.stderr
    records = [read_metadata(tmp_path / "sweep" / f"0000{n}-4.png").record or "{}" for n in (1, 2)]
    assert [json.loads(record)["image_cfg"] for record in records] == [1.0, 2.0]


def test_fast_modes_run_with_an_edit_model(tiny_sd_edit: Path, photo: Path) -> None:
    """Step caching and token merging take the edit UNet's eight channels and three guidance rows."""
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    common = {"source": photo, "prompt": PROMPT, "strength": 1.0, "steps": 4, "seed": 6, "model": str(tiny_sd_edit)}
    plain = engine.generate(GenerationRequest(**common)).images[0]
    for mode in ({"cache_steps": 2}, {"merge_tokens": 0.5}):
        fast = engine.generate(GenerationRequest(**common, **mode)).images[0]
        difference = np.abs(np.asarray(fast, float) - np.asarray(plain, float))
        assert fast.size == plain.size and difference.mean() < 40, mode
