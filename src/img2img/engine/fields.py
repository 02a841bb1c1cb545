"""How a request's scalar field is declared: its type, default, range or choices, help, CLI flag and A1111 name.

Each field is declared once, as an attribute of ``GenerationRequest`` made with ``scalar(...)``, and the table
(``img2img.engine.request.FIELDS``) is read from the dataclass. From that table derive: the request's checks, the
record (which embeds the request), the command line's options for run, sweep and batch, the server's JSON schema
(``JobFields``), ``GET /v1/fields`` (the studio's defaults and limits) and the A1111 fields that map one to one.
The images (``source``, ``style_image``), ``size`` and ``conditions`` are not scalars and are declared plainly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

MAX_STEPS = 150  # A1111's slider limit; more steps only cost time
MAX_GUIDANCE = 30.0  # beyond this every sampler saturates
MAX_PROMPT_CHARS = 4000  # CLIP reads 77 tokens a chunk; this only stops absurd payloads
MAX_LOOPS = 32  # loopback passes per image
MAX_IMAGES = 64  # the most any face accepts for num_images; the engine's own limit is lower by default
STEPS_MODES: tuple[str, ...] = ("diffusers", "exact")
PROMPT_SYNTAXES: tuple[str, ...] = ("a1111", "plain")
MAX_CLIP_SKIP = 12  # CLIP ViT-L has 12 layers
MAX_MERGE_RATIO = 0.75  # token merging: ToMe for SD's quality falls off past this
MAX_MERGE_LEVELS = 4  # token merging's levels (ToMe for SD's max_downsample 1, 2, 4, 8); SD's UNet has four
MAX_CACHE_STEPS = 10  # step caching: past this the kept features are too stale to be worth their speed
_KEY = "img2img.field"


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
    flag: str | None = None  # the command line's option; None: --name-with-dashes
    unset: str | None = None  # what leaving the field out (None) means, where the default is None
    legacy: Any = None  # what records written before the field existed meant, where not its default

    @property
    def option(self) -> str:
        return self.flag or f"--{self.name.replace('_', '-')}"

    def describe(self) -> dict[str, Any]:
        """As ``GET /v1/fields`` shows it."""
        return {key: value for key, value in asdict(self).items() if key != "kind"} | {"type": self.kind.__name__}


def scalar(kind: type, default: Any, help: str, low: float | None = None, high: float | None = None, *,
           choices: tuple[str, ...] | None = None, a1111: str | None = None, flag: str | None = None,
           unset: str | None = None, legacy: Any = None, required: bool = False) -> Any:
    """Declare a request attribute together with its spec (the spec's name is the attribute's).

    ``required``: the library's request has no default for it (the faces still offer ``default``).
    """
    spec = FieldSpec("", kind, default, help, low, high, choices, a1111, flag, unset, legacy)
    if required:
        return dataclasses.field(metadata={_KEY: spec})
    return dataclasses.field(default=default, metadata={_KEY: spec})


def field_table(cls: type) -> tuple[FieldSpec, ...]:
    """The specs of a dataclass's ``scalar`` attributes, in declaration order, each named after its attribute."""
    return tuple(dataclasses.replace(f.metadata[_KEY], name=f.name) for f in dataclasses.fields(cls)
                 if _KEY in f.metadata)
