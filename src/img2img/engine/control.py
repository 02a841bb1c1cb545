"""Structure control: a ControlNet or a T2I-Adapter steering the denoising steps from a control map (edges, depth,
a tile...).

``ControlUnit`` is the request's part (up to three in ``GenerationRequest.control``): which model, which map, how
strongly and during which steps. The engine loads the model once per weights (its part cache), fits the map to the
working size and hands the loop a conditioner: ``ControlConditioner`` runs the ControlNet at each step of its
window and gives the UNet its residuals, as diffusers' ``StableDiffusionControlNetImg2ImgPipeline`` does;
``AdapterConditioner`` computes an adapter's features once per image and adds them inside the UNet's down blocks,
as diffusers' ``StableDiffusionAdapterPipeline`` does.

Control modes, as A1111's ControlNet extension names them: ``balanced`` (the residuals as they are), ``control``
(the ControlNet sees the conditional half only and its residuals grow from shallow to deep layers: diffusers'
guess mode) and ``prompt`` (the residuals fade towards the shallow layers, 0.825 per layer, so the prompt wins).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from img2img.engine.conditioning import Begin, Conditioner, StartLatents, Step, TextConditioner
from img2img.engine.fields import FieldSpec, field_table, scalar
from img2img.engine.preprocessors import PREPROCESSORS
from img2img.engine.sizing import RESIZE_MODES
from img2img.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

MAX_UNITS = 3
MODES: tuple[str, ...] = ("balanced", "prompt", "control")
PROMPT_MODE_DECAY = 0.825  # per layer from the deepest, as A1111's "my prompt is more important"
KINDS = ("controlnet", "t2i-adapter")  # the conditioners' kinds, as records name them
# A1111's ControlNet extension's names for the modes and resize modes (its API and its infotext use them).
A1111_MODES = {"balanced": "Balanced", "prompt": "My prompt is more important",
               "control": "ControlNet is more important"}
A1111_RESIZE = {"just": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet or T2I-Adapter and its map.

    Attributes:
        model: a registered name, a file or folder name in the ControlNet folders, a repo id in the Hugging Face
            cache, or a path (``img2img.models.control_models.resolve``).
        image: the control map (a PIL image or a path); None: the source itself.
    """

    model: str | Path
    image: Image.Image | Path | str | None = None
    weight: float = scalar(float, 1.0, "How strongly the map steers (0: not at all).", 0.0, 2.0)
    start: float = scalar(float, 0.0, "The share of the steps after which the unit starts acting.", 0.0, 1.0)
    end: float = scalar(float, 1.0, "The share of the steps after which it stops.", 0.0, 1.0)
    mode: str = scalar(str, "balanced", "Which side wins: balanced, prompt (the prompt) or control (the map).",
                       choices=MODES)
    resize: str = scalar(str, "just", "How the map fits the working size: just, crop or fill.", choices=RESIZE_MODES)
    preprocessor: str = scalar(str, "none", "How the map is made from the image (img2img preprocess --list); none: "
                               "the image is a map already.", choices=tuple(PREPROCESSORS))
    threshold_a: float | None = scalar(float, None, "The preprocessor's first setting.", 0.0, 1024.0,
                                       unset="the preprocessor's")
    threshold_b: float | None = scalar(float, None, "Its second setting.", 0.0, 1024.0, unset="the preprocessor's")

    def validated(self) -> ControlUnit:
        from img2img.engine.request import check_scalar

        for spec in field_table(ControlUnit):
            value = getattr(self, spec.name)
            if value is not None or spec.default is not None:
                check_scalar(replace(spec, name=f"control.{spec.name}"), value)
        if self.start > self.end:
            raise InvalidArgument("control.end", f"at least start ({self.start})", self.end)
        if not isinstance(self.model, str | Path) or not str(self.model):
            raise InvalidArgument("control.model", "a ControlNet's or an adapter's name or path", self.model)
        return self


def unit_fields() -> tuple[FieldSpec, ...]:
    """The unit's scalar fields (all but ``model`` and ``image``), in declaration order."""
    return field_table(ControlUnit)


def unit_from(values: Mapping[str, Any], argument: str = "control") -> ControlUnit:
    """A checked unit from loosely typed values (the command line's text, an API's JSON): ``model`` and ``image``
    as they are, each scalar converted to its field's type."""
    specs = {spec.name: spec for spec in unit_fields()}
    unknown = sorted(set(values) - {"model", "image", *specs})
    if unknown:
        raise InvalidArgument(f"{argument}.{unknown[0]}", f"one of model, image, {', '.join(specs)}", unknown[0])
    if not values.get("model"):
        raise InvalidArgument(f"{argument}.model", "a ControlNet's or an adapter's name or path", None)
    typed = {name: _typed(specs[name], value, argument) for name, value in values.items() if name in specs}
    return ControlUnit(model=values["model"], image=values.get("image"), **typed).validated()


