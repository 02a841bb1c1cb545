"""The one typed request that every face (library, CLI, server, studio) builds and the engine runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from PIL import Image, ImageColor

from img2img.engine.conditioning import Conditioner, check_conditions
from img2img.engine.control import ControlUnit, check_units
from img2img.engine.fields import (
    MAX_CACHE_STEPS,
    MAX_CLIP_SKIP,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_LOOPS,
    MAX_MERGE_LEVELS,
    MAX_MERGE_RATIO,
    MAX_PROMPT_CHARS,
    MAX_STEPS,
    PROMPT_SYNTAXES,
    STEPS_MODES,
    FieldSpec,
    field_table,
    scalar,
)
from img2img.engine.image_prompt import COMBINES, MAX_BLEND, ImagePrompt, check_image_prompts
from img2img.engine.image_prompt import MODES as IMAGE_PROMPT_MODES
from img2img.engine.inpaint import Inpaint
from img2img.engine.prompt_syntax import extract_loras, parse
from img2img.engine.samplers import canonical_sampler_name
from img2img.engine.seeds import MAX_SEED
from img2img.engine.sizing import LATENT_MULTIPLE, MAX_SIDE, MIN_SIDE, RESIZE_MODES, ResizeMode
from img2img.errors import InvalidArgument

StepsMode = Literal["diffusers", "exact"]

DEFAULT_MAX_IMAGES = 16  # per request; the server and CLI can lower it
KEEP_FIELDS = ("keep_structure", "keep_colour", "keep_detail")  # the strength finder's targets


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that determines a result, apart from the model's weights.

    Each scalar attribute is declared with its spec (``scalar``): its help, range or choices, CLI flag and A1111
    name; every face derives its options from that (see ``img2img.engine.fields``). The others:

    Attributes:
        source: the source image, as a PIL image or a path to an image file.
        size: the output and working size (width, height) in pixels, multiples of 8; None keeps the source's size
            and fits the working size to the model (see ``img2img.engine.sizing``).
        style_image: a picture to take the style from (the built-in style engine only, ``model="builtin"``).
        conditions: conditioners that act inside the denoising loop beside the prompt
            (``img2img.engine.conditioning``; diffusion models only). Each one's metadata goes into the records.
        inpaint: repaint only part of the source (a mask), or grow its canvas (``img2img.engine.inpaint``).
        control: up to three ControlNet units that keep the structure of a map (``img2img.engine.control``).
        image_prompts: up to four reference pictures whose look steers the result (``img2img.engine.image_prompt``;
            with a diffusion model through ``ip_adapter``; with the built-in engine they are its style pictures).
    """

    source: Image.Image | Path | str | bytes
    prompt: str = scalar(str, "", "What the result should look like (built-in engine: style names).",
                         high=MAX_PROMPT_CHARS, a1111="prompt", flag="PROMPT", required=True)
    negative_prompt: str = scalar(str, "", "What the result should not look like; empty means nothing.",
                                  high=MAX_PROMPT_CHARS, a1111="negative_prompt", flag="--negative")
    strength: float = scalar(float, 0.6, "How much of the source is replaced: 0 returns it unchanged, 1 ignores it "
                             "(plain text-to-image).", 0.0, 1.0, a1111="denoising_strength")
    guidance_scale: float | None = scalar(float, None, "Classifier-free guidance; at 1 or below the unconditional "
                                          "pass is skipped.", 0.0, MAX_GUIDANCE, a1111="cfg_scale", flag="--cfg",
                                          unset="the model family's (7 for SD, 0 for turbo)")
    image_cfg: float | None = scalar(float, None, "Edit models (InstructPix2Pix) only: image guidance, how closely "
                                     "the result keeps the source while the prompt says what to change; higher "
                                     "keeps more.", 0.0, MAX_GUIDANCE, a1111="image_cfg_scale", flag="--image-cfg",
                                     unset="1.5 for edit models; other models ignore it")
    steps: int | None = scalar(int, None, "Denoising steps.", 1, MAX_STEPS, a1111="steps",
                               unset="the model family's (25 for SD, 2 for turbo, 4 for LCM)")
    sampler: str | None = scalar(str, None, "An A1111 sampler name such as 'DPM++ 2M Karras'.", high=64,
                                 unset="the model family's")  # A1111 has no one-to-one field (index or scheduler)
    seed: int | None = scalar(int, None, "0..2**32-1, or -1 for a random one (reported in the result). Image k of "
                              "a batch uses seed+k.", -1, MAX_SEED, a1111="seed", unset="a random one")
    num_images: int = scalar(int, 1, "How many images, each with its own seed.", 1, MAX_IMAGES, flag="-n")
    steps_mode: StepsMode = scalar(str, "diffusers", "diffusers: the last int(steps x strength) steps of a STEPS "
                                   "schedule; exact: exactly STEPS steps from the strength's noise level (as "
                                   "ComfyUI).", choices=STEPS_MODES)
    model: str | None = scalar(str, None, "A registered model name, a path or a cached Hugging Face repo id.",
                               unset="the registry's default, or the built-in style engine")
    vae: str | None = scalar(str, None, "A VAE to use instead of the model's (A1111's sd_vae): a registered name, a "
                             "file or folder in a VAE folder, or a path.", high=1024, unset="the model's own")
    size: tuple[int, int] | None = field(default=None)
    max_side: int | None = scalar(int, None, "Instead of a size, scale the source so that its long side is this "
                                  "many pixels (a multiple of 8).", MIN_SIDE, MAX_SIDE)
    resize_mode: ResizeMode = scalar(str, "just", "How the source fills another aspect ratio: just (stretch), crop "
                                     "(cover and centre-crop) or fill (fit and extend the edges).",
                                     choices=RESIZE_MODES, flag="--resize")
    background: str = scalar(str, "white", "The colour behind transparent areas of the source (a name or "
                             "#rrggbb).", high=32)
    keep_alpha: bool = scalar(bool, False, "Put the source's transparency back on the result (PNG and WebP).")
    color_match: bool = scalar(bool, False, "Match the result's colours to the source's in CIELAB (against drift "
                               "over loops).")
    loops: int = scalar(int, 1, "Loopback: feed each result back as the next source, this many passes in all; "
                        "pass k uses seed+k.", 1, MAX_LOOPS)
    loop_decay: float = scalar(float, 1.0, "Multiply the strength by this after each loop (above 0).", 0.0, 1.0)
    prompt_syntax: str = scalar(str, "a1111", "How prompts are read. a1111: (word:1.2) weights, BREAK and any length "
                                "in chunks of 75 tokens; plain: the text as is, cut at 77 tokens.",
                                choices=PROMPT_SYNTAXES, legacy="plain")
    clip_skip: int = scalar(int, 1, "A1111's Clip skip: encode the prompt with the text encoder's N-th layer from the "
                            "end (2 for many anime models).", 1, MAX_CLIP_SKIP)
    cache_steps: int = scalar(int, 1, "Step caching (DeepCache), opt-in and approximate: run the whole UNet every "
                              "N steps and only its outermost layer in between; 1 runs every step in full, 3 is about "
                              "twice as fast.", 1, MAX_CACHE_STEPS)
    merge_tokens: float = scalar(float, 0.0, "Token merging (ToMe), opt-in and approximate: merge this share of the "
                                 "most similar tokens before each self-attention of the highest-resolution level; 0 "
                                 "merges none, 0.5 makes large images much faster.", 0.0, MAX_MERGE_RATIO)
    merge_levels: int = scalar(int, 1, "With merge_tokens: merge at this many levels of the UNet, from the highest "
                               "resolution down (ToMe's max_downsample 1, 2, 4, 8); 2 is about 5% faster at 2048 "
                               "px.", 1, MAX_MERGE_LEVELS)
    keep_structure: float | None = scalar(float, None, "Aim instead of guessing: find the strength at which the "
                                          "result keeps this much of the source's structure (0..1, its edges) on "
                                          "cheap previews, then render it; the strength given is ignored.", 0.0, 1.0,
                                          unset="none: the strength as given")
    keep_colour: float | None = scalar(float, None, "As keep_structure, for the source's colours (CIELAB).", 0.0,
                                       1.0, unset="none: the strength as given")
    keep_detail: float | None = scalar(float, None, "As keep_structure, for the source's detail (its luminance).",
                                       0.0, 1.0, unset="none: the strength as given")
    ip_adapter: str | None = scalar(str, None, "The IP-Adapter that reads the image prompts: a registered name, a "
                                    "file in the IP-Adapter folder, a cached repo id or a path.", high=1024,
                                    unset="none (needed for image prompts with a diffusion model)")
    image_prompt_mode: str = scalar(str, "both", "Where the image prompts act: both, style (the look without the "
                                    "content, like --sref) or layout (the composition).", choices=IMAGE_PROMPT_MODES)
    image_prompt_combine: str = scalar(str, "separate", "How several image prompts act: separate (each with its "
                                       f"weight) or average (their embeddings mixed by weight into one, up to "
                                       f"{MAX_BLEND} pictures: img2img blend).", choices=COMBINES)
    style_image: Image.Image | Path | str | None = None
    conditions: tuple[Conditioner, ...] = ()
    inpaint: Inpaint | None = None
    control: tuple[ControlUnit, ...] = ()
    image_prompts: tuple[ImagePrompt, ...] = ()

    @property
    def keep_target(self) -> tuple[str, float] | None:
        """The retention score to aim the strength at (``img2img.engine.strength_finder``): its name and value."""
        return next(((name.removeprefix("keep_"), getattr(self, name)) for name in KEEP_FIELDS
                     if getattr(self, name) is not None), None)

    def validated(self, max_images: int = DEFAULT_MAX_IMAGES) -> GenerationRequest:
        """Check every field and return the request with its sampler name in canonical spelling.

        Raises InvalidArgument naming the first field that is wrong.
        """
        if isinstance(self.model, PathLike):  # a model's folder or file given as a path object
            return replace(self, model=str(self.model)).validated(max_images)
        for spec in FIELDS:  # types, ranges and choices, as the field table defines them
            value = getattr(self, spec.name)
            if value is not None or spec.default is not None:
                check_scalar(spec, value, max_images)
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
        if self.prompt_syntax == "a1111":  # a weight that is not a number, or out of range; too many LoRAs
            for name in ("prompt", "negative_prompt"):
                parse(extract_loras(getattr(self, name), name)[0], name)
        if self.loop_decay == 0:
            raise InvalidArgument("loop_decay", "above 0 (it multiplies the strength after each loop)", 0)
        sampler = canonical_sampler_name(self.sampler) if self.sampler is not None else None
        if self.inpaint is not None and not isinstance(self.inpaint, Inpaint):
            raise InvalidArgument("inpaint", "an img2img.Inpaint", type(self.inpaint).__name__)
        deep_inputs = [kind for kind, given in (("ControlNet/T2I-Adapter units", self.control),
                                                ("image prompts", self.image_prompts),
                                                ("conditioners with UNet inputs",
                                                 [c for c in self.conditions if getattr(c, "inputs", ())]))
                       if given]
        if self.cache_steps > 1 and deep_inputs:  # their inputs act on the deep blocks that caching skips
            raise InvalidArgument("cache_steps", f"1 with {' or '.join(deep_inputs)} (step caching skips the deep "
                                  "blocks they act on)", self.cache_steps)
        targets = [name for name in KEEP_FIELDS if getattr(self, name) is not None]
        if len(targets) > 1:
            raise InvalidArgument(targets[1], f"left out when {targets[0]} is given (one target at a time)",
                                  getattr(self, targets[1]))
        return replace(self, sampler=sampler, conditions=check_conditions(self.conditions),
                       inpaint=self.inpaint.validated() if self.inpaint is not None else None,
                       control=check_units(self.control),
                       image_prompts=check_image_prompts(self.image_prompts, self.image_prompt_combine))


FIELDS: tuple[FieldSpec, ...] = field_table(GenerationRequest)
SPEC: MappingProxyType[str, FieldSpec] = MappingProxyType({spec.name: spec for spec in FIELDS})


def check_scalar(spec: FieldSpec, value: object, max_images: int = DEFAULT_MAX_IMAGES) -> None:
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
