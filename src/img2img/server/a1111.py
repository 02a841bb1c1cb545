"""The A1111-compatible API under /sdapi/v1: field names, types and defaults as A1111 1.10 documents them.

``POST /sdapi/v1/img2img`` goes through the same queue as the native API and answers when its job ends; the wait
holds no thread (it awaits the job's events), so any number of waiting clients costs nothing. Fields
we do not support are accepted; those set to anything but A1111's default are named in ``info.warnings`` and in
the server log, never silently dropped.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from img2img.engine.fields import MAX_PROMPT_CHARS
from img2img.engine.inpaint import MAX_PADDING
from img2img.engine.request import FIELDS
from img2img.engine.seeds import MAX_SEED
from img2img.server.auth import Caller
from img2img.server.deps import CallerDep, ServiceDep
from img2img.server.service import ApiError, Service, decode_base64

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])
log = logging.getLogger("img2img.server")
Count = Annotated[int, Field(ge=-1, le=2**31 - 1)]  # fields we accept and ignore: any sane integer
RESIZE_MODES = {0: "just", 1: "crop", 2: "fill"}
SUPPORTED = {"prompt", "negative_prompt", "init_images", "denoising_strength", "cfg_scale", "steps", "sampler_name",
             "sampler_index", "scheduler", "seed", "batch_size", "n_iter", "width", "height", "resize_mode",
             "override_settings", "send_images", "save_images", "do_not_save_samples", "do_not_save_grid",
             "alwayson_scripts", "image_cfg_scale"}
INPAINT = {"mask", "mask_blur", "mask_blur_x", "mask_blur_y", "inpainting_fill", "inpaint_full_res",
           "inpaint_full_res_padding", "inpainting_mask_invert"}
FILLS = ("fill", "original", "noise", "nothing")  # A1111's inpainting_fill 0..3 ("Masked content")
HIRES = {"enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
         "hr_sampler_name", "hr_prompt", "hr_negative_prompt"}
# The override_settings that act here (token_merging_ratio: A1111's ToMe setting, our merge_tokens).
OVERRIDES = {"sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_vae", "token_merging_ratio"}


class ProcessingRequest(BaseModel):
    """The fields A1111's txt2img and img2img requests share; unknown fields are accepted and reported."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    styles: list[str] | None = None
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed: Count = -1
    subseed_strength: float = 0
    seed_resize_from_h: Count = -1
    seed_resize_from_w: Count = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=64)
    steps: int = Field(50, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0, le=30)
    width: int = Field(512, ge=64, le=4096)
    height: int = Field(512, ge=64, le=4096)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float = Field(0.75, ge=0, le=1)
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    sampler_index: str = "Euler"
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)


class Img2ImgRequest(ProcessingRequest):
    """A1111's StableDiffusionImg2ImgProcessingAPI."""

    init_images: list[str] | None = None
    resize_mode: int = Field(0, ge=0, le=3)
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: Count = 4
    mask_blur_y: Count = 4
    mask_blur: Count | None = None
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(0, ge=0, le=MAX_PADDING)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


class Txt2ImgRequest(ProcessingRequest):
    """A1111's StableDiffusionTxt2ImgProcessingAPI: strength 1 from noise at width x height; with ``enable_hr``, a
    second img2img pass at ``hr_scale`` (hires fix) with ``denoising_strength``."""

    denoising_strength: float = Field(0.0, ge=0, le=1)  # used by hires fix only
    enable_hr: bool = False
    firstphase_width: Count = 0
    firstphase_height: Count = 0
    hr_scale: float = Field(2.0, ge=1, le=4)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=150)
    hr_resize_x: int = Field(0, ge=0, le=4096)
    hr_resize_y: int = Field(0, ge=0, le=4096)
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    firstpass_image: str | None = None
    force_task_id: str | None = None
    infotext: str | None = None


class PngInfoRequest(BaseModel):
    image: str = Field(max_length=40_000_000)


