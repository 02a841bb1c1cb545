"""Our engine against diffusers' own img2img pipelines: same components, seed and parameters, same pixels."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from img2img.engine.diffusion import DiffusionJob, run_diffusion
from img2img.engine.samplers import DEFAULT_SAMPLER, build_scheduler

TOLERANCE = 1e-4


def _reference(pipeline_class, folder: Path, sampler: str, strength: float, source: Image.Image) -> np.ndarray:
    extra = {} if pipeline_class is diffusers.StableDiffusionXLImg2ImgPipeline else {
        "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipe = pipeline_class.from_pretrained(folder, **extra)
    pipe.scheduler = build_scheduler(sampler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a red fox in the snow", negative_prompt="blurry", image=source, strength=strength,
                guidance_scale=7.5, num_inference_steps=10, generator=torch.Generator("cpu").manual_seed(1234),
                output_type="np").images


def _ours(pipeline_class, folder: Path, sampler: str, strength: float, source: Image.Image) -> np.ndarray:
    extra = {} if pipeline_class is diffusers.StableDiffusionXLImg2ImgPipeline else {
        "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipe = pipeline_class.from_pretrained(folder, **extra)
    job = DiffusionJob("a red fox in the snow", "blurry", strength, 7.5, 10, sampler, (1234,))
    return run_diffusion(pipe, job, source).images


@pytest.mark.parametrize("sampler", [DEFAULT_SAMPLER, "Euler"])
@pytest.mark.parametrize("strength", [0.3, 0.75])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_matches_diffusers_img2img(family, sampler, strength, tiny_sd, tiny_sdxl, photo) -> None:
    folder, pipeline_class = {
        "sd": (tiny_sd, diffusers.StableDiffusionImg2ImgPipeline),
        "sdxl": (tiny_sdxl, diffusers.StableDiffusionXLImg2ImgPipeline),
    }[family]
    source = Image.open(photo).convert("RGB")
    ours = _ours(pipeline_class, folder, sampler, strength, source)
    reference = _reference(pipeline_class, folder, sampler, strength, source)
    assert ours.shape == reference.shape == (1, 48, 64, 3)
    assert ours.std() > 0.01, "a constant image would match trivially"
    assert np.abs(ours - reference).max() <= TOLERANCE
