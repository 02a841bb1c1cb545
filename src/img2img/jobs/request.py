"""A queued job's request, typed from the API to the worker: the engine's request fields, checked at submission,
with the images stored as blobs and the model fixed (its name and its weights' hash)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from img2img.engine.control import ControlUnit
    from img2img.engine.image_prompt import ImagePrompt
    from img2img.engine.inpaint import Inpaint
    from img2img.engine.request import GenerationRequest
    from img2img.jobs.blobs import BlobStore

STORED_APART = ("source", "style_image", "model_sha256", "mask", "control_images", "image_prompt_images")


@dataclass(frozen=True)
class JobRequest:
    source: str  # the source image's blob name
    fields: dict[str, Any] = field(default_factory=dict)  # GenerationRequest's other fields, as JSON values
    style_image: str | None = None  # a style picture's blob name (the built-in engine)
    model_sha256: str | None = None  # the weights the job was accepted with; None for the built-in engine
    mask: str | None = None  # an inpaint's mask picture's blob name
    control_images: tuple[str | None, ...] = ()  # each control unit's picture's blob name (None: the source)
    image_prompt_images: tuple[str, ...] = ()  # each image prompt's picture's blob name

    def to_dict(self) -> dict[str, Any]:
        """The stored form: one flat JSON object (the same as before this type existed)."""
        return {**self.fields, "source": self.source, "style_image": self.style_image,
                **({"model_sha256": self.model_sha256} if self.model_sha256 else {}),
                **({"mask": self.mask} if self.mask else {}),
                **({"control_images": list(self.control_images)} if self.control_images else {}),
                **({"image_prompt_images": list(self.image_prompt_images)} if self.image_prompt_images else {})}

    def blob_names(self) -> list[str]:
        """Every picture the job reads from the image store (what a worker on another machine is sent)."""
        named = [self.source, self.style_image, self.mask, *self.control_images, *self.image_prompt_images]
        return list(dict.fromkeys(name for name in named if name))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRequest:
        return cls(data["source"], {key: value for key, value in data.items() if key not in STORED_APART},
                   data.get("style_image"), data.get("model_sha256"), data.get("mask"),
                   tuple(data.get("control_images", ())), tuple(data.get("image_prompt_images", ())))

    def generation_request(self, blobs: BlobStore, default_model: str | None = None) -> GenerationRequest:
        """The engine's request, its images read from ``blobs``; ``default_model`` for jobs stored before models
        were fixed at submission."""
        from img2img.engine.request import GenerationRequest

        values = dict(self.fields)
        values["model"] = values.get("model") or default_model
        size = values.pop("size", None)
        inpaint = inpaint_part(values.pop("inpaint", None), blobs.path(self.mask) if self.mask else None)
        control = control_part(values.pop("control", None),
                               [blobs.path(name) if name else None for name in self.control_images])
        prompts = prompt_part(values.pop("image_prompts", None),
                              [blobs.path(name) for name in self.image_prompt_images])
        return GenerationRequest(source=blobs.path(self.source).read_bytes(),  # notes say "upload", not our path
                                 size=tuple(size) if size else None,
                                 style_image=blobs.path(self.style_image) if self.style_image else None,
                                 inpaint=inpaint, control=control, image_prompts=prompts, **values)


def inpaint_part(values: dict[str, Any] | None, mask: Any) -> Inpaint | None:
    """The request's ``Inpaint`` from its JSON fields and its mask picture (None: none, or the word in the fields)."""
    from img2img.engine.inpaint import Inpaint

    if values is None and mask is None:
        return None
    values = dict(values or {})
    word = values.pop("mask", None)
    outpaint = values.pop("outpaint", None)
    return Inpaint(mask=mask if mask is not None else word,
                   outpaint=tuple(outpaint) if outpaint is not None else (0, 0, 0, 0), **values)


def control_part(values: list[dict[str, Any]] | None, images: list[Any]) -> tuple[ControlUnit, ...]:
    """The request's control units from their JSON fields and their pictures, in order (None: the source)."""
    from img2img.engine.control import unit_from

    units = list(values or [])
    pictures = [*images, *[None] * (len(units) - len(images))]
    return tuple(unit_from({**{key: value for key, value in unit.items() if value is not None or key == "image"},
                            "image": picture}, f"control.{number}")
                 for number, (unit, picture) in enumerate(zip(units, pictures, strict=False)))


def prompt_part(values: list[dict[str, Any]] | None, images: list[Any]) -> tuple[ImagePrompt, ...]:
    """The request's image prompts from their JSON fields (their weights) and their pictures, in order."""
    from img2img.engine.image_prompt import ImagePrompt
    from img2img.errors import InvalidArgument

    entries = list(values or [])
    if len(images) != len(entries):
        raise InvalidArgument("image_prompts", f"a picture for each of the {len(entries)} image prompts",
                              f"{len(images)} pictures")
    return tuple(ImagePrompt(image, **{key: value for key, value in entry.items() if key != "image"})
                 for entry, image in zip(entries, images, strict=True))
