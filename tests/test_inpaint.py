"""Inpainting and outpainting in the engine: parity with diffusers' inpaint pipeline, exact kept pixels, only
masked, outpainting, alpha masks, the built-in engine, records and bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data

from img2img import Engine, GenerationRecord, GenerationRequest, Inpaint, InvalidArgument, SourceImageError
from img2img.engine.samplers import build_scheduler
from img2img.models.detect import inspect_model
from tiny_models import square_photo

PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype="float32", backend="torch")


@pytest.fixture(scope="module")
def square(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return square_photo(tmp_path_factory.mktemp("square"))


@pytest.fixture
def tiny_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny models' own native size: a 32-latent UNet behind a VAE that halves (64 px), not SD's 512. Photos of
    real sizes then run at a working size that tiny models paint in a blink."""
    from img2img.models.families import Family

    monkeypatch.setattr(Family, "native_side", property(lambda _family: 64))


def _box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def _photo(size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(data.coffee()).resize(size, Image.LANCZOS)


def _diffusers_inpaint(model: Path, source: Image.Image, mask: Image.Image, sampler: str, strength: float
                       ) -> np.ndarray:
    if (model / "text_encoder_2").is_dir():
        pipe = diffusers.StableDiffusionXLInpaintPipeline.from_pretrained(model)
    else:
        pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
            model, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = build_scheduler(sampler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt=PROMPT, negative_prompt="blurry", image=source, mask_image=mask, strength=strength,
                 guidance_scale=7.5, num_inference_steps=10, generator=torch.Generator("cpu").manual_seed(1234),
                 height=source.height, width=source.width, output_type="pil").images[0]
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("strength", [0.6, 1.0])
@pytest.mark.parametrize(("model_fixture", "sampler"), [
    ("tiny_sd", "Euler"), ("tiny_sd", "DPM++ 2M Karras"), ("tiny_sd_inpainting", "Euler"),
    ("tiny_sd_inpainting", "DPM++ 2M Karras"), ("tiny_sdxl", "Euler"), ("tiny_sdxl_inpainting", "Euler"),
])
def test_matches_diffusers_inpaint_pipeline_inside_the_mask(model_fixture, sampler, strength, engine, square,
                                                           request) -> None:
    """SD and SDXL, regular and inpainting UNets, against StableDiffusion(XL)InpaintPipeline."""
    model = request.getfixturevalue(model_fixture)
    source = Image.open(square).convert("RGB")
    mask = _box_mask(source.size, (16, 8, 48, 40))
    result = engine.generate(GenerationRequest(
        source=source, prompt=PROMPT, negative_prompt="blurry", strength=strength, guidance_scale=7.5, steps=10,
        sampler=sampler, seed=1234, model=str(model), prompt_syntax="plain",
        inpaint=Inpaint(mask=mask, mask_blur=0)))
    ours = np.asarray(result.images[0], dtype=np.int16)
    reference = _diffusers_inpaint(model, source, mask, sampler, strength)
    inside = np.asarray(mask) == 255
    assert np.abs(ours - reference)[inside].max() <= 2
    assert np.array_equal(ours[~inside], np.asarray(source, dtype=np.int16)[~inside]), "kept pixels are the source's"
    assert np.abs(ours[inside] - np.asarray(source, dtype=np.int16)[inside]).mean() > 10, "the mask was repainted"


def test_inpainting_models_are_recognised_from_their_unet(tiny_sd_inpainting, engine, photo) -> None:
    family = inspect_model(tiny_sd_inpainting).family
    assert family.inpainting and family.label == "SD 1.x inpainting"
    # Without a mask it repaints the whole picture, as A1111 runs an inpainting model in plain img2img.
    result = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, strength=0.7, steps=4, seed=2,
                                               model=str(tiny_sd_inpainting)))
    assert result.record.model_family == "SD 1.x inpainting" and result.record.steps_run == 2


