"""The generation pipeline for the cells of one call (a batch's seeds, or a sweep's combinations) on one source.

The facade (``img2img.api.Engine``) checks the request, plans the sizes and resolves the model; from there every
image goes through the same numbered stages, whichever engine paints it:

1. fit: the source at the working size (``Prepared.working``);
2. paint, for each cell: strength 0 is the source itself (no model run, no VAE round trip); otherwise the
   diffusion stages of ``DiffusionSession`` (encode source, prepare latents, denoise, decode) or the built-in
   style networks, once per loopback pass, with colour matching after each pass when asked;
3. finish: back to the output size, the source's transparency put back when asked;
4. record: everything that reproduces the image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from img2img.engine.conditioning import Conditioner
from img2img.engine.denoiser import denoiser
from img2img.engine.diffusion import DiffusionJob, DiffusionSession, LatentsCallback
from img2img.engine.edit import EDIT_CHANNELS, EditConditioner
from img2img.engine.image_prompt import KIND as IMAGE_PROMPT_KIND
from img2img.engine.image_prompt import Reference
from img2img.engine.inpaint import ALPHA
from img2img.engine.kontext import KontextConditioner
from img2img.engine.mask_conditioner import INPAINTING_CHANNELS, MaskConditioner
from img2img.engine.masking import MaskPlan
from img2img.engine.preview import latent_preview
from img2img.engine.prompt_syntax import LoraTag, extract_loras, parse
from img2img.engine.request import GenerationRequest
from img2img.engine.result import GenerationRecord, GenerationResult
from img2img.engine.seeds import MAX_SEED
from img2img.imageio.color import match_colors
from img2img.imageio.resize import fit_to_size
from img2img.imageio.retention import retention
from img2img.imageio.source import SourceImage
from img2img.models.embeddings import EmbeddingUse, mentions
from img2img.models.loras import LoraUse
from img2img.models.loras import activate as activate_loras
from img2img.models.loras import deactivate as deactivate_loras

if TYPE_CHECKING:
    import numpy as np
    import torch

    from img2img.models.device import Placement
    from img2img.models.families import Family
    from img2img.styles.engine import StyleEngine

# on_progress(image_index, step_done, steps_total); may raise to stop the run between two steps
ProgressCallback = Callable[[int, int, int], None]
# on_preview(image_index, small RGB preview of the latents after a step); diffusion models only
PreviewCallback = Callable[[int, Image.Image], None]
T = TypeVar("T")
STYLE_SAMPLER = "style transfer"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: Family
    sha256: str
    label: str = ""  # the family's name in records; Family.label when empty

    @property
    def family_label(self) -> str:
        return self.label or self.family.label


@dataclass(frozen=True)
class Prepared:
    """What the facade resolved for a call: the source, the sizes, the model, and where it runs."""

    source: SourceImage
    output_size: tuple[int, int]
    working: Image.Image  # stage 1: the source fitted to the working size
    model: ModelInfo
    placement: Placement
    loras: Mapping[str, tuple[LoraUse, ...]] = field(default_factory=dict)  # each prompt's LoRAs, resolved
    embeddings: tuple[EmbeddingUse, ...] = ()  # the embeddings the cells' prompts name, loaded
    vae_sha256: str | None = None  # the request's own VAE, when it has one
    mask: MaskPlan | None = None  # what an inpaint repaints; ``source`` is then its canvas

    @property
    def source_sha256(self) -> str:
        return self.mask.source_sha256 if self.mask is not None else self.source.sha256

    @property
    def paints(self) -> bool:
        """Whether anything is to be painted (an all-black mask paints nothing)."""
        return self.mask is None or not self.mask.empty


def run_diffusion(cells: list[GenerationRequest], prepared: Prepared, pipeline: Any | None,
                  on_progress: ProgressCallback | None, on_preview: PreviewCallback | None) -> GenerationResult:
    """Every cell through a diffusion model's ``pipeline`` (None when no cell has a strength above 0).

    Each cell runs with exactly its prompt's LoRAs active; afterwards the pipeline is the base model again.
    """
    session = DiffusionSession(pipeline, prepared.working) if pipeline is not None else None
    images, records, seconds = [], [], []
    try:
        for index, cell in enumerate(cells):
            started = time.perf_counter()
            report = (lambda done, total, i=index: on_progress(i, done, total)) if on_progress else None
            preview = _previewer(index, on_preview, prepared.model.family.base == "sdxl") if on_preview else None
            uses = prepared.loras.get(cell.prompt, ())
            if session is None or cell.strength == 0 or not prepared.paints:
                picture = _unpainted(cell, prepared)
                record = make_record(cell, to_job(cell, prepared.model.family, 0.0), prepared, 0, 0.0)
            else:
                activate_loras(session.pipeline, uses)  # none: the base model (a cheap check when it is already)
                picture, record = _loopback(cell, prepared, session, report, preview)
            images.append(finish(cell, picture, prepared))
            record = replace(record, retention=_kept(prepared, images[-1]))
            named = tuple(use.describe() for use in prepared.embeddings
                          if mentions(use.name, [cell.prompt, cell.negative_prompt]))
            records.append(replace(record, width=prepared.output_size[0], height=prepared.output_size[1],
                                   loras=tuple(use.describe() for use in uses), embeddings=named,
                                   vae_sha256=prepared.vae_sha256 if cell.strength > 0 else None))
            seconds.append(time.perf_counter() - started)
    finally:
        if session is not None and prepared.loras:
            deactivate_loras(session.pipeline)
    takes_image_cfg = prepared.model.family.default_image_guidance is not None
    unused = [] if takes_image_cfg or all(cell.image_cfg is None for cell in cells) else [
        f"image_cfg acts with edit models (InstructPix2Pix) only, and {prepared.model.name} is "
        f"{prepared.model.family_label}; ignored"]
    if prepared.model.family.base == "flux" and any(cell.negative_prompt for cell in cells):
        unused.append(f"negative_prompt: {prepared.model.family_label} runs one pass per step, with no "
                      "unconditional one to steer away from; ignored")
    return GenerationResult(images, records, sum(seconds), seconds,
                            [*prepared.source.notes, *_prompt_notes(cells), *unused])


def prompt_loras(cells: list[GenerationRequest]) -> dict[str, tuple[LoraTag, ...]]:
    """Each distinct prompt's LoRA tags (A1111 syntax only; a plain prompt's tags are text)."""
    found = {}
    for cell in cells:
        if cell.prompt_syntax == "a1111" and cell.strength > 0:
            tags = extract_loras(cell.prompt)[1]
            if tags:
                found[cell.prompt] = tags
    return found


def _loopback(
    cell: GenerationRequest, prepared: Prepared, session: DiffusionSession,
    report: Callable[[int, int], None] | None, preview: LatentsCallback | None = None,
) -> tuple[Image.Image, GenerationRecord]:
    """Run the cell, feeding each result back as the next source for ``loops`` passes (seed+k on pass k).

    The record describes the whole chain: the first pass's strength, seed, steps and starting sigma.
    """
    strengths = [cell.strength * cell.loop_decay**loop for loop in range(cell.loops)]
    job = to_job(cell, prepared.model.family)
    channels = denoiser(session.pipeline).config.in_channels
    if prepared.mask is not None or channels == INPAINTING_CHANNELS:
        # An inpainting model given no mask repaints the whole picture, as A1111 runs it.
        mask = MaskConditioner(prepared.mask.working_weights, prepared.mask.inpaint.masked_content, channels) \
            if prepared.mask is not None else MaskConditioner(Image.new("L", session.source.size, 255), "original",
                                                              channels)
        job = replace(job, conditions=(*job.conditions, mask))
    if channels == EDIT_CHANNELS:
        job = replace(job, conditions=(*job.conditions, edit_conditioner(cell, prepared.model.family)))
    if prepared.model.family.base == "flux" and prepared.model.family.edit:  # Kontext reads the source as tokens
        job = replace(job, conditions=(*job.conditions, KontextConditioner()))
    totals = [session.plan(replace(job, strength=strength)).steps_to_run for strength in strengths]
    reference, record, picture = session.source, None, session.source
    for loop, strength in enumerate(strengths):
        base = sum(totals[:loop])
        on_step = (lambda _i, done, _t, base=base: report(base + done, sum(totals))) if report else None
        pass_job = replace(job, strength=strength, seeds=((job.seeds[0] + loop) % (MAX_SEED + 1),))
        output = session.run(pass_job, on_step, preview)
        picture = _to_image(output.images[0])
        if cell.color_match:
            picture = match_colors(picture, reference)
        if prepared.mask is not None:
            picture = prepared.mask.keep(picture, session.source)
        if record is None:
            record = make_record(cell, job, prepared, output.steps_run, output.start_sigma)
        if loop + 1 < cell.loops:
            session = DiffusionSession(session.pipeline, picture)
    assert record is not None
    return picture, record


def edit_conditioner(cell: GenerationRequest, family: Family) -> EditConditioner:
    """An edit model's conditioner: the source beside the sample, with the request's image guidance. A mask acts
    on it as on any model; ControlNets and image prompts batch their inputs for the prompt's two guidance rows, not
    an edit model's three, and are refused."""
    from img2img.errors import InvalidArgument

    arguments = {"controlnet": "control", "t2i-adapter": "control", IMAGE_PROMPT_KIND: "image_prompts"}
    for conditioner in cell.conditions:
        if conditioner.kind != "mask":
            raise InvalidArgument(arguments.get(conditioner.kind, "conditions"), "left out with an edit model "
                                  "(InstructPix2Pix takes the source as its condition; a mask works)",
                                  conditioner.kind)
    return EditConditioner(_default(cell.image_cfg, family.default_image_guidance or 0.0))


