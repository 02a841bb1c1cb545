"""What a generation returns: the images and the record of everything that produced them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image

from img2img.engine.request import GenerationRequest
from img2img.errors import InvalidArgument


@dataclass(frozen=True)
class GenerationRecord:
    """Everything that determines one output image. Deterministic: it holds no timestamps or timings, so that
    the same inputs give the same bytes when it is embedded in a file."""

    engine: str  # "diffusion" or "style" (the built-in style engine)
    prompt: str
    negative_prompt: str
    strength: float
    steps: int  # as requested (or the family's default)
    steps_mode: str
    steps_run: int  # sampler steps actually run; 0 at strength 0
    start_sigma: float  # the noise level the run started from; 0 at strength 0
    guidance_scale: float
    sampler: str
    seed: int
    width: int  # of the output
    height: int
    working_width: int  # the size the model ran at
    working_height: int
    model: str
    model_family: str
    model_hash: str  # full SHA-256 of the weights
    source_sha256: str  # of the source's decoded RGB pixels
    device: str
    dtype: str
    quantize: str = "none"  # "int8": the UNet's weights were approximated in 8 bits
    versions: dict[str, str] = field(default_factory=dict)
    # How the source was fitted and the result finished; see GenerationRequest for each.
    size: tuple[int, int] | None = None  # as requested
    max_side: int | None = None
    resize_mode: str = "just"
    background: str = "white"
    keep_alpha: bool = False
    color_match: bool = False
    loops: int = 1
    loop_decay: float = 1.0
    style_image_sha256: str | None = None  # the built-in engine's style picture, if any
    conditions: tuple[dict[str, Any], ...] = ()  # each conditioner's metadata, beside the prompt's

    def to_json(self) -> str:
        data = asdict(self)
        if not data["conditions"]:  # records without conditioners read as they did before they existed
            del data["conditions"]
        return json.dumps(data, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> GenerationRecord:
        """Read a record written by ``to_json``; fields added by later versions are ignored."""
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            values: dict[str, Any] = {key: value for key, value in data.items() if key in known}
            if values.get("size") is not None:
                values["size"] = tuple(values["size"])
            return cls(**values)
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise InvalidArgument("record", "an img2img JSON record", text[:80]) from exc

    def to_request(
        self, source: Image.Image | Path | str, style_image: Image.Image | Path | str | None = None
    ) -> GenerationRequest:
        """The request that produced this image, to run again on ``source`` (``img2img reproduce``)."""
        if self.conditions:
            kinds = ", ".join(str(entry.get("kind", "?")) for entry in self.conditions)
            raise InvalidArgument("record", "one without conditioners (their objects cannot be rebuilt from a file)",
                                  kinds)
        diffusion = self.engine == "diffusion"  # the style engine has no guidance, steps or sampler to set
        return GenerationRequest(
            source=source, prompt=self.prompt, negative_prompt=self.negative_prompt, strength=self.strength,
            guidance_scale=self.guidance_scale if diffusion else None, steps=self.steps if diffusion else None,
            sampler=self.sampler if diffusion else None, seed=self.seed, style_image=style_image,
            steps_mode=self.steps_mode, model=self.model, size=self.size, max_side=self.max_side,  # type: ignore[arg-type]
            resize_mode=self.resize_mode, background=self.background, keep_alpha=self.keep_alpha,  # type: ignore[arg-type]
            color_match=self.color_match, loops=self.loops, loop_decay=self.loop_decay,
        )

    def to_parameters_text(self) -> str:
        """A1111's "parameters" text, which the ecosystem's tools read."""
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        fields = {
            "Steps": self.steps, "Sampler": self.sampler, "CFG scale": _number(self.guidance_scale),
            "Seed": self.seed, "Size": f"{self.working_width}x{self.working_height}",
            "Model hash": self.model_hash[:10], "Model": self.model,
            "Denoising strength": _number(self.strength),
        }
        lines.append(", ".join(f"{key}: {value}" for key, value in fields.items()))
        return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass
class GenerationResult:
    images: list[Image.Image]  # RGB, or RGBA with keep_alpha and a transparent source
    records: list[GenerationRecord]  # one per image; each describes its image completely
    seconds: float  # wall time of the call, model loading included
    image_seconds: list[float] = field(default_factory=list)  # per image, without model loading
    notes: list[str] = field(default_factory=list)  # warnings for the user (a soft source, a GIF's frames)

    @property
    def seeds(self) -> list[int]:
        return [record.seed for record in self.records]

    @property
    def record(self) -> GenerationRecord:
        """The first image's record."""
        return self.records[0]