@pytest.mark.parametrize("size", [(451, 300), (130, 97), (1024, 64)])
@pytest.mark.parametrize("area", ["whole", "masked"])
def test_pixels_outside_the_blurred_mask_are_the_sources_exactly(size, area, engine, tiny_sd, tiny_native) -> None:
    source = _photo(size)
    width, height = size
    left, top = width // 3, height // 4
    mask = _box_mask(size, (left, top, left + max(8, width // 5), top + max(8, height // 3)))
    result = engine.generate(GenerationRequest(
        source=source, prompt=PROMPT, strength=0.8, steps=4, seed=5, model=str(tiny_sd),
        inpaint=Inpaint(mask=mask, inpaint_area=area, masked_padding=8)))
    out, kept = np.asarray(result.images[0]), np.asarray(source)
    weights = np.asarray(mask.filter(ImageFilter.GaussianBlur(4)))
    assert result.images[0].size == size
    assert np.array_equal(out[weights == 0], kept[weights == 0])
    assert np.abs(out[weights >= 250].astype(int) - kept[weights >= 250]).mean() > 5


def test_only_masked_paints_the_masks_box_at_the_models_size(engine, tiny_sd, tiny_native) -> None:
    source = _photo((1200, 800))
    mask = _box_mask(source.size, (600, 300, 660, 360))  # 60x60 on a 1200x800 photo
    whole = engine.generate(GenerationRequest(source=source, prompt=PROMPT, strength=0.8, steps=2, seed=1,
                                              model=str(tiny_sd), inpaint=Inpaint(mask=mask)))
    masked = engine.generate(GenerationRequest(source=source, prompt=PROMPT, strength=0.8, steps=2, seed=1,
                                               model=str(tiny_sd),
                                               inpaint=Inpaint(mask=mask, inpaint_area="masked", masked_padding=32)))
    assert (whole.record.working_width, whole.record.working_height) == (72, 64)  # 78x52 has too few pixels
    # The box is 60 + 2 x 32 (+ the blur's reach) a side, scaled to the model's native 64x64.
    assert (masked.record.working_width, masked.record.working_height) == (64, 64)
    assert masked.images[0].size == (1200, 800)
    params = masked.record.to_parameters_text()
    assert "Inpaint area: Only masked" in params and "Masked area padding: 32" in params and "Mask blur: 4" in params


def test_an_all_white_mask_with_a_regular_model_is_plain_img2img(engine, tiny_sd, photo) -> None:
    fields = {"source": photo, "prompt": PROMPT, "strength": 0.7, "steps": 6, "seed": 9, "model": str(tiny_sd)}
    plain = engine.generate(GenerationRequest(**fields)).images[0]
    white = Image.new("L", Image.open(photo).size, 255)
    masked = engine.generate(GenerationRequest(**fields, inpaint=Inpaint(mask=white))).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(masked))


def test_all_black_mask_and_strength_zero_return_the_source(engine, tiny_sd, photo) -> None:
    source = np.asarray(Image.open(photo).convert("RGB"))
    black = Image.new("L", (64, 48), 0)
    result = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, strength=0.7, model=str(tiny_sd),
                                               inpaint=Inpaint(mask=black)))
    assert np.array_equal(np.asarray(result.images[0]), source) and result.record.steps_run == 0
    assert any("all black" in note for note in result.notes)
    white = Image.new("L", (64, 48), 255)
    zero = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, strength=0.0, model=str(tiny_sd),
                                             inpaint=Inpaint(mask=white)))
    assert np.array_equal(np.asarray(zero.images[0]), source)


@pytest.mark.parametrize("content", ["original", "fill", "noise", "nothing"])
def test_masked_content_changes_only_the_start_of_the_masked_area(content, engine, tiny_sd, photo) -> None:
    mask = _box_mask((64, 48), (16, 8, 48, 40))
    fields = {"source": photo, "prompt": PROMPT, "strength": 0.5, "steps": 6, "seed": 4, "model": str(tiny_sd)}
    original = engine.generate(GenerationRequest(**fields, inpaint=Inpaint(mask=mask))).images[0]
    other = engine.generate(GenerationRequest(**fields, inpaint=Inpaint(mask=mask, masked_content=content)))
    differs = np.abs(np.asarray(original, dtype=int) - np.asarray(other.images[0], dtype=int)).max() > 0
    assert differs == (content != "original")
    assert other.record.request.inpaint.masked_content == content


def test_outpainting_grows_the_canvas_and_keeps_the_old_picture(engine, tiny_sd, photo) -> None:
    result = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, strength=1.0, steps=3, seed=3,
                                               model=str(tiny_sd), inpaint=Inpaint(outpaint=(16, 0, 32, 8))))
    out, source = np.asarray(result.images[0]), np.asarray(Image.open(photo).convert("RGB"))
    assert result.images[0].size == (64 + 48, 48 + 8)
    # The old picture, away from the overlap band (blur 4) and the blur's reach, is untouched.
    assert np.array_equal(out[:28, 36:60], source[:28, 20:44])
    assert np.abs(out[:48, :12].astype(int) - source[:, :1]).mean() > 5, "the added area is painted"

    assert result.record.request.inpaint.outpaint == (16, 0, 32, 8)
    assert 'Outpaint: "left=16, right=32, bottom=8"' in result.record.to_parameters_text()


