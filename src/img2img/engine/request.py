"""The one typed request that every face (library, CLI, server, studio) builds and the engine runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from PIL import Image, ImageColor

from img2img.engine.conditioning import Conditioner, check_conditions
from img2img.engine.samplers import canonical_sampler_name
from img2img.engine.seeds import MAX_SEED
from img2img.engine.sizing import LATENT_MULTIPLE, MAX_SIDE, MIN_SIDE, RESIZE_MODES, ResizeMode
from img2img.errors import InvalidArgument

StepsMode = Literal["diffusers", "exact"]
STEPS_MODES: tuple[str, ...] = ("diffusers", "exact")

MAX_STEPS = 150  # A1111's slider limit; more steps only cost time
MAX_GUIDANCE = 30.0  # beyond this every sampler saturates
DEFAULT_MAX_IMAGES = 16  # per request; the server and CLI can lower it
MAX_PROMPT_CHARS = 4000  # CLIP reads 77 tokens; this only stops absurd payloads
MAX_LOOPS = 32  # loopback passes per image


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
    negative_prompt: str = ""
    strength: float = 0.6
    guidance_scale: float | None = None
    steps: int | None = None
    sampler: str | None = None
    seed: int | None = None
    num_images: int = 1
    steps_mode: StepsMode = "diffusers"
    model: str | None = None
    size: tuple[int, int] | None = field(default=None)
    max_side: int | None = None
    resize_mode: ResizeMode = "just"
    background: str = "white"
    keep_alpha: bool = False
    color_match: bool = False
    loops: int = 1
    loop_decay: float = 1.0
    style_image: Image.Image | Path | str | None = None
    conditions: tuple[Conditioner, ...] = ()

    def validated(self, max_images: int = DEFAULT_MAX_IMAGES) -> GenerationRequest:
        """Check every field and return the request with its sampler name in canonical spelling.

        Raises InvalidArgument naming the first field that is wrong.
        """
        _check_text("prompt", self.prompt)
        _check_text("negative_prompt", self.negative_prompt)
        _check_number("strength", self.strength, 0.0, 1.0)
        if self.guidance_scale is not None:
            _check_number("guidance_scale", self.guidance_scale, 0.0, MAX_GUIDANCE)
        if self.steps is not None:
            _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("num_images", self.num_images, 1, max_images)
        if self.seed is not None and self.seed != -1:
            _check_int("seed", self.seed, 0, MAX_SEED)
            if self.seed + self.num_images - 1 > MAX_SEED:
                raise InvalidArgument("seed", f"at most {MAX_SEED - self.num_images + 1} for {self.num_images} "
                                      "images (image k uses seed+k)", self.seed)
        if self.steps_mode not in STEPS_MODES:
            raise InvalidArgument("steps_mode", f"one of {', '.join(STEPS_MODES)}", self.steps_mode)
        if self.size is not None:
            _check_size(self.size)
        if self.max_side is not None:
            if self.size is not None:
                raise InvalidArgument("max_side", "left out when size is given", self.max_side)
            _check_int("max_side", self.max_side, MIN_SIDE, MAX_SIDE)
            if self.max_side % LATENT_MULTIPLE:
                raise InvalidArgument("max_side", f"a multiple of {LATENT_MULTIPLE}", self.max_side)
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidArgument("resize_mode", f"one of {', '.join(RESIZE_MODES)}", self.resize_mode)
        _check_colour("background", self.background)
        _check_flag("keep_alpha", self.keep_alpha)
        _check_flag("color_match", self.color_match)
        _check_int("loops", self.loops, 1, MAX_LOOPS)
        _check_number("loop_decay", self.loop_decay, 0.0, 1.0)
        if self.loop_decay == 0:
            raise InvalidArgument("loop_decay", "above 0 (it multiplies the strength after each loop)", 0)
        sampler = canonical_sampler_name(self.sampler) if self.sampler is not None else None
        return replace(self, sampler=sampler, conditions=check_conditions(self.conditions))


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(name, "a string", value)
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidArgument(name, f"at most {MAX_PROMPT_CHARS} characters", f"{len(value)} characters")


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