def parse_unit(text: str) -> ControlUnit:
    """The command line's unit: ``model=NAME,image=FILE,weight=0.8,preprocessor=canny,...`` (``image`` a path)."""
    values: dict[str, Any] = {}
    for part in (piece.strip() for piece in text.split(",")):
        name, equals, value = part.partition("=")
        if not equals or not name.strip():
            raise InvalidArgument("control", "KEY=VALUE pairs separated by commas, such as model=canny,weight=0.8",
                                  text)
        values[name.strip()] = value.strip()
    if "image" in values:
        values["image"] = Path(values["image"]).expanduser()
    return unit_from(values)


def _typed(spec: FieldSpec, value: Any, argument: str) -> Any:
    """``value`` as ``spec``'s type when it is text for a number; anything else is left for the checks."""
    if not isinstance(value, str) or spec.kind is str:
        return value
    try:
        return spec.kind(value)
    except ValueError:
        raise InvalidArgument(f"{argument}.{spec.name}", f"a {'whole ' if spec.kind is int else ''}number",
                              value) from None


def check_units(units: object) -> tuple[ControlUnit, ...]:
    """A request's ``control``: up to MAX_UNITS ControlUnit objects, each checked."""
    if not isinstance(units, tuple | list) or not all(isinstance(unit, ControlUnit) for unit in units):
        raise InvalidArgument("control", "a tuple of img2img.ControlUnit", type(units).__name__)
    if len(units) > MAX_UNITS:
        raise InvalidArgument("control", f"at most {MAX_UNITS} units", len(units))
    return tuple(unit.validated() for unit in units)


@dataclass(frozen=True, eq=False)
class UnitConditioner(Conditioner):
    """What a ControlNet's and an adapter's conditioners share: the unit, its map and how they are named."""

    net: Any  # the loaded ControlNet or T2I-Adapter
    image: Image.Image  # the map at the working size
    unit: ControlUnit
    name: str = ""  # the model's name, as the record shows it
    image_sha256: str = ""  # of the unit's image before its preprocessor
    model_sha256: str = ""
    hint_mask: Image.Image | None = None  # the inpaint preprocessor: where the map is -1 (the area to paint)

    def map_tensor(self, channels: int = 3) -> torch.Tensor:
        """The map as the net reads it: (1, channels, H, W) in [0, 1], or -1 under ``hint_mask``."""
        import numpy as np
        import torch

        picture = self.image.convert("L" if channels == 1 else "RGB")
        pixels = np.asarray(picture, dtype=np.float32).reshape(picture.height, picture.width, -1) / 255
        if self.hint_mask is not None:
            pixels[np.asarray(self.hint_mask.convert("L")) > 127] = -1.0
        return torch.from_numpy(pixels).permute(2, 0, 1)[None].to(self.net.device, self.net.dtype)

    def shaped(self, step: Step, down: list[torch.Tensor]) -> list[torch.Tensor]:
        """``down`` (shallow to deep, the last one the deepest) after the unit's mode: faded towards the shallow
        layers for "prompt" (the deepest kept); for "control", given to the conditional half only (zeros for the
        unconditional one)."""
        import torch

        if self.unit.mode == "prompt":
            down = [d * PROMPT_MODE_DECAY ** (len(down) - 1 - k) for k, d in enumerate(down)]
        if step.guided and self.unit.mode == "control":
            return [torch.cat([torch.zeros_like(d), d]) for d in down]
        return down

    def metadata(self) -> dict[str, Any] | None:
        return {"model": self.name or Path(str(self.unit.model)).name, "model_sha256": self.model_sha256,
                "weight": self.unit.weight, "start": self.unit.start, "end": self.unit.end, "mode": self.unit.mode,
                "resize": self.unit.resize, "preprocessor": self.unit.preprocessor,
                "threshold_a": self.unit.threshold_a, "threshold_b": self.unit.threshold_b,
                "image_sha256": self.image_sha256, "image": "source" if self.unit.image is None else "given"}


