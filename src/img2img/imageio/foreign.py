"""Generation parameters written by other tools, read with the field's maintained parser, sd-parsers.

sd-parsers knows A1111 (its text chunk, JPEG/WebP UserComment and the "stealth" parameters hidden in the alpha
channel), ComfyUI (``prompt`` and ``workflow`` graphs, one entry per sampler node), InvokeAI (``invokeai_metadata``,
``sd-metadata`` and the older Dream line), Fooocus and NovelAI. This module turns what it finds into one shape,
and into request fields: sampler names from ComfyUI, InvokeAI, Fooocus and NovelAI mapped to ours, and what has no
counterpart here named in a warning.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from img2img.engine.samplers import SAMPLERS
from img2img.errors import SourceImageError
from img2img.imageio.source import DEFAULT_MAX_PIXELS, open_checked

STEALTH_MAX_PIXELS = 4_000_000  # reading the alpha channel's low bits is slow: only smaller pictures are searched
# Whose JSON a broken file most likely carries: the text chunk's name and the tool that writes it.
JSON_CHUNKS = {"prompt": "ComfyUI", "workflow": "ComfyUI", "invokeai_metadata": "InvokeAI",
               "sd-metadata": "InvokeAI", "Comment": "NovelAI"}
# ComfyUI's sampler names (which Fooocus and, after "k_", NovelAI and old InvokeAI share) to ours.
COMFY_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "euler_a": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a", "kdpm_2": "DPM2", "kdpm_2_a": "DPM2 a", "lms": "LMS", "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_sde": "DPM++ SDE", "ddim": "DDIM", "ddpm": "DDPM", "plms": "PLMS",
    "pndm": "PLMS", "uni_pc": "UniPC", "unipc": "UniPC", "uni_pc_bh2": "UniPC", "lcm": "LCM",
}
PLAIN_SCHEDULES = {"", "normal", "simple", "sgm_uniform", "ddim_uniform", "automatic", "uniform"}


@dataclass(frozen=True)
class FoundSampler:
    """One sampler's settings as another tool recorded them (ComfyUI graphs may hold several)."""

    sampler: str | None  # the tool's own name
    scheduler: str | None  # the noise schedule, where the tool records it apart ("karras", ...)
    prompt: str
    negative_prompt: str
    seed: int | None
    steps: int | None
    cfg: float | None
    denoise: float | None  # strength
    model: str | None


@dataclass(frozen=True)
class FoundParameters:
    generator: str  # "AUTOMATIC1111", "ComfyUI", "InvokeAI", "Fooocus", "NovelAI"
    samplers: tuple[FoundSampler, ...]
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        return {"generator": self.generator, "width": self.width, "height": self.height,
                "samplers": [asdict(sampler) for sampler in self.samplers]}


def read_foreign(path: Path | io.BytesIO, field: str = "FILE") -> FoundParameters:
    """The parameters another tool wrote into the image at ``path``; a one-line error naming ``field`` when there
    are none."""
    from PIL import Image, UnidentifiedImageError
    from sd_parsers import ParserManager
    from sd_parsers.extractors import Eagerness

    name = path if isinstance(path, Path) else "the upload"
    try:
        with Image.open(path) as image:
            image.load()
            size, text = image.size, dict(getattr(image, "text", {}) or {})
            manager = ParserManager()
            found = manager.parse(image, eagerness=Eagerness.DEFAULT)
            if found is None and image.format == "PNG" and image.mode in ("RGBA", "LA") and \
                    size[0] * size[1] <= STEALTH_MAX_PIXELS:
                rgba = image if image.mode == "RGBA" else image.convert("RGBA")
                rgba.format = "PNG"  # sd-parsers picks its readers by format, which a conversion drops
                found = manager.parse(rgba, eagerness=Eagerness.EAGER)  # A1111's stealth info in the alpha bits
    except UnidentifiedImageError as exc:
        raise SourceImageError(f"{field} should be an image, but {name} is not one") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise SourceImageError(f"{field} should be a readable image, but {name} is truncated or corrupt ({exc})"
                               ) from exc
    if found is None:
        raise SourceImageError(f"{field} should hold generation parameters (img2img, A1111, ComfyUI, InvokeAI, "
                               f"Fooocus, NovelAI), but {name} has none{_broken_json(text)}")
    samplers = tuple(_sampler(sampler, found.metadata) for sampler in found.samplers)
    if not samplers:
        raise SourceImageError(f"{field} should hold generation parameters, but the {found.generator.value} data in "
                               f"{name} names no sampler")
    return FoundParameters(found.generator.value, samplers, *size)


