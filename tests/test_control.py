"""ControlNet units in the engine: parity with diffusers' ControlNet img2img pipeline, weight 0, the step window,
several units, and bad units."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from img2img import ControlUnit, Engine, GenerationRequest, InvalidArgument
from img2img.engine.samplers import build_scheduler
from tiny_models import square_photo

PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype="float32", backend="torch")


@pytest.fixture(scope="module")
def controlnet(tiny_controlnet: Path) -> Path:
    return tiny_controlnet


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Image.Image:
    photo = Image.open(square_photo(tmp_path_factory.mktemp("edges"), "coffee")).convert("L")
    return photo.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 40 else 0).convert("RGB")


def _ours(engine: Engine, model: Path, source: Image.Image, *units: ControlUnit, strength: float = 0.7) -> np.ndarray:
    result = engine.generate(GenerationRequest(
        source=source, prompt=PROMPT, negative_prompt="blurry", strength=strength, guidance_scale=7.5, steps=10,
        sampler="Euler", seed=1234, model=str(model), prompt_syntax="plain", control=units))
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.mark.parametrize("mode", ["balanced", "control"])
def test_matches_diffusers_controlnet_img2img(mode, engine, tiny_sd, controlnet, edges, tmp_path) -> None:
    source = Image.open(square_photo(tmp_path)).convert("RGB")
    unit = ControlUnit(model=controlnet, image=edges, mode=mode)
    ours = _ours(engine, tiny_sd, source, unit)
    pipe = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        tiny_sd, controlnet=diffusers.ControlNetModel.from_pretrained(controlnet), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = build_scheduler("Euler", dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    reference = np.asarray(pipe(prompt=PROMPT, negative_prompt="blurry", image=source, control_image=edges,
                                strength=0.7, guidance_scale=7.5, num_inference_steps=10, guess_mode=mode == "control",
                                controlnet_conditioning_scale=1.0,  # its default is 0.8
                                generator=torch.Generator("cpu").manual_seed(1234)).images[0], dtype=np.int16)
    assert np.abs(ours - reference).max() <= 2
    plain = _ours(engine, tiny_sd, source)
    assert np.abs(ours - plain).mean() > 1, "the ControlNet acts"


def test_weight_zero_and_an_empty_window_are_plain_img2img(engine, tiny_sd, controlnet, edges, tmp_path) -> None:
    source = Image.open(square_photo(tmp_path)).convert("RGB")
    plain = _ours(engine, tiny_sd, source)
    assert np.array_equal(_ours(engine, tiny_sd, source, ControlUnit(model=controlnet, image=edges, weight=0)), plain)
    late = _ours(engine, tiny_sd, source, ControlUnit(model=controlnet, image=edges, start=0.5))
    assert not np.array_equal(late, plain)
    full = _ours(engine, tiny_sd, source, ControlUnit(model=controlnet, image=edges))
    assert np.abs(late - plain).mean() < np.abs(full - plain).mean(), "acting on half the steps changes less"
    two = _ours(engine, tiny_sd, source, ControlUnit(model=controlnet, image=edges, weight=0.5),
                ControlUnit(model=controlnet, image=edges, weight=0.5))
    assert np.abs(two - full).max() <= 2, "two units at 0.5 on one map add up to one at 1"


def test_bad_units_are_refused_in_one_line(engine, tiny_sd, controlnet, photo) -> None:
    def run(*units: ControlUnit) -> None:
        engine.generate(GenerationRequest(source=photo, prompt=PROMPT, model=str(tiny_sd), steps=2, control=units))

    with pytest.raises(InvalidArgument, match=r"control\.weight should be in \[0.0, 2.0\], but got 3"):
        run(ControlUnit(model=controlnet, weight=3))
    with pytest.raises(InvalidArgument, match=r"control\.end should be at least start \(0.8\), but got 0.2"):
        run(ControlUnit(model=controlnet, start=0.8, end=0.2))
    with pytest.raises(InvalidArgument, match="control should be at most 3 units"):
        run(*[ControlUnit(model=controlnet)] * 4)
    with pytest.raises(InvalidArgument, match=r"control\.model should be a ControlNet or a T2I-Adapter .*, but got "
                       r".*\(a \.png file, not \.safetensors\)"):
        run(ControlUnit(model=photo))
    with pytest.raises(InvalidArgument, match=r"control\.model .* but got .*\(a diffusers pipeline folder\)"):
        run(ControlUnit(model=tiny_sd))


@pytest.mark.slow  # 22 s a mode; CI runs them with -m slow
@pytest.mark.parametrize("mode", ["balanced", "control"])
def test_openvino_runs_the_controlnet_and_the_controlled_unet(mode, tiny_sd, controlnet, edges, tmp_path) -> None:
    pytest.importorskip("openvino")
    source = Image.open(square_photo(tmp_path)).convert("RGB")
    request = GenerationRequest(source=source, prompt=PROMPT, strength=0.7, steps=4, seed=2, model=str(tiny_sd),
                                control=(ControlUnit(model=controlnet, image=edges, weight=0.7, mode=mode),))
    reference = Engine(device="cpu", dtype="float32", backend="torch").generate(request)
    engine = Engine(device="cpu", dtype="float32", backend="openvino")
    result = engine.generate(request)
    assert result.notes == reference.notes, "no component fell back to PyTorch"
    loaded = engine.load(str(tiny_sd)).pipeline
    assert loaded.unet.control.request is not None, "the UNet graph that takes residuals ran"
    from img2img.models.paths import cache_dir

    assert list((cache_dir() / "openvino" / "controlnets").glob("*/controlnet.xml")), "the ControlNet ran as IR"
    difference = np.abs(np.asarray(result.images[0], dtype=int) - np.asarray(reference.images[0], dtype=int))
    assert difference.max() <= 2
    assert result.record.conditions[0]["kind"] == "controlnet" and result.record.conditions[0]["weight"] == 0.7
    plain = engine.generate(replace_control(request, ()))  # the plain graph again, after the controlled one
    expected = Engine(device="cpu", dtype="float32", backend="torch").generate(replace_control(request, ()))
    assert np.abs(np.asarray(plain.images[0], dtype=int) - np.asarray(expected.images[0], dtype=int)).max() <= 2


def replace_control(request: GenerationRequest, units: tuple[ControlUnit, ...]) -> GenerationRequest:
    from dataclasses import replace

    return replace(request, control=units)


def test_a_unit_makes_its_map_with_a_preprocessor(engine, tiny_sd, controlnet, tmp_path) -> None:
    source = Image.open(square_photo(tmp_path)).convert("RGB")
    raw = _ours(engine, tiny_sd, source, ControlUnit(model=controlnet))  # the photo itself as the map
    canny = engine.generate(GenerationRequest(
        source=source, prompt=PROMPT, negative_prompt="blurry", strength=0.7, guidance_scale=7.5, steps=10,
        sampler="Euler", seed=1234, model=str(tiny_sd), prompt_syntax="plain",
        control=(ControlUnit(model=controlnet, preprocessor="canny"),)))
    assert canny.record.conditions[0]["preprocessor"] == "canny"
    assert np.abs(np.asarray(canny.images[0], dtype=np.int16) - raw).mean() > 1


def test_only_masked_inpainting_gives_the_unit_the_maps_part_in_the_box(engine, tiny_sd, controlnet, photo,
                                                                         monkeypatch) -> None:
    from img2img import Inpaint
    from img2img.models.families import Family

    monkeypatch.setattr(Family, "native_side", property(lambda _family: 64))  # the tiny models' own size

    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (8, 8, 24, 24))
    fields = {"source": photo, "prompt": PROMPT, "strength": 0.8, "steps": 4, "seed": 3, "model": str(tiny_sd),
              "inpaint": Inpaint(mask=mask, inpaint_area="masked", masked_padding=4, mask_blur=0)}
    left = Image.new("RGB", (64, 48), "black")
    left.paste((255, 255, 255), (0, 0, 32, 48))  # white over the box, black elsewhere
    right = Image.new("RGB", (64, 48), "white")
    right.paste((0, 0, 0), (0, 0, 32, 48))  # the opposite: black over the box
    white = Image.new("RGB", (64, 48), "white")
    runs = [np.asarray(engine.generate(GenerationRequest(**fields, control=(ControlUnit(model=controlnet, image=m),)))
                       .images[0], dtype=int) for m in (left, white, right)]
    assert np.array_equal(runs[0], runs[1]), "only the map's part inside the painted box counts"
    assert not np.array_equal(runs[2], runs[1])


def test_the_inpaint_preprocessor_marks_the_area_to_paint(engine, tiny_sd, controlnet, tmp_path, monkeypatch) -> None:
    from img2img import Inpaint
    from img2img.engine.control import ControlConditioner

    maps = []
    begin = ControlConditioner.begin

    def spy(self, started):  # type: ignore[no-untyped-def]
        bound, start = begin(self, started)
        maps.append(bound.cond)
        return bound, start

    monkeypatch.setattr(ControlConditioner, "begin", spy)
    source = Image.open(square_photo(tmp_path)).convert("RGB")
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (0, 0, 32, 64))  # the left half is painted
    fields = {"source": source, "prompt": PROMPT, "strength": 0.8, "steps": 3, "seed": 4, "model": str(tiny_sd),
              "inpaint": Inpaint(mask=mask, mask_blur=0)}
    marked = engine.generate(GenerationRequest(**fields, control=(ControlUnit(model=controlnet,
                                                                              preprocessor="inpaint"),)))
    cond = maps[-1][0]
    assert bool((cond[:, :, :32] == -1).all()) and bool((cond[:, :, 32:] >= 0).all())
    expected = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255).permute(2, 0, 1)[:, :, 32:]
    assert torch.allclose(cond[:, :, 32:], expected)
    plain = engine.generate(GenerationRequest(**fields, control=(ControlUnit(model=controlnet),)))
    assert not np.array_equal(np.asarray(marked.images[0]), np.asarray(plain.images[0]))
    with pytest.raises(InvalidArgument, match="inpaint should be a mask for the control unit's inpaint preprocessor"):
        engine.generate(GenerationRequest(source=source, prompt=PROMPT, model=str(tiny_sd), steps=2,
                                          control=(ControlUnit(model=controlnet, preprocessor="inpaint"),)))


def test_two_units_match_diffusers_multi_controlnet(engine, tiny_sd, controlnet, edges, tmp_path) -> None:
    from tiny_control import build_tiny_controlnet

    other = build_tiny_controlnet(tiny_sd, tmp_path / "other-controlnet", seed=7)
    source = Image.open(square_photo(tmp_path)).convert("RGB")
    soft = edges.filter(ImageFilter.GaussianBlur(2))
    ours = _ours(engine, tiny_sd, source, ControlUnit(model=controlnet, image=edges, weight=0.8),
                 ControlUnit(model=other, image=soft, weight=0.5))
    pipe = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        tiny_sd, controlnet=[diffusers.ControlNetModel.from_pretrained(path) for path in (controlnet, other)],
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = build_scheduler("Euler", dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    reference = np.asarray(pipe(prompt=PROMPT, negative_prompt="blurry", image=source, control_image=[edges, soft],
                                strength=0.7, guidance_scale=7.5, num_inference_steps=10,
                                controlnet_conditioning_scale=[0.8, 0.5],
                                generator=torch.Generator("cpu").manual_seed(1234)).images[0], dtype=np.int16)
    assert np.abs(ours - reference).max() <= 2


def test_the_controlnets_weights_count_in_the_memory_estimate(tiny_sd, controlnet, photo, tmp_path) -> None:
    import shutil

    big = tmp_path / "big-controlnet"
    shutil.copytree(controlnet, big)
    with (big / "diffusion_pytorch_model.safetensors").open("r+b") as weights:
        weights.truncate(3 * 10**9)  # sparse: as large as an SDXL ControlNet on disk, and never read
    engine = Engine(device="cpu", dtype="float32", backend="torch", max_memory="3GB")
    request = GenerationRequest(source=photo, prompt=PROMPT, steps=2, model=str(tiny_sd))
    engine.generate(request)  # fits without the unit
    with pytest.raises(InvalidArgument, match=r"fits the memory budget of 3\.0 GB .*with tiny-sd and 1 control unit"):
        engine.generate(replace_control(request, (ControlUnit(model=big),)))


def test_a_unit_ending_early_runs_in_bfloat16(tiny_sd, controlnet, edges, photo) -> None:
    engine = Engine(device="cpu", dtype="bfloat16", backend="torch")  # the zeros after its window match the UNet's
    result = engine.generate(GenerationRequest(source=photo, prompt=PROMPT, steps=4, seed=1, model=str(tiny_sd),
                                               control=(ControlUnit(model=controlnet, image=edges, end=0.5),)))
    assert result.record.dtype == "bfloat16" and result.record.conditions[0]["end"] == 0.5


@pytest.mark.slow
def test_a_controlnet_that_does_not_convert_runs_with_pytorch_and_says_so(tiny_sd, controlnet, edges, photo,
                                                                          monkeypatch) -> None:
    pytest.importorskip("openvino")
    from img2img.models import ov_control, ov_graphs

    def fail(*_args: object) -> None:
        raise RuntimeError("unsupported operation in the traced graph")

    monkeypatch.setattr(ov_control, "convert", fail)  # the ControlNet's own graph
    monkeypatch.setattr(ov_graphs, "convert", fail)  # the UNet's graph with its inputs
    request = GenerationRequest(source=photo, prompt=PROMPT, steps=3, seed=2, model=str(tiny_sd),
                                control=(ControlUnit(model=controlnet, image=edges),))
    result = Engine(device="cpu", dtype="float32", backend="openvino").generate(request)
    reference = Engine(device="cpu", dtype="float32", backend="torch").generate(request)
    assert any("ControlNet (it could not be converted: unsupported operation" in note for note in result.notes)
    assert any("UNet with ControlNet inputs could not be converted" in note for note in result.notes)
    difference = np.abs(np.asarray(result.images[0], dtype=int) - np.asarray(reference.images[0], dtype=int))
    assert difference.max() <= 2
