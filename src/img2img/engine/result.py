"""What a generation returns: the images and the record of everything that produced them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from PIL import Image

from img2img.engine.control import KINDS as CONTROL_KINDS
from img2img.engine.control import infotext, units_from_record
from img2img.engine.image_prompt import KIND as IMAGE_PROMPT_KIND
from img2img.engine.image_prompt import prompts_from_record
from img2img.engine.inpaint import INPAINT_FIELDS, SIDES, Inpaint
from img2img.engine.request import FIELDS, GenerationRequest
from img2img.engine.strength_finder import Search
from img2img.errors import InvalidArgument

# The request's fields that the built-in style engine has no use for (its records hold placeholders).
NOT_STYLE: tuple[str, ...] = ("guidance_scale", "steps", "sampler")
# The request's fields that a record keeps: all but num_images (a record describes one image).
RECORDED: tuple[str, ...] = (*(spec.name for spec in FIELDS if spec.name != "num_images"), "size")


@dataclass(frozen=True)
class GenerationRecord:
    """Everything that determines one output image: the request that made it, resolved (this image's seed, the
    model family's steps, guidance and sampler, the model's name), and what the run found. Deterministic: it holds
    no timestamps or timings, so that the same inputs give the same bytes when it is embedded in a file.

    The request's fields read as the record's own (``record.seed`` is ``record.request.seed``). The request
    holds no images: the source is known by ``source_sha256`` and a style picture by ``style_image_sha256``.
    """

    request: GenerationRequest
    engine: str  # "diffusion" or "style" (the built-in style engine)
    steps_run: int  # sampler steps actually run; 0 at strength 0
    start_sigma: float  # the noise level the run started from; 0 at strength 0
    width: int  # of the output
    height: int
    working_width: int  # the size the model ran at
    working_height: int
    model_family: str
    model_hash: str  # full SHA-256 of the weights
    source_sha256: str  # of the source's decoded RGB pixels
    device: str
    dtype: str
    quantize: str = "none"  # "int8": the UNet's weights were approximated in 8 bits
    versions: dict[str, str] = field(default_factory=dict)
    style_image_sha256: str | None = None  # the built-in engine's style picture, if any
    conditions: tuple[dict[str, Any], ...] = ()  # each conditioner's metadata, beside the prompt's
    loras: tuple[dict[str, Any], ...] = ()  # the prompt's LoRAs as they ran: name, weight and file SHA-256
    embeddings: tuple[dict[str, Any], ...] = ()  # the textual-inversion embeddings the prompts named, by hash
    vae_sha256: str | None = None  # the VAE used instead of the model's (request.vae), by hash
    mask_sha256: str | None = None  # the inpaint's mask picture, by the hash of its greyscale pixels
    retention: dict[str, float] = field(default_factory=dict)  # how much of the source it kept (imageio.retention)

    def __getattr__(self, name: str) -> Any:
        """The request's fields, read through (called only for names the record itself lacks)."""
        request = self.__dict__.get("request")
        if name in RECORDED and request is not None:
            return getattr(request, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_json(self) -> str:
        """One flat JSON object: the request's fields beside the run's (the layout of every version so far)."""
        data = {name: getattr(self.request, name) for name in RECORDED}
        data |= {f.name: getattr(self, f.name) for f in fields(self) if f.name != "request"}
        for name in ("conditions", "loras", "embeddings", "vae_sha256", "mask_sha256", "retention"):  # as before them
            if not data[name]:
                del data[name]
        inpaint = self.request.inpaint
        if inpaint is not None:  # its fields beside the others, and the mask when it is a word ("alpha")
            data |= {spec.name: getattr(inpaint, spec.name) for spec in INPAINT_FIELDS}
            data |= {"outpaint": list(inpaint.outpaint), "mask": inpaint.mask}
        return json.dumps(data, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> GenerationRecord:
        """Read a record written by ``to_json`` of this or an earlier version: fields that it lacks take their
        defaults, fields added by later versions are ignored."""
        try:
            data = json.loads(text)
            asked = {spec.name: spec.legacy for spec in FIELDS if spec.legacy is not None}  # before they existed
            asked |= {key: value for key, value in data.items() if key in RECORDED}
            if asked.get("size") is not None:
                asked["size"] = tuple(asked["size"])
            if "inpaint_area" in data:
                asked["inpaint"] = Inpaint(mask=data.get("mask"), outpaint=tuple(data.get("outpaint", (0,) * 4)),
                                           **{spec.name: data[spec.name] for spec in INPAINT_FIELDS
                                              if spec.name in data})
            ran = {f.name: data[f.name] for f in fields(cls) if f.name != "request" and f.name in data}
            for name in ("conditions", "loras", "embeddings"):
                if ran.get(name):
                    ran[name] = tuple(ran[name])
            return cls(request=GenerationRequest(source="", **asked), **ran)
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise InvalidArgument("record", "an img2img JSON record", text[:80]) from exc

    def to_request(
        self, source: Image.Image | Path | str, style_image: Image.Image | Path | str | None = None,
        mask: Image.Image | Path | str | None = None, control_images: Sequence[Image.Image | Path | str] = (),
        image_prompts: Sequence[Image.Image | Path | str] = (),
    ) -> GenerationRequest:
        """The request that produced this image, to run again on ``source`` (``img2img reproduce``), with the
        inpaint's ``mask`` picture when it had one (its hash is checked when it runs: ``check_mask``), the
        control units' own pictures and the image prompts' pictures, in order (checked now)."""
        if self.mask_sha256 and mask is None:
            raise InvalidArgument("mask", f"the mask picture this image was made with (SHA-256 "
                                  f"{self.mask_sha256[:12]}...)", None)
        others = [str(entry.get("kind", "?")) for entry in self.conditions
                  if entry.get("kind") not in (*CONTROL_KINDS, IMAGE_PROMPT_KIND)]
        if others:
            raise InvalidArgument("record", "one without conditioners of the library's own (their objects cannot "
                                  "be rebuilt from a file)", ", ".join(others))
        units = units_from_record(self.controls, list(control_images))
        prompts = prompts_from_record(self.image_prompt, list(image_prompts))
        request = replace(self.request, source=source, style_image=style_image, control=units, image_prompts=prompts)
        if request.inpaint is not None and self.mask_sha256:
            request = replace(request, inpaint=replace(request.inpaint, mask=mask))
        if self.engine == "style":  # the style engine has no guidance, steps or sampler to set
            request = replace(request, **dict.fromkeys(NOT_STYLE))
        return request

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
            "Model family": self.model_family,  # ours: the kind of model that painted it (SD 1.x ... SD 3.x)
        }
        if self.request.image_cfg is not None:  # edit models' image guidance, as A1111 names it
            fields["Image CFG scale"] = _number(self.request.image_cfg)
        if self.clip_skip > 1:
            fields["Clip skip"] = self.clip_skip
        if self.request.cache_steps > 1:  # ours: A1111 has no step caching
            fields["Cache steps"] = self.request.cache_steps
        if self.request.merge_tokens > 0:  # the name of A1111's own token merging option
            fields["Token merging ratio"] = _number(self.request.merge_tokens)
            if self.request.merge_levels > 1:  # ours: ToMe's max_downsample, which A1111 keeps at 1
                fields["Token merging levels"] = self.request.merge_levels
        if self.loras:
            hashes = ", ".join(f"{lora['name']}: {lora['sha256'][:12]}" for lora in self.loras)
            fields["Lora hashes"] = f'"{hashes}"'
        if self.vae_sha256:
            fields["VAE hash"], fields["VAE"] = self.vae_sha256[:10], Path(str(self.vae)).name
        if self.embeddings:
            hashes = ", ".join(f"{entry['name']}: {entry['sha256'][:12]}" for entry in self.embeddings)
            fields["TI hashes"] = f'"{hashes}"'
        inpaint = self.request.inpaint
        if inpaint is not None:  # A1111's names, and ours where it has none
            fields["Mask blur"] = inpaint.mask_blur
            if inpaint.inpaint_area == "masked":
                fields["Inpaint area"], fields["Masked area padding"] = "Only masked", inpaint.masked_padding
            fields["Masked content"] = inpaint.masked_content
            if inpaint.invert_mask:
                fields["Mask mode"] = "Inpaint not masked"
            if self.mask_sha256:
                fields["Mask hash"] = self.mask_sha256[:10]
            if inpaint.outpaints:
                fields["Outpaint"] = '"' + ", ".join(f"{side}={pixels}" for side, pixels in zip(
                    SIDES, inpaint.outpaint, strict=True) if pixels) + '"'
        for number, entry in enumerate(self.controls):
            fields[f"ControlNet {number}"] = infotext(entry)
        if self.image_prompt:  # as A1111's IP-Adapter units are named, with our mode and each picture's weight
            entry = self.image_prompt
            pictures = ", ".join(f"{item['sha256'][:10]}: {item['weight']:g}" for item in entry["images"])
            fields["IP-Adapter"] = (f'"Model: {entry["adapter"]} [{str(entry["adapter_sha256"])[:8]}], Mode: '
                                    f'{entry["mode"]}, Images: {pictures}"')
        lines.append(", ".join(f"{key}: {value}" for key, value in fields.items()))
        return "\n".join(lines)

    @property
    def image_prompt(self) -> dict[str, Any] | None:
        """The image prompts' entry among the conditioners', if any."""
        return next((entry for entry in self.conditions if entry.get("kind") == IMAGE_PROMPT_KIND), None)

    @property
    def controls(self) -> tuple[dict[str, Any], ...]:
        """The control units' entries among the conditioners', in the request's order."""
        return tuple(entry for entry in self.conditions if entry.get("kind") in CONTROL_KINDS)


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass
class GenerationResult:
    images: list[Image.Image]  # RGB, or RGBA with keep_alpha and a transparent source
    records: list[GenerationRecord]  # one per image; each describes its image completely
    seconds: float  # wall time of the call, model loading included
    image_seconds: list[float] = field(default_factory=list)  # per image, without model loading
    notes: list[str] = field(default_factory=list)  # warnings for the user (a soft source, a GIF's frames)
    search: Search | None = None  # how the strength was found, for a retention target (keep_structure, ...)

    @property
    def seeds(self) -> list[int]:
        return [record.seed for record in self.records]

    @property
    def record(self) -> GenerationRecord:
        """The first image's record."""
        return self.records[0]