def _broken_json(text: dict[str, Any]) -> str:
    for key, tool in JSON_CHUNKS.items():
        value = text.get(key)
        if isinstance(value, str):
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                return f" that can be read: its {tool} '{key}' data is not valid JSON ({exc})"
    return ""


def _sampler(sampler: Any, metadata: dict[str, Any]) -> FoundSampler:
    """One sampler's settings; what the tool keeps beside its samplers (A1111's "Denoising strength", NovelAI's
    steps) is taken from the file's metadata."""
    shared = {"denoising_strength" if key == "Denoising strength" else key: value for key, value in metadata.items()
              if isinstance(value, str | int | float)}
    values = {**shared, **dict(sampler.parameters)}
    return FoundSampler(
        sampler=sampler.name or None, scheduler=_text(values.get("scheduler")),
        prompt=", ".join(str(p) for p in sampler.prompts),
        negative_prompt=", ".join(str(p) for p in sampler.negative_prompts),
        seed=_number(values.get("seed"), int), steps=_number(values.get("steps"), int),
        cfg=_number(values.get("cfg_scale"), float),
        denoise=_number(values.get("denoise", values.get("denoising_strength", values.get("strength"))), float),
        model=str(sampler.model) if sampler.model else None,
    )


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _number(value: Any, kind: type) -> Any:
    try:
        return None if value is None else kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        return None


def our_sampler(name: str | None, scheduler: str | None) -> tuple[str | None, str | None]:
    """Our name for another tool's sampler and schedule, and a warning when it has no exact counterpart."""
    if not name:
        return None, None
    schedule = (scheduler or "").strip().lower()
    for known in SAMPLERS:  # A1111's own names, maybe with its separate "Schedule type"
        if name.strip().lower() == known.lower():
            if schedule == "karras" and "karras" not in known.lower():
                if f"{known} Karras" in SAMPLERS:
                    return f"{known} Karras", None
                return known, f"{known} with the Karras schedule has no counterpart here; {known} is used"
            if schedule in PLAIN_SCHEDULES or schedule == "karras":
                return known, None
            return known, f"schedule {scheduler!r} has no counterpart here; {known} uses its own"
    key = name.strip().lower().removeprefix("k_").removesuffix("_gpu")
    if key.endswith("_k"):  # InvokeAI's Karras variants: dpmpp_2m_k, euler_k, ...
        key, schedule = key.removesuffix("_k"), "karras"
    base = COMFY_SAMPLERS.get(key)
    if base is None:
        return None, f"sampler {name!r} has no counterpart here; the model's default is used"
    if schedule == "karras":
        if f"{base} Karras" in SAMPLERS:
            return f"{base} Karras", None
        return base, f"{name} with the Karras schedule has no counterpart here; {base} is used"
    if schedule not in PLAIN_SCHEDULES:
        return base, f"schedule {scheduler!r} has no counterpart here; {base} uses its own"
    return base, None


@dataclass(frozen=True)
class FoundRequest:
    """Request fields found in a picture, where they came from, and what did not carry over."""

    generator: str  # "img2img" for our own files
    fields: dict[str, Any]
    warnings: tuple[str, ...]


# Our record's fields that a new request leaves behind: the model (and its VAE), the sizes and the handling of the
# source are the new run's own. Every other request field is taken over.
NOT_TAKEN = ("model", "vae", "size", "max_side", "resize_mode", "background", "keep_alpha", "ip_adapter",
             "image_prompt_mode", "image_prompt_combine")


