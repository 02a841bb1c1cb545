"""Step caching (``cache_steps``, DeepCache): exact split of the UNet, both backends, records, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from img2img import Engine, GenerationRequest, InvalidArgument
from img2img.engine.step_cache import StepCache, deep, shallow


def _request(photo, model, **fields) -> GenerationRequest:
    return GenerationRequest(**{"source": photo, "prompt": "a red fox", "negative_prompt": "blurry", "strength": 0.8,
                                "steps": 8, "seed": 5, "model": str(model), **fields})


@pytest.mark.parametrize("model_fixture", ["tiny_sd", "tiny_sdxl"])
def test_the_shallow_branch_on_fresh_features_is_the_whole_unet(model_fixture, request) -> None:
    """The split is exact: the outer layer on this step's own deep features gives the UNet's output bit for bit,
    at a latent size that is not a multiple of the UNet's downsampling."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(request.getfixturevalue(model_fixture), subfolder="unet").eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 15, 13, generator=generator)
    inputs = {"encoder_hidden_states": torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)}
    if unet.config.addition_embed_type == "text_time":
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=generator),
                                       "time_ids": torch.randn(2, 6, generator=generator)}
    with torch.no_grad():
        whole = unet(sample, torch.tensor(500.0), return_dict=False, **inputs)[0]
        output, feature = deep(unet, sample, torch.tensor(500.0), **inputs)
        again = shallow(unet, sample, torch.tensor(500.0), feature, **inputs)
        later = shallow(unet, sample, torch.tensor(300.0), feature, **inputs)
    assert torch.equal(output, whole) and torch.equal(again, whole)
    assert feature.shape == (2, unet.config.block_out_channels[0], 15, 13)
    assert not torch.equal(later, whole)  # the timestep still acts on the outer layer

    calls = []
    cache = StepCache(unet, 3)
    cache.deep = None  # a PyTorch UNet: the functions above run it
    with torch.no_grad():
        for index in range(7):
            cache(index, sample, torch.tensor(900.0 - 100 * index), **inputs)
            calls.append(cache.full_steps)
    assert calls == [1, 1, 1, 2, 2, 2, 3]  # whole at steps 0, 3 and 6


@pytest.mark.parametrize("backend", ["torch", pytest.param("openvino", marks=pytest.mark.slow)])  # openvino: 19 s
def test_cached_steps_run_on_both_backends_reproduce_and_are_recorded(backend, tiny_sd, photo,
                                                                      monkeypatch) -> None:
    from img2img.models import ov_runtime

    compiled: list[str] = []
    own_compile = ov_runtime._Request._compile

    def counting(request, shapes):
        compiled.append(request._xml.stem)
        own_compile(request, shapes)

    monkeypatch.setattr(ov_runtime._Request, "_compile", counting)
    engine = Engine(device="cpu", dtype="float32", backend=backend)
    plain = engine.generate(_request(photo, tiny_sd))
    compiled.clear()
    cached = engine.generate(_request(photo, tiny_sd, cache_steps=3))
    if backend == "openvino":  # the deep and shallow graphs stay compiled while the run alternates between them
        assert sorted(name for name in compiled if name.startswith("unet")) == ["unet", "unet_shallow"], compiled
    again = Engine(device="cpu", dtype="float32", backend=backend).generate(_request(photo, tiny_sd, cache_steps=3))
    assert cached.images[0].tobytes() == again.images[0].tobytes()
    assert cached.images[0].tobytes() != plain.images[0].tobytes()
    assert not [note for note in cached.notes if "could not" in note]  # OpenVINO ran its own two graphs
    record = cached.record
    assert record.request.cache_steps == 3 and "Cache steps: 3" in record.to_parameters_text()
    assert "Cache steps" not in plain.record.to_parameters_text()
    assert json.loads(record.to_json())["cache_steps"] == 3
    difference = np.abs(np.asarray(cached.images[0], float) - np.asarray(plain.images[0], float))
    assert difference.mean() < 40  # an approximation of the same picture, not another one
    if backend == "openvino":  # its two graphs compute what the PyTorch functions do
        theirs = Engine(device="cpu", dtype="float32", backend="torch").generate(
            _request(photo, tiny_sd, cache_steps=3))
        assert np.abs(np.asarray(cached.images[0], float) - np.asarray(theirs.images[0], float)).max() <= 2


def test_step_caching_is_refused_where_its_skipped_blocks_matter(photo, tiny_sd) -> None:
    from img2img import ControlUnit, ImagePrompt

    with pytest.raises(InvalidArgument, match=r"^cache_steps should be 1 with ControlNet/T2I-Adapter units"):
        _request(photo, tiny_sd, cache_steps=3, control=(ControlUnit("some-controlnet", image=photo),)).validated()
    with pytest.raises(InvalidArgument, match=r"^cache_steps should be 1 with image prompts"):
        _request(photo, tiny_sd, cache_steps=2, image_prompts=(ImagePrompt(photo),)).validated()
    with pytest.raises(InvalidArgument, match=r"^cache_steps should be in \[1, 10\], but got 11$"):
        _request(photo, tiny_sd, cache_steps=11).validated()


@pytest.mark.slow  # 12 s; CI runs it with -m slow
def test_the_command_line_takes_cache_steps_and_refuses_bad_ones(photo, tiny_sd, tmp_path) -> None:
    from PIL import Image

    from test_cli import assert_one_line_error, img2img

    out = tmp_path / "out.png"
    done = img2img("run", str(photo), "a red fox", "--model", str(tiny_sd), "--steps", "4", "--cache-steps", "2",
                   "--seed", "1", "-o", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "Cache steps: 2" in Image.open(out).info["parameters"]
    refused = img2img("run", str(photo), "a red fox", "--model", str(tiny_sd), "--cache-steps", "0",
                      "-o", str(tmp_path / "no.png"))
    assert_one_line_error(refused, "--cache-steps should be in [1, 10], but got 0")
    assert not (tmp_path / "no.png").exists()


def test_a_sweep_compares_step_caching_side_by_side(photo, tiny_sd, tmp_path) -> None:
    from PIL import Image

    from test_cli import img2img

    done = img2img("sweep", str(photo), "a red fox", "--model", str(tiny_sd), "--steps", "4", "--seeds", "3",
                   "--cache-steps", "1,2", "--device", "cpu", "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "no step cache" in done.stdout and "cache every 2" in done.stdout
    cells = sorted(path for path in tmp_path.glob("*.png") if "sweep" not in path.name)
    assert len(cells) == 2 and len(list(tmp_path.glob("*-sweep.png"))) == 1
    texts = [Image.open(path).info["parameters"] for path in cells]
    assert sum("Cache steps: 2" in text for text in texts) == 1
    plain = Engine(device="cpu").generate(_request(photo, tiny_sd, steps=4, seed=3, strength=0.6, negative_prompt=""))
    assert any(Image.open(path).tobytes() == plain.images[0].tobytes() for path in cells)  # the uncached cell


@pytest.mark.slow  # 20 s (SDXL's graphs converted); CI runs it with -m slow
def test_sdxl_caches_steps_on_openvino_as_on_pytorch(tiny_sdxl, photo) -> None:
    ours = Engine(device="cpu", dtype="float32", backend="openvino").generate(_request(photo, tiny_sdxl, cache_steps=2))
    theirs = Engine(device="cpu", dtype="float32", backend="torch").generate(_request(photo, tiny_sdxl, cache_steps=2))
    assert not [note for note in ours.notes if "could not" in note]
    assert np.abs(np.asarray(ours.images[0], float) - np.asarray(theirs.images[0], float)).max() <= 2
