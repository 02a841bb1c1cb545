"""What a generation returns: the images and the record of everything that produced them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from PIL import Image


@dataclass(frozen=True)
class GenerationRecord:
    """Everything that determines one output image. Deterministic: it holds no timestamps or timings, so that
    the same inputs give the same bytes when it is embedded in a file."""

    engine: str  # "diffusion"
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
    width: int  # of the output, which is the source's size
    height: int
    working_width: int  # the size the model ran at
    working_height: int
    model: str
    model_family: str
    model_hash: str  # full SHA-256 of the weights
    source_sha256: str  # of the source's decoded RGB pixels
    device: str
    dtype: str
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

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
    images: list[Image.Image]
    records: list[GenerationRecord]  # one per image; they differ only in the seed
    seconds: float  # wall time of the call, model loading included
    image_seconds: list[float] = field(default_factory=list)  # per image, without model loading

    @property
    def seeds(self) -> list[int]:
        return [record.seed for record in self.records]

    @property
    def record(self) -> GenerationRecord:
        """The first image's record."""
        return self.records[0]

    @staticmethod
    def per_seed(record: GenerationRecord, seeds: list[int]) -> list[GenerationRecord]:
        return [replace(record, seed=seed) for seed in seeds]