def run_styles(cells: list[GenerationRequest], prepared: Prepared, engine: StyleEngine,
               style_image: Image.Image | None, style_weights: Callable[[GenerationRequest], dict[int, float]],
               on_progress: ProgressCallback | None, references: Sequence[Reference] = ()) -> GenerationResult:
    """Every cell through the built-in style networks: the same fitting, loops, colour match, finishing and
    records as diffusion. The style picture and the image prompts' ``references`` are the style pictures."""
    from img2img.imageio.source import pixels_sha256

    style_sha256 = pixels_sha256(style_image) if style_image else None
    images, records, seconds = [], [], []
    for index, cell in enumerate(cells):
        started = time.perf_counter()
        pictures = [*([(style_image, 1.0)] if style_image else []),
                    *((ref.picture, prompt.weight) for ref, prompt in zip(references, cell.image_prompts, strict=True))]
        recipe = engine.recipe(style_weights(cell), pictures)
        picture = _unpainted(cell, prepared)
        if cell.strength > 0 and prepared.paints:
            picture = prepared.working
            for loop in range(cell.loops):
                restyled = engine.restyle(picture, recipe, cell.strength * cell.loop_decay**loop,
                                          ((cell.seed or 0) + loop) % (MAX_SEED + 1))
                if cell.color_match:
                    restyled = match_colors(restyled, prepared.working)
                picture = prepared.mask.keep(restyled, picture) if prepared.mask is not None else restyled
                if on_progress:
                    on_progress(index, loop + 1, cell.loops)
        job = DiffusionJob(cell.prompt, "", cell.strength, 0.0, 1, STYLE_SAMPLER, (cell.seed or 0,))
        record = make_record(cell, job, prepared, int(cell.strength > 0 and prepared.paints), 0.0)
        prompts = ({"kind": IMAGE_PROMPT_KIND, "adapter": "builtin-style", "adapter_sha256": "", "mode": "style",
                    "images": [{"sha256": ref.sha256, "weight": prompt.weight}
                               for ref, prompt in zip(references, cell.image_prompts, strict=True)]},)
        images.append(finish(cell, picture, prepared))
        records.append(replace(record, engine="style", width=prepared.output_size[0],
                               height=prepared.output_size[1], style_image_sha256=style_sha256,
                               conditions=prompts if references else (), retention=_kept(prepared, images[-1])))
        seconds.append(time.perf_counter() - started)
    notes = [*prepared.source.notes, *_ignored_by_styles(cells[0])]
    return GenerationResult(images, records, sum(seconds), seconds, notes)


