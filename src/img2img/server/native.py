"""The native API under /v1: submit, read, stream, list, cancel, fetch images; models, samplers, styles, health."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field, ValidationError, create_model

from img2img.engine.control import MAX_UNITS, unit_fields
from img2img.engine.fields import FieldSpec, field_table
from img2img.engine.image_prompt import MAX_BLEND, ImagePrompt
from img2img.engine.inpaint import INPAINT_FIELDS, MAX_OUTPAINT
from img2img.engine.request import FIELDS
from img2img.engine.sizing import MAX_SIDE, MIN_SIDE
from img2img.errors import Img2ImgError
from img2img.server.auth import Caller
from img2img.server.deps import CallerDep, ServiceDep
from img2img.server.service import BUILTIN, ApiError, Service, decode_base64

router = APIRouter(prefix="/v1", tags=["native"])
KEEPALIVE_S = 15.0
MAX_INT64 = 2**63 - 1  # SQLite's integers
Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)]
# OpenAPI links: where a submitted job's id goes next (clients and schema-driven testers follow them).
_JOB_ID = {"job_id": "$response.body#/id"}
JOB_LINKS = {"responses": {202: {"description": "the job, queued", "links": {
    "read": {"operationId": "read_job", "parameters": _JOB_ID},
    "events": {"operationId": "job_events", "parameters": _JOB_ID},
    "source": {"operationId": "job_source", "parameters": _JOB_ID},
    "image": {"operationId": "job_image", "parameters": {**_JOB_ID, "index": 0}},
    "cancel": {"operationId": "cancel_job", "parameters": _JOB_ID},
}}}}


def _schema_fields(specs: tuple[FieldSpec, ...]) -> dict[str, Any]:
    """Pydantic fields for a table of field specs (``img2img.engine.fields``)."""
    fields: dict[str, Any] = {}
    for spec in specs:
        kind: Any = Literal[spec.choices] if spec.choices else spec.kind  # type: ignore[valid-type]
        constraints: dict[str, Any] = {}
        if spec.kind in (int, float) and spec.choices is None:
            constraints = {"ge": spec.low, "le": spec.high}
        elif spec.kind is str and spec.high is not None:
            constraints = {"max_length": int(spec.high)}
        fields[spec.name] = (kind if spec.default is not None else kind | None,
                             Field(spec.default, description=spec.help, **constraints))
    return fields


Pixels = Annotated[int, Field(ge=0, le=MAX_OUTPAINT)]
InpaintFields = create_model(  # type: ignore[call-overload]
    "InpaintFields", __config__=ConfigDict(extra="forbid"),
    __doc__="Repaint part of the source (img2img.Inpaint): the mask picture comes as ``mask`` beside the request.",
    **_schema_fields(INPAINT_FIELDS),
    mask=(Literal["alpha"] | None, Field(None, description="alpha: repaint the source's transparent pixels "
                                         "(instead of a mask picture)")),
    outpaint=(tuple[Pixels, Pixels, Pixels, Pixels], Field((0, 0, 0, 0), description="pixels to add on each side "
                                                          "(left, top, right, bottom), painted")))
ControlFields = create_model(  # type: ignore[call-overload]
    "ControlFields", __config__=ConfigDict(extra="forbid"),
    __doc__="A ControlNet or T2I-Adapter unit (img2img.ControlUnit).", **_schema_fields(unit_fields()),
    model=(str, Field(max_length=200, description="a ControlNet's or an adapter's name: registered, or a file or "
                      "folder in the ControlNet folder (GET /v1/controlnets)")),
    image=(str | None, Field(None, description="the unit's picture: base64 in a JSON job, \"upload\" for the next "
                             "control_images file of a form; none: the source")))
ImagePromptFields = create_model(  # type: ignore[call-overload]
    "ImagePromptFields", __config__=ConfigDict(extra="forbid"),
    __doc__="A reference picture and its weight (img2img.ImagePrompt).", **_schema_fields(field_table(ImagePrompt)),
    image=(str | None, Field(None, description="the picture: base64 in a JSON job, \"upload\" (or none) for the "
                             "next image_prompt_images file of a form")))
JobFields = create_model(  # type: ignore[call-overload]
    "JobFields", __config__=ConfigDict(extra="forbid"),
    __doc__="The request, as img2img.GenerationRequest takes it (without the images).", **_schema_fields(FIELDS),
    size=(tuple[Side, Side] | None, Field(None, description="the output size (width, height)")),
    inpaint=(InpaintFields | None, Field(None, description="repaint only part of the source, or grow its canvas")),
    control=(list[ControlFields], Field([], max_length=MAX_UNITS, description="structure control units")),
    image_prompts=(list[ImagePromptFields], Field([], max_length=MAX_BLEND, description="reference pictures "
                   "whose look steers the result (with ip_adapter; the built-in engine's style pictures)")))


class JsonJob(JobFields):  # type: ignore[valid-type, misc]
    source: str | None = Field(None, description="the source image file, base64 (a data: URL prefix is allowed); "
                               "required unless blend is given")
    blend: list[str] | None = Field(None, min_length=2, max_length=MAX_BLEND, description="2 to 5 pictures, base64, "
                                    "made into one as Midjourney's /blend: the first is the source, all of them are "
                                    "image prompts averaged by blend_weights; strength 1 unless given")
    blend_weights: list[float] | None = Field(None, description="the blend's relative weights (2,1: the first "
                                              "counts twice); none: equal")
    style_image: str | None = Field(None, description="a style picture, base64 (built-in engine only)")
    params_from: str | None = Field(None, description="a picture whose generation parameters (ours, A1111, ComfyUI, "
                                    "InvokeAI, Fooocus, NovelAI) the job starts from, base64; given fields override")
    mask: str | None = Field(None, description="a mask picture, base64: white repaints, black keeps (the inpaint "
                             "field's options apply)")
    recipe: str | None = Field(None, max_length=40, description="a recipe (GET /v1/recipes): its prompt template "
                               "around the prompt, its strength (or retention target) and negative prompt where "
                               "the job gives none; with the built-in engine its style")


@router.post("/jobs", status_code=202, **JOB_LINKS)
def submit_json(body: JsonJob, who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """Queue a job from JSON with the source image in base64."""
    params = decode_base64(body.params_from, "params_from", svc) if body.params_from else None
    fields, notes = _with_params(body, params, svc.settings.max_pixels)
    fields = _with_recipe(body, fields, who, svc)
    if body.blend:
        return {**svc.view(svc.submit(who, *_blend(body, fields, svc))), "notes": notes}
    if not body.source:
        raise ApiError(422, "invalid_request", "source should be a picture in base64 (or give blend), but got none",
                       "source")
    source = decode_base64(body.source, "source", svc)
    style = decode_base64(body.style_image, "style_image", svc) if body.style_image else None
    mask = decode_base64(body.mask, "mask", svc) if body.mask else None
    pictures = [decode_base64(unit.image, f"control.{number}.image", svc) if unit.image else None
                for number, unit in enumerate(body.control)]
    if any(not entry.image for entry in body.image_prompts):
        raise ApiError(422, "invalid_request", "image_prompts.image should be a picture in base64 in a JSON job, "
                       "but one is missing", "image_prompts.image")
    references = [decode_base64(entry.image, f"image_prompts.{number}.image", svc)
                  for number, entry in enumerate(body.image_prompts)]
    return {**svc.view(svc.submit(who, fields, source, style, mask, pictures, references)), "notes": notes}


def _blend(body: JsonJob, fields: dict[str, Any], svc: Service
           ) -> tuple[dict[str, Any], bytes, None, None, list[None], list[bytes]]:
    """A blend job's fields and pictures (as ``Service.submit`` takes them): the first picture is the source, all
    of them are image prompts, averaged."""
    from img2img.engine.image_prompt import blend_prompts
    from img2img.errors import InvalidArgument

    for name in ("source", "style_image", "mask"):
        if getattr(body, name):
            raise ApiError(422, "invalid_request", f"{name} should be left out of a blend (its first picture is the "
                           "source)", name)
    if body.image_prompts:
        raise ApiError(422, "invalid_request", "image_prompts should be left out of a blend (its pictures are the "
                       "image prompts)", "image_prompts")
    pictures = [decode_base64(text, f"blend.{number}", svc) for number, text in enumerate(body.blend or [])]
    try:
        prompts = blend_prompts(pictures, body.blend_weights)
    except InvalidArgument as exc:
        raise ApiError(422, "invalid_argument", str(exc), exc.argument) from exc
    fields = {**fields, "image_prompts": [{"weight": prompt.weight} for prompt in prompts],
              "image_prompt_combine": "average"}
    if "strength" not in body.model_fields_set:
        fields["strength"] = 1.0
    return fields, pictures[0], None, None, [], pictures


@router.post("/jobs/form", status_code=202, **JOB_LINKS)
async def submit_form(
    who: CallerDep, svc: ServiceDep, source: Annotated[UploadFile, File(description="the source image")],
    request: Annotated[str, Form(description="JobFields as JSON")] = '{"prompt": ""}',
    style_image: Annotated[UploadFile | None, File(description="a style picture (built-in engine)")] = None,
    params_from: Annotated[UploadFile | None, File(description="a picture whose parameters the job starts from")
                           ] = None,
    mask: Annotated[UploadFile | None, File(description="a mask picture: white repaints, black keeps")] = None,
    control_images: Annotated[list[UploadFile] | None, File(
        description="the pictures of the control units whose image is \"upload\", in order")] = None,
    image_prompt_images: Annotated[list[UploadFile] | None, File(
        description="the pictures of the image prompts, in order")] = None,
) -> dict[str, Any]:
    """Queue a job from a multipart form: the source image file and the request as JSON."""
    try:
        body = JobFields.model_validate_json(request)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "request"
        raise ApiError(422, "invalid_request", f"{field}: {first['msg'].lower()}", field) from exc
    params = await read_upload(params_from, "params_from", svc) if params_from else None
    fields, notes = await asyncio.to_thread(_with_params, body, params, svc.settings.max_pixels)
    data = await read_upload(source, "source", svc)
    style = await read_upload(style_image, "style_image", svc) if style_image else None
    mask_data = await read_upload(mask, "mask", svc) if mask else None
    uploads = [await read_upload(upload, "control_images", svc) for upload in control_images or []]
    pictures = _uploaded_pictures(body.control, uploads)
    references = [await read_upload(upload, "image_prompt_images", svc) for upload in image_prompt_images or []]
    job = await asyncio.to_thread(lambda: svc.view(svc.submit(who, fields, data, style, mask_data, pictures,
                                                              references)))
    return {**job, "notes": notes}


def _uploaded_pictures(units: list[Any], uploads: list[bytes]) -> list[bytes | None]:
    """Each unit's picture in a form: the next upload for a unit whose image is "upload", else none."""
    wanted = [unit.image for unit in units]
    if any(image not in (None, "upload") for image in wanted):
        raise ApiError(422, "invalid_request", "control.image should be \"upload\" or null in a form (base64 "
                       "pictures go in JSON jobs)", "control.image")
    if wanted.count("upload") != len(uploads):
        raise ApiError(422, "invalid_request", f"control_images should be {wanted.count('upload')} files (one per "
                       f"unit whose image is \"upload\"), but got {len(uploads)}", "control_images")
    given = iter(uploads)
    return [next(given) if image == "upload" else None for image in wanted]


@router.post("/parameters")
async def read_parameters(
    svc: ServiceDep, _who: CallerDep,
    image: Annotated[UploadFile, File(description="a picture made by img2img, A1111, ComfyUI, InvokeAI, Fooocus or "
                                                  "NovelAI")],
) -> dict[str, Any]:
    """The generation parameters found in a picture, as the job fields they map to, with what did not carry over."""
    data = await read_upload(image, "image", svc)
    found = await asyncio.to_thread(_found, data, "image", svc.settings.max_pixels)
    fields = {key: value for key, value in found.fields.items() if key in JobFields.model_fields}
    return {"generator": found.generator, "fields": fields, "warnings": list(found.warnings)}


def _found(data: bytes, field: str, max_pixels: int) -> Any:
    from img2img.errors import SourceImageError
    from img2img.imageio.foreign import params_from

    try:
        return params_from(data, field, max_pixels)
    except SourceImageError as exc:
        raise ApiError(422, "no_parameters", str(exc), field) from exc


def _with_params(body: JobFields, params: bytes | None, max_pixels: int) -> tuple[dict[str, Any], list[str]]:
    """The job's fields over those found in the ``params_from`` picture (fields the request sets win)."""
    fields = body.model_dump(include=set(JobFields.model_fields))
    if params is None:
        if "prompt" not in body.model_fields_set and not getattr(body, "recipe", None):
            raise ApiError(422, "invalid_request", "prompt: field required (or give params_from)", "prompt")
        return fields, []
    found = _found(params, "params_from", max_pixels)
    taken = {key: value for key, value in found.fields.items()
             if key in JobFields.model_fields and key not in body.model_fields_set}
    return {**fields, **taken}, list(found.warnings)


def _with_recipe(body: JsonJob, fields: dict[str, Any], who: Caller, svc: Service) -> dict[str, Any]:
    """The fields with the recipe's where the job gives none (``img2img.recipes.apply``)."""
    if not body.recipe:
        return fields
    from img2img.errors import InvalidArgument
    from img2img.models.paths import config_dir
    from img2img.recipes import apply, find_recipe

    defaults = {name: info.default for name, info in JobFields.model_fields.items()}
    given = {key: value for key, value in fields.items() if key in body.model_fields_set or value != defaults[key]}
    try:
        recipe = find_recipe(body.recipe, config_dir())
    except InvalidArgument as exc:
        raise ApiError(422, "invalid_argument", str(exc), "recipe") from exc
    return fields | apply(recipe, given, svc.model_name(who, fields.get("model")) in BUILTIN)


@router.get("/recipes")
def recipes(_who: CallerDep) -> dict[str, list[Any]]:
    """The recipes (the built-in ones and the server's recipes.toml): each a prompt template, a strength or a
    retention target, a negative prompt and the built-in engine's style; and the mistakes in the file, one line
    each."""
    from img2img.models.paths import config_dir
    from img2img.recipes import load_recipes

    found, problems = load_recipes(config_dir())
    return {"recipes": [recipe.describe() for recipe in found.values()], "problems": problems}


@router.get("/jobs")
def list_jobs(who: CallerDep, svc: ServiceDep, limit: Annotated[int, Query(ge=1, le=200)] = 50,
              before: Annotated[int | None, Query(ge=0, le=MAX_INT64, description="the cursor of an earlier page")
                                ] = None,
              ) -> dict[str, Any]:
    """Your jobs, newest first."""
    jobs = svc.store.list(who.owner, limit, before)
    cursor = jobs[-1].seq if len(jobs) == limit else None
    return {"jobs": [svc.view(job) for job in jobs], "next": cursor}


@router.get("/jobs/{job_id}", operation_id="read_job")
def read_job(job_id: str, who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """State, queue position, progress, seconds left, error and images of one of your jobs."""
    return svc.view(svc.job(who, job_id))


@router.post("/jobs/{job_id}/cancel", operation_id="cancel_job")
def cancel_job(job_id: str, who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """Cancel a queued job at once, or a running one between two denoising steps."""
    return svc.view(svc.cancel(who, job_id))


@router.get("/jobs/{job_id}/images/{index}", operation_id="job_image", response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}})
def job_image(job_id: str, index: int, who: CallerDep, svc: ServiceDep,
              format: Annotated[str, Query(max_length=8, description="png, jpeg or webp")] = "png",
              quality: Annotated[int, Query(ge=1, le=100)] = 90) -> Response:
    """One output image, converted on request, with its parameters kept inside."""
    data, media = svc.image(who, job_id, index, format, quality)
    extension = media.split("/")[1].replace("jpeg", "jpg")
    disposition = f'attachment; filename="img2img-{job_id[:8]}-{index}.{extension}"'
    return Response(data, media_type=media, headers={"Content-Disposition": disposition})


@router.get("/jobs/{job_id}/source", operation_id="job_source", response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}})
def job_source(job_id: str, who: CallerDep, svc: ServiceDep) -> Response:
    """The source image the job was submitted with, as uploaded."""
    data, media = svc.source(who, job_id)
    return Response(data, media_type=media)


@router.get("/jobs/{job_id}/events", operation_id="job_events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, request: Request, who: CallerDep, svc: ServiceDep) -> StreamingResponse:
    """Server-sent events: state, position, started, step (with a small preview), done, failed, cancelled."""
    svc.job(who, job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        queue = svc.hub.subscribe(job_id)
        try:
            job = svc.job(who, job_id)  # read after subscribing, so no event falls between
            yield _sse("state", svc.view(job))
            if job.final:
                return
            while not await request.is_disconnected():
                event = await svc.hub.next_event(queue, svc.stopping, KEEPALIVE_S)
                if svc.stopping.is_set():  # the job is kept: a client reconnects after the restart
                    yield _sse("stopping", {"event": "stopping", "job": job_id})
                    return
                if event is None:
                    yield ": keep-alive\n\n"
                    continue
                yield _sse(event["event"], event)
                if event["event"] in ("done", "failed", "cancelled"):
                    return
        finally:
            svc.hub.unsubscribe(job_id, queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/models")
def models(_who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """Registered models (names usable as ``model``), each with its family and the defaults it runs with (or why
    it cannot run), and the built-in style engine."""
    from img2img.models.registry import ModelRegistry

    registry = ModelRegistry()
    default = svc.settings.model or registry.default_name() or "builtin"
    entries = [{"name": entry.name, "default": entry.name == default, **_family_of(entry)}
               for entry in registry.entries()]
    return {"models": [*entries, {"name": "builtin", "default": default == "builtin",
                                  "description": "built-in style transfer: restyles, adds no new content"}]}


def _family_of(entry: Any) -> dict[str, Any]:
    """A registered model's family, as the studio shows it (an edit model's image guidance control, a flow-matching
    model's samplers)."""
    from pathlib import Path

    from img2img.models.detect import inspect_model

    try:
        family = inspect_model(Path(entry.path), name=entry.name, allow_pickle=entry.allow_pickle,
                               prediction=entry.prediction).family
    except Img2ImgError as exc:
        return {"family": None, "unusable": str(exc)}
    return {"family": family.label, "edit": family.edit, "flow": family.flow, "samplers": family.samplers,
            "defaults": {"steps": family.default_steps, "guidance_scale": family.default_guidance,
                         "sampler": family.default_sampler, "image_cfg": family.default_image_guidance}}


@router.get("/fields")
def fields(_who: CallerDep) -> dict[str, list[dict[str, Any]]]:
    """Each request field's type, default, range or choices, help and A1111 name (the studio's defaults), and
    those of the inpaint part and of a control unit."""
    return {"fields": [spec.describe() for spec in FIELDS], "inpaint": [spec.describe() for spec in INPAINT_FIELDS],
            "control": [spec.describe() for spec in unit_fields()]}


@router.get("/samplers")
def samplers(_who: CallerDep) -> dict[str, list[str]]:
    from img2img.engine.samplers import sampler_names

    return {"samplers": sampler_names()}


@router.get("/styles")
def styles(_who: CallerDep) -> dict[str, list[str]]:
    """The built-in style engine's named styles and blends (use them in the prompt, with model builtin)."""
    from img2img.styles.catalog import style_names

    return {"styles": style_names()}


@router.get("/health")
def health(svc: ServiceDep) -> dict[str, Any]:
    """Up or not, the queue's length, and the worker process's state (starting, idle, running, restarting)."""
    counts = svc.store.counts()
    return {"status": "ok", "queued": counts.get("queued", 0), "running": counts.get("running", 0),
            "worker": svc.runner.state}


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def read_upload(upload: UploadFile, field: str, svc: Service) -> bytes:
    data = await upload.read(svc.settings.max_upload_bytes + 1)
    if len(data) > svc.settings.max_upload_bytes:
        raise ApiError(413, "too_large", f"{field} should be at most {svc.settings.max_upload_bytes} bytes, "
                       "but the file is larger", field)
    return data
