"""The one typed request that every face (library, CLI, server, studio) builds and the engine runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Literal

from PIL import Image, ImageColor

from img2img.engine.conditioning import Conditioner, check_conditions
from img2img.engine.fields import FIELDS, SPEC, FieldSpec
from img2img.engine.samplers import canonical_sampler_name
from img2img.engine.seeds import MAX_SEED
from img2img.engine.sizing import LATENT_MULTIPLE, MAX_SIDE, MIN_SIDE, ResizeMode
from img2img.errors import InvalidArgument

StepsMode = Literal["diffusers", "exact"]

DEFAULT_MAX_IMAGES = 16  # per request; the server and CLI can lower it


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that determines a result, apart from the model's weights.

    Attributes:
        source: the source image, as a PIL image or a path to an image file.
        prompt: what the result should look like.
        negative_prompt: what it should not look like; empty means none.
        strength: 0..1, how much of the source is replaced. 0 returns the source unchanged, 1 ignores it
            (plain text-to-image). See ``img2img.engine.strength``.
        guidance_scale: classifier-free guidance, 0..30; None takes the model family's default (7 for Stable
            Diffusion, 0 for turbo models). At 1 or below the unconditional pass is skipped.
        steps: denoising steps, 1..150; None takes the family's default (25, or 2 for turbo, 4 for LCM).
        sampler: an A1111 sampler name such as "DPM++ 2M Karras"; None takes the family's default.
        seed: 0..2**32-1; None or -1 picks one at random, reported in the result. Image k of a batch uses seed+k.
        num_images: how many images, each with its own seed.
        steps_mode: "diffusers" runs the last int(steps * strength) steps of a ``steps`` schedule; "exact" runs
            exactly ``steps`` steps starting from the strength's noise level (as ComfyUI does).
        model: a registry name, a path or a Hugging Face repo id; None takes the registry's default.
        size: the output and working size (width, height) in pixels, multiples of 8; None keeps the source's size
            and fits the working size to the model (see ``img2img.engine.sizing``).
        max_side: instead of ``size``, scale the source so that its long side is this many pixels (multiple of 8).
        resize_mode: how the source fills ``size`` when the aspect ratios differ: "just" (stretch), "crop" (cover
            and centre-crop) or "fill" (fit and extend the edges), as A1111's resize modes.
        background: the colour that transparent areas of the source are composited onto (a name or #rrggbb).
        keep_alpha: put the source's transparency back on the result (PNG and WebP outputs only).
        color_match: match the result's colours to the source's in CIELAB (against drift over loops).
        loops: loopback: feed each result back as the next source this many times in all; loop k uses seed+k.
        loop_decay: multiply the strength by this after each loop, 0 < decay <= 1.
        style_image: a picture to take the style from (the built-in style engine only, ``model="builtin"``).
        conditions: conditioners that act inside the denoising loop beside the prompt
            (``img2img.engine.conditioning``; diffusion models only). Each one's metadata goes into the records.
    """

    source: Image.Image | Path | str
    prompt: str
    negative_prompt: str = SPEC["negative_prompt"].default
    strength: float = SPEC["strength"].default
    guidance_scale: float | None = SPEC["guidance_scale"].default
    steps: int | None = SPEC["steps"].default
    sampler: str | None = SPEC["sampler"].default
    seed: int | None = SPEC["seed"].default
    num_images: int = SPEC["num_images"].default
    steps_mode: StepsMode = SPEC["steps_mode"].default
    model: str | None = SPEC["model"].default
    size: tuple[int, int] | None = field(default=None)
    max_side: int | None = SPEC["max_side"].default
    resize_mode: ResizeMode = SPEC["resize_mode"].default
    background: str = SPEC["background"].default
    keep_alpha: bool = SPEC["keep_alpha"].default
    color_match: bool = SPEC["color_match"].default
    loops: int = SPEC["loops"].default
    loop_decay: float = SPEC["loop_decay"].default
    style_image: Image.Image | Path | str | None = None
    conditions: tuple[Conditioner, ...] = ()

    def validated(self, max_images: int = DEFAULT_MAX_IMAGES) -> GenerationRequest:
        """Check every field and return the request with its sampler name in canonical spelling.

        Raises InvalidArgument naming the first field that is wrong.
        """
        if isinstance(self.model, PathLike):  # a model's folder or file given as a path object
            return replace(self, model=str(self.model)).validated(max_images)
        for spec in FIELDS:  # types, ranges and choices, as the field table defines them
            value = getattr(self, spec.name)
            if value is not None or spec.default is not None:
                _check_field(spec, value, max_images)
        if self.seed is not None and self.seed != -1 and self.seed + self.num_images - 1 > MAX_SEED:
            raise InvalidArgument("seed", f"at most {MAX_SEED - self.num_images + 1} for {self.num_images} "
                                  "images (image k uses seed+k)", self.seed)
        if self.size is not None:
            _check_size(self.size)
        if self.max_side is not None:
            if self.size is not None:
                raise InvalidArgument("max_side", "left out when size is given", self.max_side)
            if self.max_side % LATENT_MULTIPLE:
                raise InvalidArgument("max_side", f"a multiple of {LATENT_MULTIPLE}", self.max_side)
        _check_colour("background", self.background)
        if self.loop_decay == 0:
            raise InvalidArgument("loop_decay", "above 0 (it multiplies the strength after each loop)", 0)
        sampler = canonical_sampler_name(self.sampler) if self.sampler is not None else None
        return replace(self, sampler=sampler, conditions=check_conditions(self.conditions))


def _check_field(spec: FieldSpec, value: object, max_images: int) -> None:
    """One scalar field against its spec; ``num_images`` against the engine's own limit."""
    name = spec.name
    if spec.choices is not None:
        if value not in spec.choices:
            raise InvalidArgument(name, f"one of {', '.join(spec.choices)}", value)
    elif spec.kind is str:
        _check_text(name, value, int(spec.high) if spec.high is not None else None)
    elif spec.kind is bool:
        _check_flag(name, value)
    elif spec.kind is int:
        high = max_images if name == "num_images" else int(spec.high)  # type: ignore[arg-type]
        low = 0 if name == "seed" and value != -1 else int(spec.low)  # type: ignore[arg-type]
        _check_int(name, value, low, high)
    else:
        _check_number(name, value, spec.low, spec.high)  # type: ignore[arg-type]


def _check_text(name: str, value: object, limit: int | None) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(name, "a string", value)
    if limit is not None and len(value) > limit:
        raise InvalidArgument(name, f"at most {limit} characters", f"{len(value)} characters")


def _check_number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(name, f"a number in [{low}, {high}]", value)
    if not low <= value <= high:
        raise InvalidArgument(name, f"in [{low}, {high}]", value)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(name, f"a whole number in [{low}, {high}]", value)
    if not low <= value <= high:
        raise InvalidArgument(name, f"in [{low}, {high}]", value)


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidArgument(name, "true or false", value)


def _check_colour(name: str, value: object) -> None:
    try:
        ImageColor.getrgb(value)  # type: ignore[arg-type]
    except (ValueError, AttributeError, TypeError) as exc:
        raise InvalidArgument(name, "a colour name or #rrggbb", value) from exc


def _check_size(size: object) -> None:
    ok = (
        isinstance(size, tuple)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    )
    if not ok or not all(MIN_SIDE <= v <= MAX_SIDE and v % LATENT_MULTIPLE == 0 for v in size):  # type: ignore[union-attr]
        raise InvalidArgument("size", f"(width, height) multiples of {LATENT_MULTIPLE} in [{MIN_SIDE}, {MAX_SIDE}]",
                              size)
