"""The request's scalar fields, each defined once: its default, its range or choices, its help and its A1111 name.

``GenerationRequest`` takes its defaults from here and checks its values against these ranges; the server's
JSON schema (``JobFields``), ``GET /v1/fields`` (which the studio reads for its defaults and limits) and the
command line's help derive from the same table. The images (``source``, ``style_image``), ``size`` and
``conditions`` are not scalars and are declared with the request itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

from img2img.engine.seeds import MAX_SEED
from img2img.engine.sizing import MAX_SIDE, MIN_SIDE, RESIZE_MODES

MAX_STEPS = 150  # A1111's slider limit; more steps only cost time
MAX_GUIDANCE = 30.0  # beyond this every sampler saturates
MAX_PROMPT_CHARS = 4000  # CLIP reads 77 tokens a chunk; this only stops absurd payloads
MAX_LOOPS = 32  # loopback passes per image
MAX_IMAGES = 64  # the most any face accepts for num_images; the engine's own limit is lower by default
STEPS_MODES: tuple[str, ...] = ("diffusers", "exact")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: type  # str, float, int or bool; None is allowed where the default is None
    default: Any
    help: str
    low: float | None = None  # inclusive bounds for numbers, length bounds for strings (high only)
    high: float | None = None
    choices: tuple[str, ...] | None = None
    a1111: str | None = None  # the A1111 API's name for the field; its value is taken as is

    def describe(self) -> dict[str, Any]:
        """As ``GET /v1/fields`` shows it."""
        return {key: value for key, value in asdict(self).items() if key != "kind"} | {"type": self.kind.__name__}


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("prompt", str, "", "What the result should look like (built-in engine: style names).",
              high=MAX_PROMPT_CHARS, a1111="prompt"),
    FieldSpec("negative_prompt", str, "", "What the result should not look like.", high=MAX_PROMPT_CHARS,
              a1111="negative_prompt"),
    FieldSpec("strength", float, 0.6, "How much of the source is replaced: 0 keeps it, 1 ignores it.", 0.0, 1.0,
              a1111="denoising_strength"),
    FieldSpec("guidance_scale", float, None, "Classifier-free guidance; None: the model family's (7 for SD).", 0.0,
              MAX_GUIDANCE, a1111="cfg_scale"),
    FieldSpec("steps", int, None, "Denoising steps; None: the model family's (25 for SD).", 1, MAX_STEPS,
              a1111="steps"),
    FieldSpec("sampler", str, None, "An A1111 sampler name such as 'DPM++ 2M Karras'; None: the family's.",
              high=64),  # A1111 sends sampler_name or sampler_index, and a scheduler: no one-to-one field
    FieldSpec("seed", int, None, "0..2**32-1; None or -1 picks one at random. Image k of a batch uses seed+k.",
              -1, MAX_SEED, a1111="seed"),
    FieldSpec("num_images", int, 1, "How many images, each with its own seed.", 1, MAX_IMAGES),
    FieldSpec("steps_mode", str, "diffusers", "diffusers: the last steps x strength of a schedule; exact: that many "
              "steps from the strength's noise level.", choices=STEPS_MODES),
    FieldSpec("model", str, None, "A registered model name (or a path in the library and CLI); None: the default."),
    FieldSpec("max_side", int, None, "Scale so the long side is this many pixels (a multiple of 8).", MIN_SIDE,
              MAX_SIDE),
    FieldSpec("resize_mode", str, "just", "How the source fills another aspect ratio: just (stretch), crop or fill.",
              choices=RESIZE_MODES),
    FieldSpec("background", str, "white", "The colour behind transparent areas of the source.", high=32),
    FieldSpec("keep_alpha", bool, False, "Put the source's transparency back on the result."),
    FieldSpec("color_match", bool, False, "Match the result's colours to the source's (CIELAB)."),
    FieldSpec("loops", int, 1, "Loopback: feed each result back as the next source, this many passes in all.", 1,
              MAX_LOOPS),
    FieldSpec("loop_decay", float, 1.0, "Multiply the strength by this after each loop (above 0).", 0.0, 1.0),
)
SPEC: MappingProxyType[str, FieldSpec] = MappingProxyType({spec.name: spec for spec in FIELDS})