def params_from(picture: Path | str | bytes, field: str = "params_from", max_pixels: int = DEFAULT_MAX_PIXELS
                ) -> FoundRequest:
    """The generation parameters in ``picture`` (a path or a file's bytes) as GenerationRequest fields, from our own
    record or another tool's metadata: ``GenerationRequest(source=..., **params_from(path).fields, strength=0.4)``.
    Pictures over ``max_pixels`` are refused before they are decoded."""
    from img2img.imageio.metadata import read_metadata

    path: Any = io.BytesIO(picture) if isinstance(picture, bytes) else Path(picture)
    if isinstance(path, Path) and not path.is_file():
        raise SourceImageError(f"{field} should be an image file, but {path} does not exist")
    with open_checked(picture if isinstance(picture, bytes) else path, max_pixels, field):
        pass
    try:
        record = read_metadata(path).record
    except SourceImageError as exc:
        raise SourceImageError(str(exc).replace("FILE", field, 1)) from exc
    if record is not None:
        try:
            values = json.loads(record)
        except json.JSONDecodeError as exc:
            raise SourceImageError(f"{field} should hold a readable img2img record, but {path!s}'s is broken "
                                   f"({exc})") from exc
        from img2img.engine.result import NOT_STYLE, RECORDED

        left = NOT_TAKEN + NOT_STYLE if values.get("engine") == "style" else NOT_TAKEN
        taken = (name for name in RECORDED if name not in left)
        fields = {key: values[key] for key in taken if values.get(key) is not None}
        return FoundRequest("img2img", fields, tuple(_left_out(values)))
    found = read_foreign(path, field)
    fields, warnings = request_fields(found)
    return FoundRequest(found.generator, fields, tuple(warnings))


def _left_out(record: dict[str, Any]) -> list[str]:
    """Warnings for what a record holds beyond its fields: pictures that the file does not carry."""
    warnings = []
    units = [entry for entry in record.get("conditions") or () if entry.get("kind") in ("controlnet", "t2i-adapter")]
    if units:
        counted = f"{len(units)} control units are" if len(units) > 1 else "control unit is"
        warnings.append(f"the file's {counted} not taken over (give them with --control, or use img2img reproduce "
                        "with --control-image)")
    if any(entry.get("kind") == "image-prompt" for entry in record.get("conditions") or ()):
        warnings.append("the file's image prompts are not taken over (give them with --image-prompt, or use img2img "
                        "reproduce with --image-prompt)")
    if record.get("mask_sha256") or record.get("mask"):
        warnings.append("the file's inpaint mask is not taken over (give it with --mask, or use img2img reproduce)")
    return warnings


def request_fields(found: FoundParameters, index: int = 0) -> tuple[dict[str, Any], list[str]]:
    """GenerationRequest fields from sampler ``index`` of ``found``, and warnings for what did not carry over."""
    sampler = found.samplers[index]
    name, warning = our_sampler(sampler.sampler, sampler.scheduler)
    fields: dict[str, Any] = {"prompt": sampler.prompt, "negative_prompt": sampler.negative_prompt,
                              "seed": sampler.seed, "steps": sampler.steps, "guidance_scale": sampler.cfg,
                              "sampler": name}
    if sampler.denoise is not None and 0 < sampler.denoise <= 1:
        fields["strength"] = sampler.denoise
    warnings = [warning] if warning else []
    if len(found.samplers) > 1:
        warnings.append(f"the {found.generator} graph has {len(found.samplers)} samplers; the first one's settings "
                        "are used")
    if sampler.model:
        warnings.append(f"the file was made with model {sampler.model!r}; --model chooses the model here")
    return {key: value for key, value in fields.items() if value is not None}, warnings


def describe(found: FoundParameters) -> str:
    """The parameters as text, a line per setting and a block per sampler."""
    lines = [f"Generator: {found.generator}", f"Size: {found.width}x{found.height}"]
    for number, sampler in enumerate(found.samplers, start=1):
        if len(found.samplers) > 1:
            lines.append(f"Sampler {number} of {len(found.samplers)}:")
        schedule = f" ({sampler.scheduler})" if sampler.scheduler else ""
        values = [("Prompt", sampler.prompt), ("Negative prompt", sampler.negative_prompt), ("Seed", sampler.seed),
                  ("Steps", sampler.steps), ("CFG scale", sampler.cfg),
                  ("Sampler", f"{sampler.sampler}{schedule}" if sampler.sampler else None),
                  ("Denoising strength", sampler.denoise), ("Model", sampler.model)]
        indent = "  " if len(found.samplers) > 1 else ""
        lines += [f"{indent}{name}: {value}" for name, value in values if value not in (None, "")]
    return "\n".join(lines)
