"""The Engine's methods for what conditioners bring to a run: control units (their models found and their maps
made before any model loads, then loaded and fitted per cell), image prompts (their pictures read, their IP-Adapter
found and loaded for the model's UNet), the preprocessors and the describers (captioning and CLIP models).

``ConditionerParts`` is a mixin of ``img2img.api.Engine``: it uses the engine's registry, part cache, placement
and limits, and keeps the facade's own module short.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from img2img.engine.control import AdapterConditioner, ControlConditioner, ControlUnit, UnitConditioner
from img2img.engine.describe import Description
from img2img.engine.image_prompt import ImagePromptConditioner, Reference, image_tokens
from img2img.engine.preprocessors import PREPROCESSORS, preprocess
from img2img.engine.request import GenerationRequest
from img2img.errors import InvalidArgument
from img2img.imageio.resize import fit_to_size
from img2img.imageio.source import SourceImage, read_source
from img2img.models import control_models, ip_adapters
from img2img.models.estimators import find_depth, load_depth
from img2img.models.loading import LoadedModel, weights_sha256

if TYPE_CHECKING:
    from img2img.engine.pipeline import Prepared
    from img2img.models.device import Placement
    from img2img.models.parts import PartCache
    from img2img.models.registry import ModelRegistry


@dataclass(frozen=True)
class ControlMap:
    """A control unit with its model found and its map made, before any model loads."""

    unit: ControlUnit
    name: str  # the model's name, as the record shows it
    path: Path
    info: control_models.ControlInfo
    picture: Image.Image  # the map at the picture's own size
    sha256: str  # of the unit's picture before its preprocessor


class ConditionerParts:
    registry: ModelRegistry
    parts: PartCache
    placement: Placement
    max_source_pixels: int
    control_paths: bool

    def preprocess(self, name: str, picture: Image.Image, threshold_a: float | None = None,
                   threshold_b: float | None = None, seed: int = 0) -> Image.Image:
        """The control map the preprocessor ``name`` makes of ``picture``; a model-based one (depth) runs the
        registered model, loaded once through the part cache."""
        chosen = PREPROCESSORS.get(name)
        model = None
        if chosen is not None and chosen.model_kind == "depth":
            path = find_depth(self.registry.addons("depth"))
            model = self.parts.get("depth", path, self.placement, load_depth)
        return preprocess(name, picture, threshold_a, threshold_b, seed, model)

    def describe(self, picture: Image.Image, style: str = "sd", change: str = "restyle", captioner: str | None = None,
                 clip: str | None = None) -> Description:
        """A prompt for ``picture`` (``img2img.engine.describe``): measured, plus a caption and CLIP's best terms
        when a captioner and a CLIP model are named or registered (None: the registered one, if any; "none": no
        model). Each is loaded once through the part cache."""
        from img2img.engine.describe import describe
        from img2img.models import captioners

        caption, ranked, used = None, None, {}
        folder = self._describer("captioner", captioner)
        if folder is not None:
            used["captioner"] = folder[0]
            caption = self.parts.get("captioner", folder[1], self.placement, captioners.load_captioner).caption(
                picture)
        folder = self._describer("clip", clip)
        if folder is not None:
            used["clip"] = folder[0]
            ranker = self.parts.get("clip", folder[1], self.placement, captioners.load_ranker)
            ranked = ranker.rank(picture, caption or "")
        return describe(picture, style, change, caption, ranked, used or None)

    def _describer(self, kind: str, reference: str | None) -> tuple[str, Path] | None:
        """The captioner or CLIP model that ``reference`` names, as (name, folder); None for none."""
        from img2img.models.captioners import check_folder

        registered = self.registry.addons(kind)
        if reference is None and registered:
            reference = sorted(registered)[0]
        if reference is None or reference == "none":
            return None
        if reference in registered:
            return reference, check_folder(Path(registered[reference]), kind, kind)
        if self.control_paths and Path(reference).expanduser().is_dir():
            return Path(reference).name, check_folder(Path(reference).expanduser(), kind, kind)
        known = ", ".join(sorted(registered)) or "none registered"
        ways = " or a folder" if self.control_paths else ""
        raise InvalidArgument(kind, f"a {kind} registered with 'img2img models add'{ways} ({known})", reference)

    def control_maps(self, request: GenerationRequest, source: SourceImage) -> list[ControlMap]:
        """Each control unit's model found (not loaded) and its map made (the source when the unit names no
        picture), so that a bad unit is refused before any model loads."""
        from img2img.imageio.source import pixels_sha256

        registered = self.registry.addons("controlnet") | self.registry.addons("t2i-adapter")
        maps = []
        for unit in request.control:
            name, path, info = control_models.resolve(unit.model, registered, self.control_paths)
            picture = source.rgb if unit.image is None else read_source(
                unit.image, max_pixels=self.max_source_pixels, field="control.image").rgb
            sha256 = pixels_sha256(picture)
            if unit.preprocessor not in ("none", "inpaint"):
                picture = self.preprocess(unit.preprocessor, picture, unit.threshold_a, unit.threshold_b,
                                          request.seed or 0)
            if unit.preprocessor == "inpaint" and request.inpaint is None:
                raise InvalidArgument("inpaint", "a mask for the control unit's inpaint preprocessor", None)
            maps.append(ControlMap(unit, name, path, info, picture, sha256))
        return maps

    def _controls(self, maps: list[ControlMap], prepared: Prepared, loaded: LoadedModel,
                  units: tuple[ControlUnit, ...]) -> tuple[UnitConditioner, ...]:
        """The control units as conditioners: each ControlNet or adapter checked against the model's base and
        loaded through the part cache, each map fitted to the working size (cut to the painted box of an "only
        masked" inpaint). ``units`` are a cell's own, which may differ from the maps' in their weights."""
        unet_config = dict(loaded.pipeline.unet.config)
        xl = hasattr(loaded.pipeline, "text_encoder_2")
        controls: list[UnitConditioner] = []
        for found, unit in zip(maps, units, strict=True):
            info = found.info
            control_models.check_base(info, found.name, int(unet_config["cross_attention_dim"]), xl, loaded.name)
            kind = f"{info.kind}@{digest(unet_config)}"  # a single file's config is the model's UNet's
            net = self.parts.get(kind, found.path, self.placement, lambda file, placement, info=info:
                                 control_models.load(file, info, placement, unet_config))
            picture, region = found.picture, prepared.mask.region if prepared.mask is not None else None
            if region is not None:
                picture = fit_to_size(picture, prepared.output_size, unit.resize).crop(region)  # type: ignore[arg-type]
            fitted = fit_to_size(picture, prepared.working.size, unit.resize)  # type: ignore[arg-type]
            # The inpaint preprocessor: the map is the source with the area to paint at -1.
            hint_mask = prepared.mask.working_weights if unit.preprocessor == "inpaint" and prepared.mask else None
            conditioner = ControlConditioner if info.kind == "controlnet" else AdapterConditioner
            controls.append(conditioner(net, fitted, unit, found.name, found.sha256, weights_sha256(found.path),
                                        hint_mask))
        return tuple(controls)

    def references(self, request: GenerationRequest) -> list[Reference]:
        """The image prompts' pictures, read and hashed, before any model loads."""
        from img2img.imageio.source import pixels_sha256

        pictures = [read_source(prompt.image, max_pixels=self.max_source_pixels, field="image_prompts.image").rgb
                    for prompt in request.image_prompts]
        return [Reference(picture, pixels_sha256(picture)) for picture in pictures]

    def adapter(self, request: GenerationRequest) -> tuple[str, Path]:
        """The request's IP-Adapter found (not loaded): its name and its file or folder."""
        if not request.ip_adapter:
            raise InvalidArgument("ip_adapter", "an IP-Adapter to read the image prompts with a diffusion model (or "
                                  "model builtin, whose style pictures they are)", None)
        return ip_adapters.resolve(request.ip_adapter, self.registry.addons(ip_adapters.KIND), self.control_paths)

    def _image_prompt(self, adapter: tuple[str, Path], references: list[Reference], loaded: LoadedModel,
                      cell: GenerationRequest) -> ImagePromptConditioner:
        """The cell's image prompts as a conditioner: the adapter checked against the model's base and loaded for
        its UNet through the part cache, each picture's embedding computed once (the adapter keeps them)."""
        name, found = adapter
        config = dict(loaded.pipeline.unet.config)
        path, _ = ip_adapters.choose(found, int(config["cross_attention_dim"]), loaded.name)
        placement = self.placement
        loaded_adapter = self.parts.get(f"{ip_adapters.KIND}@{digest(config)}", path, placement,
                                        lambda file, _placement: ip_adapters.load(file, config, placement.device,
                                                                                  placement.dtype))
        tokens, scales = image_tokens(loaded_adapter, references, cell.image_prompts, cell.image_prompt_combine)
        pictures = tuple((ref.sha256, prompt.weight) for ref, prompt in zip(references, cell.image_prompts,
                                                                            strict=True))
        return ImagePromptConditioner(loaded_adapter, tokens, scales, pictures, cell.image_prompt_mode,
                                      cell.image_prompt_combine, name, weights_sha256(path))


def digest(config: dict[str, Any]) -> str:
    """A short hash of a component's config (a part loaded against it is another part for another config)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