def _kept(prepared: Prepared, result: Image.Image) -> dict[str, float]:
    """How much of the source (an inpaint's canvas) ``result`` kept: ``img2img.imageio.retention``."""
    return retention(prepared.mask.base if prepared.mask is not None else prepared.source.rgb, result).as_dict()


def _unpainted(cell: GenerationRequest, prepared: Prepared) -> Image.Image:
    """Strength 0: the source itself, at its own size unless the request asks for another."""
    if prepared.mask is not None:
        return prepared.mask.base.copy()
    keeps_size = cell.size is None and cell.max_side is None
    return (prepared.source.rgb if keeps_size else prepared.working).copy()


def finish(cell: GenerationRequest, picture: Image.Image, prepared: Prepared) -> Image.Image:
    """Bring the result to the output size and put the source's transparency back when asked."""
    output_size, source = prepared.output_size, prepared.source
    if prepared.mask is not None:
        picture = prepared.mask.finish(picture)
    if picture.size != output_size:
        picture = picture.resize(output_size, Image.LANCZOS)
    if cell.keep_alpha and source.alpha is not None:
        alpha = source.alpha if source.alpha.size == output_size else fit_to_size(
            source.alpha, output_size, cell.resize_mode)
        picture = picture.convert("RGBA")
        picture.putalpha(alpha)
    return picture