def test_alpha_mask_repaints_the_transparent_pixels(engine, tiny_sd, photo, tmp_path) -> None:
    rgba = Image.open(photo).convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (20, 10, 44, 34))
    rgba.putalpha(alpha)
    path = tmp_path / "holed.png"
    rgba.save(path)
    result = engine.generate(GenerationRequest(source=path, prompt=PROMPT, strength=1.0, steps=3, seed=3,
                                               model=str(tiny_sd), inpaint=Inpaint(mask="alpha", mask_blur=0)))
    out = np.asarray(result.images[0])
    kept = np.asarray(alpha) == 255
    assert np.array_equal(out[kept], np.asarray(rgba.convert("RGB"))[kept])
    assert result.record.request.inpaint.mask == "alpha" and result.record.mask_sha256 is None
    with pytest.raises(InvalidArgument, match="mask should be a source with transparent pixels"):
        engine.generate(GenerationRequest(source=photo, prompt=PROMPT, model=str(tiny_sd),
                                          inpaint=Inpaint(mask="alpha")))


def test_builtin_engine_restyles_inside_the_mask_only(photo) -> None:
    mask = _box_mask((64, 48), (16, 8, 48, 40))
    result = Engine().generate(GenerationRequest(source=photo, prompt="bold-outline", strength=1.0, seed=1,
                                                 inpaint=Inpaint(mask=mask)))
    out, source = np.asarray(result.images[0], dtype=int), np.asarray(Image.open(photo).convert("RGB"), dtype=int)
    weights = np.asarray(mask.filter(ImageFilter.GaussianBlur(4)))
    assert np.array_equal(out[weights == 0], source[weights == 0])
    assert np.abs(out[weights == 255] - source[weights == 255]).mean() > 10
    assert result.record.engine == "style" and result.record.mask_sha256


def test_records_keep_the_inpaint_and_reproduce_needs_the_mask(engine, tiny_sd, photo, tmp_path, tiny_native
                                                               ) -> None:
    mask = _box_mask((64, 48), (10, 10, 30, 30))
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)
    inpaint = Inpaint(mask=mask_path, mask_blur=2, invert_mask=True, inpaint_area="masked", masked_padding=16,
                      masked_content="fill")
    first = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, strength=0.6, steps=4, seed=8,
                                              model=str(tiny_sd), inpaint=inpaint))
    record = GenerationRecord.from_json(first.record.to_json())
    assert record == first.record and record.request.inpaint.mask is None
    assert "Mask mode: Inpaint not masked" in record.to_parameters_text()
    with pytest.raises(InvalidArgument, match="mask should be the mask picture"):
        record.to_request(photo)
    again = engine.generate(replace(record.to_request(photo, mask=mask_path), model=str(tiny_sd)))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(first.images[0]))


def test_a_mask_of_another_size_is_resized_with_a_note(engine, tiny_sd, photo) -> None:
    mask = _box_mask((128, 128), (30, 30, 90, 90))
    result = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, strength=0.6, steps=2, seed=1,
                                               model=str(tiny_sd), inpaint=Inpaint(mask=mask)))
    assert any("mask resized (another aspect ratio" in note for note in result.notes)


def test_bad_masks_are_refused_with_one_line(engine, tiny_sd, photo, tmp_path) -> None:
    not_an_image = tmp_path / "mask.png"
    not_an_image.write_text("hello")
    request = GenerationRequest(source=photo, prompt=PROMPT, model=str(tiny_sd))

    with pytest.raises(SourceImageError, match=r"^mask should be a PNG"):
        engine.generate(replace(request, inpaint=Inpaint(mask=not_an_image)))
    with pytest.raises(SourceImageError, match=r"mask should be an image file or 'alpha', but .* does not exist"):
        engine.generate(replace(request, inpaint=Inpaint(mask=tmp_path / "missing.png")))
    with pytest.raises(InvalidArgument, match=r"outpaint should be a canvas of at most 40,000 pixels"):
        Engine(device="cpu", max_source_pixels=40_000).generate(replace(request, inpaint=Inpaint(outpaint=(
            200, 200, 200, 200))))
    with pytest.raises(InvalidArgument, match=r"outpaint should be four whole numbers"):
        engine.generate(replace(request, inpaint=Inpaint(outpaint=(-1, 0, 0, 0))))
    with pytest.raises(InvalidArgument, match=r"mask_blur should be in \[0, 64\], but got 100"):
        engine.generate(replace(request, inpaint=Inpaint(mask=not_an_image, mask_blur=100)))
    with pytest.raises(InvalidArgument, match=r"inpaint_area should be one of whole, masked"):
        engine.generate(replace(request, inpaint=Inpaint(mask=not_an_image, inpaint_area="only")))
    with pytest.raises(InvalidArgument, match=r"mask should be an image, a path or 'alpha' \(or an outpaint\)"):
        engine.generate(replace(request, inpaint=Inpaint()))