@router.post("/img2img")
async def img2img(body: Img2ImgRequest, who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """Run an img2img job through the queue and answer when it is done, as A1111 does."""
    if not body.init_images:
        raise ApiError(422, "invalid_request", "init_images should hold one base64 image, but it is empty",
                       "init_images")
    fields, warnings = _fields(body)
    fields |= {"strength": body.denoising_strength,
               "resize_mode": RESIZE_MODES.get(body.resize_mode, "just")}
    if body.resize_mode == 3:
        warnings.append("resize_mode 3 (latent upscale) is not supported; 0 (just resize) was used")
    source = decode_base64(body.init_images[0], "init_images", svc)
    pictures = _controls(body, fields, warnings, svc, source)
    mask = None
    if body.mask:
        mask = decode_base64(body.mask, "mask", svc)
        blur = body.mask_blur if body.mask_blur is not None else max(body.mask_blur_x, body.mask_blur_y)
        if body.mask_blur is None and body.mask_blur_x != body.mask_blur_y:
            warnings.append(f"mask_blur_x and mask_blur_y differ; both were {blur}")
        fields["inpaint"] = {"mask_blur": blur, "invert_mask": bool(body.inpainting_mask_invert),
                             "inpaint_area": "masked" if body.inpaint_full_res else "whole",
                             "masked_padding": body.inpaint_full_res_padding,
                             "masked_content": FILLS[body.inpainting_fill]}
    outputs = await _run(svc, who, fields, source, warnings, "img2img", mask, **pictures)
    return _answer(body, fields, outputs, warnings)


@router.post("/txt2img")
async def txt2img(body: Txt2ImgRequest, who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """Text to image (strength 1 from noise at width x height) through the same queue; with ``enable_hr``, each
    image is upscaled and repainted at ``denoising_strength`` (A1111's hires fix)."""
    fields, warnings = _fields(body)
    fields["strength"] = 1.0
    pictures = _controls(body, fields, warnings, svc, None)
    outputs = await _run(svc, who, fields, _canvas(fields["size"]), warnings, "txt2img", **pictures)
    if body.enable_hr:
        outputs = [await _hires(svc, who, body, fields, output, warnings, pictures) for output in outputs]
    return _answer(body, fields, outputs, warnings)


def _controls(body: ProcessingRequest, fields: dict[str, Any], warnings: list[str], svc: Service,
              source: bytes | None) -> dict[str, Any]:
    """The ControlNet extension's units of ``body`` set in ``fields``; their pictures returned, as ``_run`` takes
    them (``source``: the init image, None for txt2img)."""
    from img2img.server.a1111_controlnet import units

    control_images, prompt_images, more = units(body.alwayson_scripts, svc, fields, source)
    warnings += more
    return {"control_images": control_images, "prompt_images": prompt_images}


async def _run(svc: Service, who: Caller, fields: dict[str, Any], source: bytes, warnings: list[str],
               route: str, mask: bytes | None = None, control_images: list[bytes | None] | None = None,
               prompt_images: list[bytes] | None = None) -> list[dict[str, Any]]:
    """Queue one job, await its end and return its outputs, each with its PNG's bytes."""
    for warning in warnings:
        log.warning("sdapi/v1/%s: %s", route, warning)
    submitted = await asyncio.to_thread(lambda: svc.submit(who, fields, source, mask=mask,
                                                           control_images=control_images,
                                                           prompt_images=prompt_images))
    job = await svc.wait(who, submitted.id)
    if job.state != "done":
        status, code = (409, "interrupted") if job.state == "cancelled" else (422, "failed")
        raise ApiError(status, code, job.error or job.state)
    return [output | {"png": svc.blobs.read(output["image"]), "job": job} for output in job.outputs]


async def _hires(svc: Service, who: Caller, body: Txt2ImgRequest, fields: dict[str, Any], output: dict[str, Any],
                 warnings: list[str], pictures: dict[str, Any]) -> dict[str, Any]:
    """Hires fix for one image: upscale it with ``hr_upscaler``, then repaint it at ``denoising_strength``."""
    from img2img.server.a1111_extras import resize

    width, height = body.hr_resize_x or round(output["width"] * body.hr_scale), body.hr_resize_y or round(
        output["height"] * body.hr_scale)
    size = (width // 8 * 8, height // 8 * 8)
    upscaler = body.hr_upscaler
    if upscaler is not None and upscaler.startswith("Latent"):
        warnings.append(f"hr_upscaler {upscaler!r} (latent upscale) is not supported; Lanczos was used")
        upscaler = "Lanczos"
    picture = resize(Image.open(io.BytesIO(output["png"])).convert("RGB"), size, upscaler, "hr_upscaler")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    second = fields | {"strength": body.denoising_strength, "size": size, "num_images": 1, "seed": output["seed"],
                       "steps": body.hr_second_pass_steps or fields["steps"], "prompt": body.hr_prompt or
                       fields["prompt"], "negative_prompt": body.hr_negative_prompt or fields["negative_prompt"]}
    if body.hr_sampler_name:
        second["sampler"] = body.hr_sampler_name
    return (await _run(svc, who, second, buffer.getvalue(), [], "txt2img", **pictures))[0]


def _answer(body: ProcessingRequest, fields: dict[str, Any], outputs: list[dict[str, Any]], warnings: list[str]
            ) -> dict[str, Any]:
    """A1111's answer: the images as base64, the request as given, and ``info`` (a JSON string)."""
    images = [base64.b64encode(output["png"]).decode("ascii") for output in outputs]
    seeds = [output["seed"] for output in outputs]
    infotexts = [output["parameters"] for output in outputs]
    first, job = outputs[0], outputs[0]["job"]
    info = {
        "prompt": body.prompt, "all_prompts": [body.prompt] * len(images), "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * len(images), "seed": seeds[0], "all_seeds": seeds,
        "subseed": -1, "all_subseeds": [-1] * len(images), "subseed_strength": 0, "width": first["width"],
        "height": first["height"], "sampler_name": job.request.fields.get("sampler") or "", "cfg_scale": body.cfg_scale,
        "steps": body.steps, "batch_size": body.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": job.request.fields.get("model") or "", "sd_model_hash": _model_hash(infotexts[0]),
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": body.denoising_strength,
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": infotexts, "styles": [],
        "job_timestamp": _timestamp(job.created), "clip_skip": fields.get("clip_skip", 1),
        "is_using_inpainting_conditioning": _inpainting_model(first["png"]), "version": "img2img",
        "warnings": warnings, "job_id": job.id,
    }
    parameters = body.model_dump() | ({"init_images": None, "mask": None} if isinstance(body, Img2ImgRequest) else {})
    return {"images": images if body.send_images else [], "parameters": parameters, "info": json.dumps(info)}


def _canvas(size: tuple[int, int]) -> bytes:
    """The source of a text-to-image job: a plain canvas of the size asked for (strength 1 never reads its
    pixels; it gives the job its size and its record a source)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (127, 127, 127)).save(buffer, format="PNG")
    return buffer.getvalue()


@router.get("/progress")
def progress(who: CallerDep, svc: ServiceDep, skip_current_image: bool = False) -> dict[str, Any]:
    """Progress of your running job (A1111 has one job at a time; here it is the caller's latest)."""
    job = svc.store.running(who.owner)
    state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
             "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    fraction = job.step / job.total if job.total else 0.0
    elapsed = time.time() - (job.started or time.time())
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    state |= {"job": job.id, "job_count": 1, "job_timestamp": _timestamp(job.started or job.created),
              "sampling_step": job.step, "sampling_steps": job.total}
    preview = None if skip_current_image else svc.hub.preview(job.id)
    image = preview.split(",", 1)[1] if preview else None
    return {"progress": round(fraction, 4), "eta_relative": round(eta, 2), "state": state, "current_image": image,
            "textinfo": f"step {job.step} of {job.total}"}


@router.post("/interrupt")
def interrupt(who: CallerDep, svc: ServiceDep) -> None:
    """Stop your running job at its next step."""
    job = svc.store.running(who.owner)
    if job is not None:
        svc.cancel(who, job.id)


@router.post("/skip")
def skip(who: CallerDep, svc: ServiceDep) -> None:
    """As interrupt: a job here is one request, so skipping its image stops it."""
    interrupt(who, svc)


@router.get("/options")
def get_options(who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """Your options; only ``sd_model_checkpoint`` changes anything here."""
    from img2img.models.registry import ModelRegistry

    saved = svc.store.options(who.owner)
    model = saved.get("sd_model_checkpoint") or svc.settings.model or ModelRegistry().default_name() or "builtin"
    return {"sd_model_checkpoint": model, "samples_format": "png", "sd_checkpoint_hash": None} | {
        key: value for key, value in saved.items() if key != "sd_model_checkpoint"}


@router.post("/options")
def set_options(body: dict[str, Any], who: CallerDep, svc: ServiceDep) -> None:
    """Set ``sd_model_checkpoint`` (your default model); other options are kept but change nothing."""
    for key, value in body.items():
        if key == "sd_model_checkpoint":
            name = str(value).split(" [", 1)[0]  # A1111 titles are "name [hash]"
            svc.store.set_option(who.owner, key, svc.model_name(who, name))
        elif isinstance(value, str | int | float | bool) or value is None:
            log.warning("sdapi/v1/options: %s is accepted but has no effect here", key)
            svc.store.set_option(who.owner, key, value)


@router.post("/png-info")
def png_info(body: PngInfoRequest, _who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """The generation parameters inside an image (PNG text chunks, or EXIF for JPEG and WebP)."""
    from img2img.errors import SourceImageError
    from img2img.imageio.metadata import read_metadata
    from img2img.imageio.source import open_checked

    data = decode_base64(body.image, "image", svc)
    try:
        with open_checked(data, svc.settings.max_pixels, "image") as image:  # a decompression bomb is refused here
            image.verify()
    except SourceImageError as exc:
        raise ApiError(422, "invalid_image", str(exc), "image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(422, "invalid_image", f"image should be a PNG, JPEG or WebP file ({exc})", "image") from exc
    metadata = read_metadata(io.BytesIO(data))  # type: ignore[arg-type]
    text = metadata.parameters or ""
    items = {"parameters": text} if text else {}
    if metadata.record:
        items["img2img"] = metadata.record
    return {"info": text, "items": items, "parameters": parse_parameters(text)}


def parse_parameters(text: str) -> dict[str, Any]:
    """A1111's infotext as a dict: Prompt, Negative prompt, then the "Key: value" pairs of the last line."""
    if not text:
        return {}
    lines = text.strip().split("\n")
    settings_line = lines[-1] if "Steps: " in lines[-1] else ""
    body = lines[:-1] if settings_line else lines
    prompt, negative = [], []
    for line in body:
        if line.startswith("Negative prompt:") or negative:
            negative.append(line.removeprefix("Negative prompt:").strip())
        else:
            prompt.append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for part in _split_pairs(settings_line):
        key, _, value = part.partition(":")
        value = value.strip().strip('"')
        result[key.strip()] = _number(value)
        if key.strip() == "Size" and "x" in value:
            result["Size-1"], result["Size-2"] = (_number(side) for side in value.split("x", 1))
    return result


def _split_pairs(line: str) -> list[str]:
    """Split on ", " outside double quotes."""
    parts, current, quoted = [], "", False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted and line[index + 1:index + 2] == " ":
            parts.append(current)
            current = ""
            continue
        current += char
    if current.strip():
        parts.append(current.strip())
    return [part.strip() for part in parts if ":" in part]


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _fields(body: ProcessingRequest) -> tuple[dict[str, Any], list[str]]:
    """The native request fields for an A1111 request, and a warning for each field we do not honour."""
    defaults = type(body)()
    supported = SUPPORTED | (HIRES if isinstance(body, Txt2ImgRequest) and body.enable_hr else set()) | (
        INPAINT if isinstance(body, Img2ImgRequest) and body.mask else set())
    warnings = [f"{name} is not supported and was ignored" for name in type(body).model_fields
                if name not in supported and getattr(body, name) != getattr(defaults, name)]
    warnings += [f"{name} is not an A1111 {type(body).__name__.removesuffix('Request').lower()} field and was "
                 "ignored" for name in (body.model_extra or {})]
    sampler = body.sampler_name or body.sampler_index
    if body.scheduler and body.scheduler.lower() == "karras" and not sampler.endswith("Karras"):
        sampler += " Karras"
    elif body.scheduler and body.scheduler.lower() not in ("automatic", "karras"):
        warnings.append(f"scheduler {body.scheduler!r} is not supported; the sampler's own schedule was used")
    width, height = body.width // 8 * 8, body.height // 8 * 8
    if (width, height) != (body.width, body.height):
        warnings.append(f"width and height are rounded down to multiples of 8: {width}x{height}")
    overrides = body.override_settings or {}
    model = overrides.get("sd_model_checkpoint")
    warnings += [f"override_settings.{key} is not supported and was ignored" for key in overrides
                 if key not in OVERRIDES]
    fields = {spec.name: getattr(body, spec.a1111) for spec in FIELDS  # the one-to-one fields
              if spec.a1111 in type(body).model_fields}
    fields |= {
        "sampler": sampler, "num_images": body.batch_size * body.n_iter, "size": (width, height),
        "model": str(model).split(" [", 1)[0] if model else None,
    }
    if overrides.get("CLIP_stop_at_last_layers") is not None:
        fields["clip_skip"] = overrides["CLIP_stop_at_last_layers"]
    if overrides.get("token_merging_ratio"):
        fields["merge_tokens"] = overrides["token_merging_ratio"]
    vae = overrides.get("sd_vae")
    if isinstance(vae, str) and vae not in ("Automatic", "None", ""):
        fields["vae"] = vae.removesuffix(".safetensors")
    return fields, warnings


def _inpainting_model(png: bytes) -> bool:
    """Whether an inpainting model (9-channel UNet) made the picture, from its record."""
    from img2img.imageio.metadata import read_metadata

    record = read_metadata(io.BytesIO(png)).record
    return bool(record) and json.loads(record).get("model_family", "").endswith("inpainting")


def _model_hash(infotext: str) -> str | None:
    value = parse_parameters(infotext).get("Model hash")
    return str(value) if value is not None else None


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%d%H%M%S")