def make_record(cell: GenerationRequest, job: DiffusionJob, prepared: Prepared, steps_run: int,
                start_sigma: float) -> GenerationRecord:
    """The record of one image (its output size is set by the caller)."""
    working, model, placement = prepared.working.size, prepared.model, prepared.placement
    inpaint = cell.inpaint
    if inpaint is not None and inpaint.mask != ALPHA:
        inpaint = replace(inpaint, mask=None)  # a picture: the record knows it by its hash
    resolved = replace(cell, source="", style_image=None, conditions=(), num_images=1, prompt=job.prompt,
                       negative_prompt=job.negative_prompt, strength=job.strength, steps=job.steps,
                       guidance_scale=job.guidance_scale, sampler=job.sampler, seed=job.seeds[0], model=model.name,
                       image_cfg=_default(cell.image_cfg, model.family.default_image_guidance)
                       if model.family.default_image_guidance is not None else None,
                       inpaint=inpaint, control=(), image_prompts=())  # units and pictures: as conditioners
    return GenerationRecord(
        request=resolved, engine="diffusion", steps_run=steps_run, start_sigma=round(start_sigma, 6),
        width=working[0], height=working[1], working_width=working[0], working_height=working[1],
        model_family=model.family_label, model_hash=model.sha256, source_sha256=prepared.source_sha256,
        device=placement.device, dtype=placement.dtype_name, quantize=placement.quantize, versions=library_versions(),
        conditions=tuple(entry for entry in (_described(c) for c in cell.conditions) if entry is not None),
        mask_sha256=prepared.mask.sha256 if prepared.mask is not None else None,
    )


def to_job(cell: GenerationRequest, family: Family, strength: float | None = None) -> DiffusionJob:
    """The cell with the family's defaults filled in (its seed is resolved by now)."""
    assert cell.seed is not None
    return DiffusionJob(
        prompt=cell.prompt, negative_prompt=cell.negative_prompt,
        strength=cell.strength if strength is None else strength,
        guidance_scale=_default(cell.guidance_scale, family.default_guidance),
        steps=_default(cell.steps, family.default_steps), sampler=_default(cell.sampler, family.default_sampler),
        seeds=(cell.seed,), steps_mode=cell.steps_mode, conditions=cell.conditions,
        prompt_syntax=cell.prompt_syntax, clip_skip=cell.clip_skip, cache_steps=cell.cache_steps,
        merge_tokens=cell.merge_tokens, merge_levels=cell.merge_levels,
    )


def library_versions() -> dict[str, str]:
    names = ("img2img", "torch", "diffusers", "transformers")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _described(conditioner: Conditioner) -> dict[str, Any] | None:
    """A conditioner's record entry: its metadata, with its kind."""
    metadata_ = conditioner.metadata()
    return None if metadata_ is None else {"kind": conditioner.kind, **metadata_}


def _prompt_notes(cells: list[GenerationRequest]) -> list[str]:
    """What A1111's syntax read differently from how it may have been meant (unmatched brackets, tags that do
    nothing), once each."""
    notes: list[str] = []
    for cell in cells:
        if cell.prompt_syntax == "a1111":
            for name in ("prompt", "negative_prompt"):
                text, tags, warnings = extract_loras(getattr(cell, name), name)
                found = [*warnings, *parse(text, name).warnings]
                if tags and name == "negative_prompt":
                    found.append("negative_prompt: LoRA tags act in the prompt only; "
                                 f"{', '.join(tag.name for tag in tags)} left out")
                notes += [note for note in found if note not in notes]
    return notes


def _ignored_by_styles(request: GenerationRequest) -> list[str]:
    """Name the options that the built-in style engine has no use for."""
    options = (("negative prompt", request.negative_prompt), ("guidance", request.guidance_scale),
               ("steps", request.steps), ("sampler", request.sampler),
               ("step caching", request.cache_steps > 1), ("token merging", request.merge_tokens > 0),
               ("image guidance", request.image_cfg is not None))
    given = [name for name, value in options if value]
    if not given:
        return []
    return [f"the built-in style engine restyles and has no {', '.join(given)}; ignored"]


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