@pytest.mark.slow  # 41 s; CI runs it with -m slow
@pytest.mark.parametrize("model_fixture", ["tiny_sd", "tiny_sd_inpainting"])
def test_openvino_runs_the_masked_loop_as_pytorch_does(model_fixture, photo, request) -> None:
    pytest.importorskip("openvino")
    model = request.getfixturevalue(model_fixture)
    mask = _box_mask((64, 48), (16, 8, 48, 40))
    job = GenerationRequest(source=photo, prompt=PROMPT, negative_prompt="blurry", strength=0.8, steps=6, seed=11,
                            model=str(model), inpaint=Inpaint(mask=mask, mask_blur=0))
    reference = Engine(device="cpu", dtype="float32", backend="torch").generate(job)
    exact = Engine(device="cpu", dtype="float32", backend="openvino").generate(job)
    fast = Engine(device="cpu", dtype="bfloat16", backend="openvino").generate(job)
    assert not [note for note in exact.notes if "instead" in note], "the UNet ran in OpenVINO, with no fallback"
    inside = np.asarray(mask) == 255
    ours, theirs = (np.asarray(r.images[0], float)[inside] for r in (exact, reference))
    assert np.abs(ours - theirs).max() <= 2
    mse = np.mean((np.asarray(fast.images[0], float)[inside] - theirs) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 25  # random weights amplify bf16's rounding (see test_openvino)


def test_a_single_file_inpainting_checkpoint_is_recognised_and_loads(tiny_sd_inpainting, engine, photo,
                                                                      tmp_path) -> None:
    import json

    from safetensors.torch import save_file

    from img2img import ModelEntry, ModelRegistry
    from img2img.models.families import Family
    from img2img.models.loading import prepared_config_dir
    from ldm_layout import sd1_state_dict

    pipeline = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
        tiny_sd_inpainting, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    path = tmp_path / "tiny-inpainting.safetensors"
    save_file(sd1_state_dict(pipeline), str(path))
    assert inspect_model(path).family == Family("sd1", inpainting=True)
    # The shipped SD 1.x architecture, with the inpainting UNet's 9 input channels, for full-size checkpoints.
    shipped = json.loads((prepared_config_dir(Family("sd1", inpainting=True)) / "unet" / "config.json").read_text())
    assert shipped["in_channels"] == 9 and shipped["cross_attention_dim"] == 768
    registry = ModelRegistry()
    registry.add(ModelEntry("inpainting", str(path), config=str(tiny_sd_inpainting)))
    mask = _box_mask((64, 48), (16, 8, 48, 40))
    fields = {"source": photo, "prompt": PROMPT, "strength": 0.8, "steps": 4, "seed": 6,
              "inpaint": Inpaint(mask=mask)}
    from_file = Engine(device="cpu", dtype="float32", backend="torch", registry=registry).generate(
        GenerationRequest(**fields, model="inpainting")).images[0]
    from_folder = engine.generate(GenerationRequest(**fields, model=str(tiny_sd_inpainting))).images[0]
    assert np.abs(np.asarray(from_file, dtype=int) - np.asarray(from_folder, dtype=int)).max() <= 1


def test_sweeps_and_loopback_with_a_mask(engine, tiny_sd, photo) -> None:
    from img2img import Axis

    mask = _box_mask((64, 48), (16, 8, 48, 40))
    request = GenerationRequest(source=photo, prompt=PROMPT, steps=4, seed=3, model=str(tiny_sd),
                                inpaint=Inpaint(mask=mask, mask_blur=0))
    swept = engine.sweep(request, [Axis("strength", (0.5, 0.9))])
    alone = engine.generate(replace(request, strength=0.9)).images[0]
    assert np.array_equal(np.asarray(swept.result.images[1]), np.asarray(alone))
    looped = engine.generate(replace(request, strength=0.5, loops=3, color_match=True)).images[0]
    kept = np.asarray(mask) == 0
    source = np.asarray(Image.open(photo).convert("RGB"))
    assert np.array_equal(np.asarray(looped)[kept], source[kept])
