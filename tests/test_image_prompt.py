"""Image prompts in the engine: parity with diffusers' IP-Adapter img2img (plain and plus), weight 0, the modes,
several pictures, the record, the built-in engine's style pictures, OpenVINO's hand-over and bad input."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from img2img import Engine, GenerationRequest, ImagePrompt, InvalidArgument
from img2img.engine.image_prompt import layer_factors, parse_image_prompt
from img2img.engine.samplers import build_scheduler
from img2img.errors import SourceImageError
from tiny_ip_adapter import ENCODER_SIDE, build_tiny_ip_adapter
from tiny_models import square_photo

PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype="float32", backend="torch")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image.Image, Image.Image, Image.Image]:
    folder = tmp_path_factory.mktemp("references")
    return tuple(Image.open(square_photo(folder, name)).convert("RGB")  # type: ignore[return-value]
                 for name in ("astronaut", "coffee", "chelsea"))


def _request(model: Path, source: Image.Image, *prompts: ImagePrompt, adapter: Path | None = None,
             **extra: object) -> GenerationRequest:
    return GenerationRequest(source=source, prompt=PROMPT, negative_prompt="blurry", strength=0.7, guidance_scale=7.5,
                             steps=10, sampler="Euler", seed=1234, model=str(model), prompt_syntax="plain",
                             image_prompts=prompts, ip_adapter=str(adapter) if adapter else None, **extra)


def _pixels(engine: Engine, request: GenerationRequest) -> np.ndarray:
    return np.asarray(engine.generate(request).images[0], dtype=np.int16)


@pytest.mark.parametrize("plus", [False, True])
def test_matches_diffusers_ip_adapter_img2img(plus, engine, tiny_sd, tiny_ip_adapter, pictures, tmp_path) -> None:
    adapter = build_tiny_ip_adapter(tiny_sd, tmp_path, plus=True) if plus else tiny_ip_adapter
    source, reference = pictures[0], pictures[1]
    ours = _pixels(engine, _request(tiny_sd, source, ImagePrompt(reference), adapter=adapter))
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(
        tiny_sd, safety_checker=None, requires_safety_checker=False,
        feature_extractor=CLIPImageProcessor(size=ENCODER_SIDE, crop_size=ENCODER_SIDE))
    pipe.scheduler = build_scheduler("Euler", dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(adapter.parent), subfolder="", weight_name=adapter.name)
    reference_pixels = np.asarray(pipe(
        prompt=PROMPT, negative_prompt="blurry", image=source, ip_adapter_image=reference, strength=0.7,
        guidance_scale=7.5, num_inference_steps=10, generator=torch.Generator("cpu").manual_seed(1234)).images[0],
        dtype=np.int16)
    assert np.abs(ours - reference_pixels).max() <= 2
    plain = _pixels(engine, _request(tiny_sd, source))
    assert np.abs(ours - plain).mean() > 1, "the image prompt acts"


def test_weight_zero_modes_and_several_pictures(engine, tiny_sd, tiny_ip_adapter, pictures) -> None:
    source, coffee, cat = pictures
    plain = _pixels(engine, _request(tiny_sd, source))
    assert np.array_equal(_pixels(engine, _request(tiny_sd, source, ImagePrompt(coffee, 0.0),
                                                   adapter=tiny_ip_adapter)), plain)
    both = _pixels(engine, _request(tiny_sd, source, ImagePrompt(coffee), adapter=tiny_ip_adapter))
    style = _pixels(engine, _request(tiny_sd, source, ImagePrompt(coffee), adapter=tiny_ip_adapter,
                                     image_prompt_mode="style"))
    layout = _pixels(engine, _request(tiny_sd, source, ImagePrompt(coffee), adapter=tiny_ip_adapter,
                                      image_prompt_mode="layout"))
    for one, other in ((both, style), (both, layout), (style, layout), (style, plain), (layout, plain)):
        assert np.abs(one - other).mean() > 0.5
    half = _pixels(engine, _request(tiny_sd, source, ImagePrompt(coffee, 0.5), adapter=tiny_ip_adapter))
    assert np.abs(half - plain).mean() < np.abs(both - plain).mean(), "a lighter weight changes less"
    two = _pixels(engine, _request(tiny_sd, source, ImagePrompt(coffee), ImagePrompt(cat, 0.7),
                                   adapter=tiny_ip_adapter))
    assert np.abs(two - both).mean() > 0.5, "the second picture acts too"


def test_style_and_layout_pick_the_blocks_instantstyle_found(tiny_sd, tiny_sdxl) -> None:
    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    style = {name for name, share in layer_factors(unet, "style").items() if share}
    assert style == {f"up_blocks.0.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(3)}
    layout = {name for name, share in layer_factors(unet, "layout").items() if share}
    assert layout == {f"down_blocks.1.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(2)}
    xl = diffusers.UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet")
    style = {name.split(".transformer_blocks")[0] for name, share in layer_factors(xl, "style").items() if share}
    assert style == {"up_blocks.0.attentions.1"}, "SDXL: the middle attention of the first up block"


def test_the_record_describes_the_pictures_and_reproduces(engine, tiny_sd, tiny_ip_adapter, pictures,
                                                          tmp_path) -> None:
    source, coffee, cat = pictures
    request = _request(tiny_sd, source, ImagePrompt(coffee, 1.2), ImagePrompt(cat, 0.4), adapter=tiny_ip_adapter,
                       image_prompt_mode="style")
    result = engine.generate(request)
    entry = result.record.image_prompt
    assert entry is not None and entry["mode"] == "style" and entry["adapter"] == "ip-adapter_tiny"
    assert [item["weight"] for item in entry["images"]] == [1.2, 0.4]
    assert 'IP-Adapter: "Model: ip-adapter_tiny [' in result.record.to_parameters_text()
    again = type(result.record).from_json(result.record.to_json())
    with pytest.raises(InvalidArgument, match="image_prompts should be 2 pictures"):
        again.to_request(source)
    with pytest.raises(InvalidArgument, match="image prompt 1 with SHA-256"):
        again.to_request(source, image_prompts=[cat, coffee])
    rerun = engine.generate(replace_model(again.to_request(source, image_prompts=[coffee, cat]), tiny_sd))
    assert np.array_equal(np.asarray(rerun.images[0]), np.asarray(result.images[0]))


def replace_model(request: GenerationRequest, model: Path) -> GenerationRequest:
    from dataclasses import replace

    return replace(request, model=str(model))


def test_the_builtin_engine_takes_image_prompts_as_style_pictures(pictures) -> None:
    engine = Engine(device="cpu")
    source, coffee, cat = pictures
    base = GenerationRequest(source=source, prompt="", strength=0.8, seed=5, model="builtin")
    as_style = engine.generate(GenerationRequest(source=source, prompt="", strength=0.8, seed=5, model="builtin",
                                                 style_image=coffee))
    as_prompt = engine.generate(replace_prompts(base, ImagePrompt(coffee)))
    assert np.array_equal(np.asarray(as_style.images[0]), np.asarray(as_prompt.images[0]))
    assert as_prompt.record.image_prompt["images"][0]["weight"] == 1.0
    blend = np.asarray(engine.generate(replace_prompts(base, ImagePrompt(coffee), ImagePrompt(cat, 2.0))).images[0])
    assert np.abs(blend.astype(int) - np.asarray(as_prompt.images[0])).mean() > 1


def replace_prompts(request: GenerationRequest, *prompts: ImagePrompt) -> GenerationRequest:
    from dataclasses import replace

    return replace(request, image_prompts=prompts)


def test_bad_image_prompts_are_refused_in_one_line(engine, tiny_sd, tiny_sdxl, tiny_ip_adapter, pictures,
                                                   tmp_path) -> None:
    source, coffee, _ = pictures
    with pytest.raises(InvalidArgument, match=r"ip_adapter .*an IP-Adapter to read the image prompts"):
        engine.generate(_request(tiny_sd, source, ImagePrompt(coffee)))
    with pytest.raises(InvalidArgument, match=r"image_prompts .*at most 4 pictures.* 5"):
        engine.generate(_request(tiny_sd, source, *[ImagePrompt(coffee)] * 5, adapter=tiny_ip_adapter))
    with pytest.raises(InvalidArgument, match=r"image_prompts.weight .*\[0.0, 2.0\]"):
        engine.generate(_request(tiny_sd, source, ImagePrompt(coffee, 2.5), adapter=tiny_ip_adapter))
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(SourceImageError, match=r"image_prompts.image should be a PNG"):
        engine.generate(_request(tiny_sd, source, ImagePrompt(text), adapter=tiny_ip_adapter))
    with pytest.raises(InvalidArgument, match=r"ip_adapter .*an IP-Adapter for a model 64 wide.*a model 32 wide"):
        engine.generate(_request(tiny_sdxl, source, ImagePrompt(coffee), adapter=tiny_ip_adapter))
    with pytest.raises(InvalidArgument, match=r"ip_adapter .*another kind of file"):
        engine.generate(_request(tiny_sd, source, ImagePrompt(coffee), adapter=tiny_sd / "unet" /
                                 "diffusion_pytorch_model.safetensors"))
    with pytest.raises(InvalidArgument, match=r"ip_adapter .*used with diffusion models only"):
        Engine().generate(GenerationRequest(source=source, prompt="", model="builtin", ip_adapter="x",
                                            image_prompts=(ImagePrompt(coffee),)))


def test_the_command_lines_file_and_weight() -> None:
    assert parse_image_prompt("ref.png:0.5") == ImagePrompt(Path("ref.png"), 0.5)
    assert parse_image_prompt("ref.png") == ImagePrompt(Path("ref.png"), 1.0)
    assert parse_image_prompt("C:/art/ref.png") == ImagePrompt(Path("C:/art/ref.png"), 1.0)
    with pytest.raises(InvalidArgument, match=r"image_prompts.weight"):
        parse_image_prompt("ref.png:3")


@pytest.mark.slow  # 15 s: converts the tiny UNet's graphs; CI runs it with -m slow
def test_openvino_runs_image_prompts_in_its_own_graph(tiny_sd, tiny_ip_adapter, pictures) -> None:
    pytest.importorskip("openvino")
    source, coffee, cat = pictures
    torch_engine = Engine(device="cpu", dtype="float32", backend="torch")
    ov_engine = Engine(device="cpu", dtype="float32", backend="openvino")
    for prompts, mode in (((ImagePrompt(coffee),), "both"), ((ImagePrompt(coffee), ImagePrompt(cat, 0.6)), "style")):
        request = _request(tiny_sd, source, *prompts, adapter=tiny_ip_adapter, image_prompt_mode=mode)
        expected = _pixels(torch_engine, request)
        result = ov_engine.generate(request)
        assert not [note for note in result.notes if "PyTorch" in note], result.notes
        assert np.abs(np.asarray(result.images[0], dtype=np.int16) - expected).max() <= 2, mode
    assert ov_engine.load(str(tiny_sd)).pipeline.unet.prompts.request is not None, "the image-prompt graph ran"


@pytest.mark.slow  # 16 s, as above
def test_openvino_with_a_controlnet_too_or_a_failed_conversion_runs_pytorch(tiny_sd, tiny_ip_adapter,
                                                                           tiny_controlnet, pictures,
                                                                           monkeypatch) -> None:
    pytest.importorskip("openvino")
    from img2img import ControlUnit
    from img2img.models import ov_runtime
    from img2img.models.ov_image_prompt import ImagePromptGraph

    source, coffee, _ = pictures
    unit = ControlUnit(model=tiny_controlnet, preprocessor="canny")
    request = _request(tiny_sd, source, ImagePrompt(coffee), adapter=tiny_ip_adapter, control=(unit,))
    expected = _pixels(Engine(device="cpu", dtype="float32", backend="torch"), request)
    both = Engine(device="cpu", dtype="float32", backend="openvino").generate(request)
    assert np.abs(np.asarray(both.images[0], dtype=np.int16) - expected).max() <= 2

    def fail(self: ImagePromptGraph) -> None:
        raise ov_runtime.OpenVinoFailure("the UNet with image prompt inputs could not be converted: no")

    monkeypatch.setattr(ImagePromptGraph, "_export", fail)
    alone = _request(tiny_sd, source, ImagePrompt(coffee), adapter=tiny_ip_adapter)
    failed = Engine(device="cpu", dtype="float32", backend="openvino").generate(alone)
    assert any("could not run the UNet with image prompts" in note for note in failed.notes), failed.notes
    assert np.abs(np.asarray(failed.images[0], dtype=np.int16) - _pixels(
        Engine(device="cpu", dtype="float32", backend="torch"), alone)).max() <= 2


def test_sdxl_matches_diffusers_ip_adapter_img2img(engine, tiny_sdxl, pictures, tmp_path) -> None:
    adapter = build_tiny_ip_adapter(tiny_sdxl, tmp_path, plus=True)
    source, reference = pictures[0], pictures[1]
    request = GenerationRequest(source=source, prompt=PROMPT, strength=0.7, guidance_scale=5.0, steps=6,
                                sampler="Euler", seed=99, model=str(tiny_sdxl), prompt_syntax="plain",
                                image_prompts=(ImagePrompt(reference, 0.7),), ip_adapter=str(adapter))
    ours = _pixels(engine, request)
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_sdxl, feature_extractor=CLIPImageProcessor(size=ENCODER_SIDE, crop_size=ENCODER_SIDE))
    pipe.scheduler = build_scheduler("Euler", dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(adapter.parent), subfolder="", weight_name=adapter.name)
    pipe.set_ip_adapter_scale(0.7)
    expected = np.asarray(pipe(prompt=PROMPT, image=source, ip_adapter_image=reference, strength=0.7,
                               guidance_scale=5.0, num_inference_steps=6,
                               generator=torch.Generator("cpu").manual_seed(99)).images[0], dtype=np.int16)
    assert np.abs(ours - expected).max() <= 2


def test_the_adapter_and_its_encoder_count_in_the_memory_estimate(tiny_sd, tiny_ip_adapter, pictures,
                                                                   tmp_path) -> None:
    import shutil

    folder = tmp_path / "big-ip"
    shutil.copytree(tiny_ip_adapter.parent, folder)
    with (folder / "image_encoder" / "model.safetensors").open("r+b") as weights:
        weights.truncate(3 * 10**9)  # sparse: as large as ViT-bigG on disk, and never read
    engine = Engine(device="cpu", dtype="float32", backend="torch", max_memory="3GB")
    source, coffee, _ = pictures
    engine.generate(_request(tiny_sd, source))  # fits without the image prompt
    with pytest.raises(InvalidArgument, match=r"fits the memory budget of 3\.0 GB .*with tiny-sd and an IP-Adapter"):
        engine.generate(_request(tiny_sd, source, ImagePrompt(coffee), adapter=folder / tiny_ip_adapter.name))
