"""The Engine end to end on tiny models: strength contract, steps modes, seeds, samplers, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2img import Engine, GenerationRequest, InvalidArgument, sampler_names
from img2img.engine.strength import plan_steps


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu")


def _request(source: Path, model: Path, **fields) -> GenerationRequest:
    defaults = {"prompt": "a watercolor painting", "strength": 0.5, "steps": 10, "seed": 7}
    return GenerationRequest(source=source, model=str(model), **{**defaults, **fields})


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_strength_zero_returns_the_source_unchanged(engine, tiny_sd, photo) -> None:
    result = engine.generate(_request(photo, tiny_sd, strength=0.0))
    assert result.images[0].tobytes() == Image.open(photo).convert("RGB").tobytes()
    assert result.record.steps_run == 0
    assert result.record.start_sigma == 0.0


def test_tiny_strength_runs_one_step(engine, tiny_sd, photo) -> None:
    result = engine.generate(_request(photo, tiny_sd, strength=0.001, steps=25))
    assert result.record.steps_run == 1
    assert 0 < result.record.start_sigma < 0.2


@pytest.mark.parametrize(("steps", "strength", "expected"), [(10, 0.5, 5), (25, 0.6, 15), (20, 0.99, 19)])
def test_diffusers_mode_runs_the_last_steps_times_strength(engine, tiny_sd, photo, steps, strength, expected) -> None:
    result = engine.generate(_request(photo, tiny_sd, strength=strength, steps=steps))
    assert result.record.steps_run == expected


def test_exact_mode_runs_exactly_steps(engine, tiny_sd, photo) -> None:
    diffusers_mode = engine.generate(_request(photo, tiny_sd, strength=0.3, steps=10)).record
    exact = engine.generate(_request(photo, tiny_sd, strength=0.3, steps=10, steps_mode="exact")).record
    assert (diffusers_mode.steps_run, exact.steps_run) == (3, 10)
    # Both start in the noise regime of strength 0.3; their schedules are discretised differently.
    assert 0.5 < exact.start_sigma / diffusers_mode.start_sigma < 2


def test_start_sigma_grows_with_strength(engine, tiny_sd, photo) -> None:
    sigmas = [engine.generate(_request(photo, tiny_sd, strength=s)).record.start_sigma for s in (0.2, 0.5, 0.8)]
    assert sigmas == sorted(sigmas) and sigmas[0] < sigmas[-1]


def test_strength_one_is_text_to_image_with_no_trace_of_the_source(engine, tiny_sd, photo, other_photo) -> None:
    first = engine.generate(_request(photo, tiny_sd, strength=1.0)).images[0]
    second = engine.generate(_request(other_photo, tiny_sd, strength=1.0)).images[0]
    assert first.tobytes() == second.tobytes()
    assert engine.generate(_request(photo, tiny_sd, strength=1.0)).record.steps_run == 10


def test_strength_below_one_keeps_the_source(engine, tiny_sd, photo, other_photo) -> None:
    first = engine.generate(_request(photo, tiny_sd, strength=0.5)).images[0]
    second = engine.generate(_request(other_photo, tiny_sd, strength=0.5)).images[0]
    assert first.tobytes() != second.tobytes()


def test_plan_matches_diffusers_get_timesteps() -> None:
    for steps in (1, 2, 7, 20, 50):
        for strength in (0.01, 0.25, 0.5, 0.63, 0.99):
            init = min(int(steps * strength), steps)
            plan = plan_steps(steps, strength, "diffusers")
            assert plan.start_index == max(steps - max(init, 1), 0)
            assert plan.steps_to_run == max(init, 1)


def test_same_inputs_same_bytes(engine, tiny_sd, photo) -> None:
    first = engine.generate(_request(photo, tiny_sd, sampler="Euler a"))
    second = Engine(device="cpu").generate(_request(photo, tiny_sd, sampler="Euler a"))
    assert first.images[0].tobytes() == second.images[0].tobytes()
    assert first.record == second.record


def test_batch_uses_consecutive_seeds_each_reproducible_alone(engine, tiny_sd, photo) -> None:
    batch = engine.generate(_request(photo, tiny_sd, seed=100, num_images=3, sampler="Euler a"))
    assert batch.seeds == [100, 101, 102]
    alone = engine.generate(_request(photo, tiny_sd, seed=102, sampler="Euler a"))
    assert np.abs(_pixels(batch.images[2]) - _pixels(alone.images[0])).max() <= 1
    assert batch.images[0].tobytes() != batch.images[1].tobytes()


@pytest.mark.parametrize("seed", [None, -1])
def test_random_seed_is_reported_and_reproduces(engine, tiny_sd, photo, seed) -> None:
    result = engine.generate(_request(photo, tiny_sd, seed=seed))
    again = engine.generate(_request(photo, tiny_sd, seed=result.record.seed))
    assert 0 <= result.record.seed < 2**32
    assert result.images[0].tobytes() == again.images[0].tobytes()


@pytest.mark.parametrize("sampler", sampler_names())
def test_every_sampler_runs(engine, tiny_sd, photo, sampler) -> None:
    result = engine.generate(_request(photo, tiny_sd, sampler=sampler, steps=4, strength=0.75))
    pixels = _pixels(result.images[0])
    assert result.record.sampler == sampler
    assert result.images[0].size == (64, 48)
    assert np.isfinite(pixels).all() and pixels.std() > 1


def test_sdxl_runs_through_the_engine(engine, tiny_sdxl, photo) -> None:
    result = engine.generate(_request(photo, tiny_sdxl, num_images=2))
    assert result.record.model_family == "SDXL"
    assert [image.size for image in result.images] == [(64, 48), (64, 48)]


def test_guidance_at_most_one_skips_the_unconditional_pass(engine, tiny_sd, photo, monkeypatch) -> None:
    model = engine.load(str(tiny_sd))
    batch_sizes = []
    original = model.pipeline.unet.forward

    def spy(sample, *args, **kwargs):
        batch_sizes.append(sample.shape[0])
        return original(sample, *args, **kwargs)

    monkeypatch.setattr(model.pipeline.unet, "forward", spy)
    engine.generate(_request(photo, tiny_sd, guidance_scale=1.0, steps=4))
    engine.generate(_request(photo, tiny_sd, guidance_scale=7.0, steps=4))
    assert batch_sizes == [1, 1, 2, 2]


def test_record_describes_the_run(engine, tiny_sd, photo) -> None:
    record = engine.generate(_request(photo, tiny_sd, negative_prompt="blurry", guidance_scale=5.5)).record
    assert (record.prompt, record.negative_prompt, record.guidance_scale) == ("a watercolor painting", "blurry", 5.5)
    assert (record.sampler, record.steps, record.strength, record.seed) == ("DPM++ 2M Karras", 10, 0.5, 7)
    assert (record.width, record.height, record.model, record.model_family) == (64, 48, "tiny-sd", "SD 1.x")
    assert len(record.model_hash) == len(record.source_sha256) == 64
    text = record.to_parameters_text()
    assert text.startswith("a watercolor painting\nNegative prompt: blurry\nSteps: 10, Sampler: DPM++ 2M Karras")
    assert "Denoising strength: 0.5" in text and f"Model hash: {record.model_hash[:10]}" in text


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("strength", 1.3, "strength should be in [0.0, 1.0], but got 1.3"),
        ("strength", float("nan"), "strength should be a number"),
        ("steps", 0, "steps should be in [1, 150], but got 0"),
        ("steps", True, "steps should be a whole number"),
        ("guidance_scale", -1, "guidance_scale should be in [0.0, 30.0]"),
        ("sampler", "Eulerish", "sampler should be one of DPM++ 2M Karras, DPM++ 2M,"),
        ("num_images", 17, "num_images should be in [1, 16]"),
        ("seed", 2**32, "seed should be in [0, 4294967295]"),
        ("steps_mode", "fast", "steps_mode should be one of diffusers, exact"),
        ("size", (100, 64), "size should be (width, height) multiples of 8"),
    ],
)
def test_bad_fields_name_themselves(photo, tiny_sd, field, value, message) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _request(photo, tiny_sd, **{field: value}).validated()
    assert message in str(caught.value)


def test_sampler_names_are_forgiving_about_case(photo, tiny_sd) -> None:
    assert _request(photo, tiny_sd, sampler="euler A").validated().sampler == "Euler a"