@dataclass(frozen=True, eq=False)
class ControlConditioner(UnitConditioner):
    """A ControlNet, run at each step of the unit's window on the step's latents; its residuals go to the UNet."""

    # Bound per image by ``begin``:
    text: TextConditioner | None = None
    cond: torch.Tensor | None = None
    kind = "controlnet"
    inputs = ("down_block_additional_residuals", "mid_block_additional_residual")

    def begin(self, begin: Begin) -> tuple[Conditioner, StartLatents]:
        return replace(self, text=begin.text, cond=self.map_tensor()), begin.start

    def active(self, step: Step) -> bool:
        return self.active_at(step.index, step.total)

    def active_at(self, index: int, total: int) -> bool:
        """diffusers' rule: the unit acts at step i of n when start <= i/n and (i+1)/n <= end."""
        return not (index / total < self.unit.start or (index + 1) / total > self.unit.end)

    def acts(self, total: int) -> bool:
        """Whether the unit acts at any of a run's ``total`` steps."""
        return self.unit.weight != 0 and any(self.active_at(index, total) for index in range(total))

    def unet_inputs(self, step: Step) -> dict[str, Any]:
        import torch

        if self.text is None or self.cond is None or step.sample is None or not self.acts(step.total):
            return {}
        if not self.active(step):  # outside its window: zeros, as diffusers passes (the UNet's inputs stay the same)
            from img2img.models.control_models import residual_shapes

            shapes = residual_shapes(dict(self.net.config), *step.sample.shape[:1], *step.sample.shape[2:])
            *down, mid = [torch.zeros(shape, dtype=self.net.dtype) for shape in shapes]
            return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        guess = self.unit.mode == "control"
        sample, embeddings, cond = step.sample, self.text.embeddings, self.cond
        added = self.text.added
        if step.guided and guess:  # the conditional half only; the unconditional gets no residuals
            sample, embeddings = sample.chunk(2)[1], embeddings.chunk(2)[1]
            added = {key: value.chunk(2)[1] for key, value in added.items()} if added else None
        elif step.guided:
            cond = torch.cat([cond] * 2)
        extra = {"added_cond_kwargs": added} if added else {}
        down, mid = self.net(sample.to(self.net.dtype), step.timestep, encoder_hidden_states=embeddings,
                             controlnet_cond=cond, conditioning_scale=self.unit.weight, guess_mode=guess,
                             return_dict=False, **extra)
        *down, mid = self.shaped(step, [*down, mid])
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


@dataclass(frozen=True, eq=False)
class AdapterConditioner(UnitConditioner):
    """A T2I-Adapter: its features of the map, computed once per image, are added inside the UNet's down blocks
    at each step of the window."""

    features: tuple[torch.Tensor, ...] = ()  # bound per image by ``begin``, scaled by the weight
    kind = "t2i-adapter"
    inputs = ("down_intrablock_additional_residuals",)

    def begin(self, begin: Begin) -> tuple[Conditioner, StartLatents]:
        import torch

        with torch.no_grad():
            features = self.net(self.map_tensor(int(self.net.config.in_channels)))
        return replace(self, features=tuple(f * self.unit.weight for f in features)), begin.start

    def active(self, step: Step) -> bool:
        """diffusers' adapter rule: the features act at step i of n when start * n <= i < int(end * n)."""
        return self.unit.start * step.total <= step.index < int(self.unit.end * step.total)

    def unet_inputs(self, step: Step) -> dict[str, Any]:
        import torch

        if not self.features or not self.active(step) or self.unit.weight == 0:
            return {}
        features = self.shaped(step, list(self.features))
        if step.guided and self.unit.mode != "control":
            features = [torch.cat([f] * 2) for f in features]
        return {"down_intrablock_additional_residuals": features}


def infotext(entry: Mapping[str, Any]) -> str:
    """A recorded unit (a conditioner's record entry) as A1111's ControlNet extension writes it in "parameters"."""
    parts = {"Module": entry.get("preprocessor", "none"),
             "Model": f"{entry.get('model')} [{str(entry.get('model_sha256', ''))[:8]}]",
             "Weight": f"{entry.get('weight', 1.0):g}", "Resize Mode": A1111_RESIZE.get(str(entry.get("resize")), "?"),
             "Guidance Start": f"{entry.get('start', 0.0):g}", "Guidance End": f"{entry.get('end', 1.0):g}",
             "Control Mode": A1111_MODES.get(str(entry.get("mode")), "?")}
    for key, name in (("threshold_a", "Threshold A"), ("threshold_b", "Threshold B")):
        if entry.get(key) is not None:
            parts[name] = f"{entry[key]:g}"
    if entry.get("image") == "given":
        parts["Image hash"] = str(entry.get("image_sha256", ""))[:10]
    return '"' + ", ".join(f"{key}: {value}" for key, value in parts.items()) + '"'


def units_from_record(entries: tuple[Mapping[str, Any], ...], images: list[Any]) -> tuple[ControlUnit, ...]:
    """The units that recorded ``entries`` describe, each given its picture from ``images`` in order (a unit
    that read the source needs none); each picture is checked against the recorded hash."""
    from img2img.imageio.source import pixels_sha256, read_source

    units, given = [], list(images)
    for number, entry in enumerate(entries):
        image = None
        if entry.get("image") == "given":
            expected = str(entry.get("image_sha256", ""))
            if not given:
                raise InvalidArgument("control_image", f"the control picture of unit {number} (SHA-256 "
                                      f"{expected[:12]}...)", None)
            image = given.pop(0)
            found = pixels_sha256(read_source(image).rgb)
            if found != expected:
                raise InvalidArgument("control_image", f"the control picture of unit {number} (SHA-256 "
                                      f"{expected[:12]}...)", f"a picture with SHA-256 {found[:12]}...")
        scalars = {spec.name: entry[spec.name] for spec in unit_fields() if spec.name in entry}
        units.append(ControlUnit(model=str(entry["model"]), image=image, **scalars))
    if given:
        raise InvalidArgument("control_image", f"{len(units) - len(given)} pictures or fewer (one per unit that had "
                              "its own)", f"{len(images)}")
    return tuple(units)
