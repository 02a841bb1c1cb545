"""The library's one entry point: ``Engine().generate(request)``.

An Engine holds the loaded models (reused across calls) and the device policy; it resolves the request's
model, fills the family's defaults, runs the diffusion stages and returns the images with their records.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from img2img.engine.diffusion import DiffusionJob, run_diffusion
from img2img.engine.request import DEFAULT_MAX_IMAGES, GenerationRequest
from img2img.engine.result import GenerationRecord, GenerationResult
from img2img.engine.seeds import batch_seeds, resolve_seed
from img2img.engine.sizing import fit_working_size
from img2img.imageio.source import load_source, pixels_sha256
from img2img.models.cache import ModelCache, resolve_reference
from img2img.models.detect import inspect_model
from img2img.models.device import Placement, choose_placement
from img2img.models.families import Family
from img2img.models.loading import LoadedModel, weights_sha256
from img2img.models.registry import ModelRegistry

# on_progress(image_index, step_done, steps_total)
ProgressCallback = Callable[[int, int, int], None]
T = TypeVar("T")


class Engine:
    """Runs generation requests; keep one and reuse it so that models stay loaded between calls.

    Args:
        device: "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda", "cuda:N" or "mps".
        dtype: "auto" (fp16 on GPUs, fp32 on the CPU), "float32", "float16" or "bfloat16".
        registry: the model registry; defaults to the user's (``img2img models ...``).
        max_images: the most images one request may ask for.
        allow_pickle: allow pickled checkpoints given by path (they can run code when loaded).
        cache_capacity: how many models stay loaded at once.
    """

    def __init__(
        self, *, device: str = "auto", dtype: str = "auto", registry: ModelRegistry | None = None,
        max_images: int = DEFAULT_MAX_IMAGES, allow_pickle: bool = False, cache_capacity: int = 1,
    ) -> None:
        self.placement: Placement = choose_placement(device, dtype)
        self.registry = registry or ModelRegistry()
        self.max_images = max_images
        self.allow_pickle = allow_pickle
        self._models = ModelCache(cache_capacity)

    def load(self, model: str | None = None) -> LoadedModel:
        """Load (or reuse) a model by registry name, path or cached repo id; None is the default model."""
        entry = resolve_reference(model, self.registry, self.allow_pickle)
        return self._models.get(entry, self.placement)

    def generate(self, request: GenerationRequest, on_progress: ProgressCallback | None = None) -> GenerationResult:
        """Run ``request``; the result holds one image per seed, each at the source's size, with its record."""
        started = time.perf_counter()
        request = request.validated(self.max_images)
        source = load_source(request.source)
        seeds = batch_seeds(resolve_seed(request.seed), request.num_images)
        if request.strength == 0:
            return self._unchanged(request, source, seeds, started)

        model = self.load(request.model)
        family = model.family
        width, height = request.size or fit_working_size(*source.size, family.native_side)
        job = DiffusionJob(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            strength=request.strength,
            guidance_scale=_default(request.guidance_scale, family.default_guidance),
            steps=_default(request.steps, family.default_steps),
            sampler=_default(request.sampler, family.default_sampler),
            seeds=tuple(seeds),
            steps_mode=request.steps_mode,
        )
        working = source if source.size == (width, height) else source.resize((width, height), Image.LANCZOS)
        output = run_diffusion(model.pipeline, job, working, on_progress)
        images = [_to_source_size(array, source.size) for array in output.images]
        record = self._record(request, job, source, (width, height), model.name, family, model.sha256,
                              output.steps_run, output.start_sigma)
        records = GenerationResult.per_seed(record, seeds)
        return GenerationResult(images, records, time.perf_counter() - started, list(output.seconds))

    def _unchanged(
        self, request: GenerationRequest, source: Image.Image, seeds: list[int], started: float
    ) -> GenerationResult:
        """Strength 0: the source itself, with no model run and no VAE round trip."""
        entry = resolve_reference(request.model, self.registry, self.allow_pickle)
        files = inspect_model(Path(entry.path), name=entry.name, allow_pickle=entry.allow_pickle,
                              prediction=entry.prediction)
        job = DiffusionJob(
            prompt=request.prompt, negative_prompt=request.negative_prompt, strength=0.0,
            guidance_scale=_default(request.guidance_scale, files.family.default_guidance),
            steps=_default(request.steps, files.family.default_steps),
            sampler=_default(request.sampler, files.family.default_sampler),
            seeds=tuple(seeds), steps_mode=request.steps_mode,
        )
        record = self._record(request, job, source, source.size, files.name, files.family,
                              weights_sha256(files.path), steps_run=0, start_sigma=0.0)
        images = [source.copy() for _ in seeds]
        records = GenerationResult.per_seed(record, seeds)
        return GenerationResult(images, records, time.perf_counter() - started, [0.0] * len(seeds))

    def _record(
        self, request: GenerationRequest, job: DiffusionJob, source: Image.Image, working: tuple[int, int],
        model_name: str, family: Family, model_sha256: str, steps_run: int, start_sigma: float,
    ) -> GenerationRecord:
        return GenerationRecord(
            engine="diffusion", prompt=job.prompt, negative_prompt=job.negative_prompt, strength=job.strength,
            steps=job.steps, steps_mode=job.steps_mode, steps_run=steps_run, start_sigma=round(start_sigma, 6),
            guidance_scale=job.guidance_scale, sampler=job.sampler, seed=job.seeds[0],
            width=source.width, height=source.height, working_width=working[0], working_height=working[1],
            model=model_name, model_family=family.label, model_hash=model_sha256,
            source_sha256=pixels_sha256(source), device=self.placement.device, dtype=self.placement.dtype_name,
            versions=library_versions(),
        )


def _default(value: T | None, default: T) -> T:
    return default if value is None else value


def _to_source_size(array: np.ndarray, size: tuple[int, int]) -> Image.Image:
    image = Image.fromarray((array * 255).round().astype("uint8"))
    return image if image.size == size else image.resize(size, Image.LANCZOS)


def library_versions() -> dict[str, str]:
    names = ("img2img", "torch", "diffusers", "transformers")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions
