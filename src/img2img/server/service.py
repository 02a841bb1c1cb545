"""What both HTTP faces do with jobs: check and queue a request, describe a job, cancel it, hand out its images.

Every refusal is an ``ApiError`` with an HTTP status, a machine-readable code, the field it concerns and a
one-line message; ``app`` turns it into the JSON error body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from img2img.engine.seeds import resolve_seed
from img2img.errors import Img2ImgError, InvalidArgument, SourceImageError
from img2img.jobs.blobs import BlobStore
from img2img.jobs.book import JobRunner
from img2img.jobs.request import JobRequest, control_part, inpaint_part, prompt_part
from img2img.jobs.store import Job, JobStore, QueueFull
from img2img.server.auth import Caller
from img2img.server.events import FINAL_EVENTS, EventHub
from img2img.server.settings import ServerSettings

if TYPE_CHECKING:
    from img2img.api import Engine

RETRY_AFTER_S = 10
BUILTIN = ("builtin", "builtin-style")
RECHECK_S = 5.0  # a waiting call reads its job again this often, in case an event was dropped


@dataclass
class ApiError(Exception):
    status: int
    code: str
    message: str
    field: str | None = None
    headers: dict[str, str] | None = None
    choices: list[str] | None = None  # the values the field accepts, where they are a short list

    def body(self) -> dict[str, Any]:
        error = {"code": self.code, "message": self.message, "field": self.field}
        return {"error": error | ({"choices": self.choices} if self.choices is not None else {})}


class Service:
    """``planner`` is an engine that checks requests (styles, sizes, memory) and loads no diffusion model: the
    runner's worker process runs them. It does load the small parts that previews and descriptions need (a depth
    model, a captioner, a CLIP model), one caller at a time (``parts_lock``). ``stopping`` is set when the server
    begins to stop."""

    def __init__(self, settings: ServerSettings, store: JobStore, blobs: BlobStore, hub: EventHub,
                 runner: JobRunner, planner: Engine) -> None:
        self.settings, self.store, self.blobs, self.hub, self.runner = settings, store, blobs, hub, runner
        self.planner = planner
        self.parts_lock = threading.Lock()
        self.stopping = asyncio.Event()

    def begin_stop(self) -> None:
        """Safe from a signal handler or any thread: waiting calls and event streams end at once."""
        self.hub.loop.call_soon_threadsafe(self.stopping.set)

    # Submitting -------------------------------------------------------------------------------------------------

    def submit(self, caller: Caller, fields: dict[str, Any], source: bytes, style_image: bytes | None = None,
               mask: bytes | None = None, control_images: list[bytes | None] | None = None,
               prompt_images: list[bytes] | None = None) -> Job:
        """Check ``fields`` (GenerationRequest's, without the images) and the images, store them, queue the job.
        ``control_images``: each control unit's picture in order (None: the unit reads the source);
        ``prompt_images``: each image prompt's picture in order."""
        request = self.check(caller, fields, source, style_image, mask, control_images or [], prompt_images or [])
        try:
            job = self.store.submit(caller.owner, caller.rank, request, max_per_owner=self.settings.max_queued_per_key,
                                    max_total=self.settings.max_queued_total)
        except QueueFull as exc:
            raise ApiError(429, "queue_full", f"{exc}; try again later", None,
                           {"Retry-After": str(RETRY_AFTER_S)}) from exc
        self.runner.wake()
        self.hub.publish_positions(self.store)
        return job

    def check(self, caller: Caller, fields: dict[str, Any], source: bytes, style_image: bytes | None,
              mask: bytes | None = None, control_images: list[bytes | None] | None = None,
              prompt_images: list[bytes] | None = None) -> JobRequest:
        from img2img.engine.request import GenerationRequest
        from img2img.imageio.source import read_source

        settings = self.settings
        for name in ("prompt", "negative_prompt"):
            text = fields.get(name) or ""
            if isinstance(text, str) and len(text) > settings.max_prompt_chars:
                raise ApiError(422, "invalid_argument", f"{name} should be at most {settings.max_prompt_chars} "
                               f"characters, but got {len(text)}", name)
        fields = dict(fields)
        # Resolved now, so a later change of the default model does not change queued jobs.
        fields["model"] = self.model_name(caller, fields.get("model"))
        for name, what in (("vae", "a VAE's name (registered, or in a VAE folder)"),
                           ("ip_adapter", "an IP-Adapter's name (registered, or in the IP-Adapter folder)")):
            value = fields.get(name)
            if isinstance(value, str) and ("/" in value or "\\" in value or value.startswith(".")):  # never paths
                raise ApiError(422, "invalid_argument", f"{name} should be {what}, but got {value!r}", name)
        fields["image_prompts"] = [{key: value for key, value in entry.items() if key != "image"}  # pictures: blobs
                                   for entry in fields.get("image_prompts") or []]
        fields["control"] = [{key: value for key, value in unit.items() if key != "image"}  # pictures: blobs
                             for unit in fields.get("control") or []]
        for number, unit in enumerate(fields["control"]):
            name = unit.get("model")
            if isinstance(name, str) and ("/" in name or "\\" in name or name.startswith(".")):  # never paths
                raise ApiError(422, "invalid_argument", f"control.{number}.model should be a ControlNet's or an "
                               f"adapter's name (GET /v1/controlnets), but got {name!r}", f"control.{number}.model")
        fields["seed"] = resolve_seed(fields.get("seed"))  # fixed now, so a retried job gives the same images
        size = fields.get("size")
        reading = "source"
        try:
            picture = read_source(source, max_pixels=settings.max_pixels)
            style = None
            if style_image is not None:
                reading = "style_image"
                style = read_source(style_image, max_pixels=settings.max_pixels)
            inpaint = inpaint_part(fields.get("inpaint"), mask)
            reading = "control_image"
            pictures = [read_source(data, max_pixels=settings.max_pixels, field=f"control.{number}.image").rgb
                        if data else None for number, data in enumerate(control_images or [])]
            control = control_part(fields.get("control"), pictures)
            reading = "image_prompts"
            references = [read_source(data, max_pixels=settings.max_pixels, field=f"image_prompts.{number}.image").rgb
                          for number, data in enumerate(prompt_images or [])]
            prompts = prompt_part(fields.get("image_prompts"), references)
            request = GenerationRequest(source=picture.rgb, **{**fields, "size": tuple(size) if size else None,
                                                               "inpaint": inpaint, "control": control,
                                                               "image_prompts": prompts},
                                        style_image=style.rgb if style else None).validated(settings.max_images_per_job)
            reading = "mask"
            masking = self.planner.masking(request, picture)
            if masking is not None:
                picture = masking.canvas
            maps = self.planner.control_maps(request, picture) if request.control and not \
                self.planner.is_builtin(request.model) else []  # the units' models (by name) and preprocessors
            adapter = self.planner.adapter(request)[1] if request.image_prompts and not \
                self.planner.is_builtin(request.model) else None  # the adapter's name is one the server has
            files = self.planner.plan(request, picture, request.strength > 0, masking, maps, adapter)[2]  # memory
            self.planner.check_addons([request])  # LoRA and VAE names
            model_sha256 = None
            if files is not None:  # the weights the job will run on: the worker refuses others
                from img2img.models.loading import weights_sha256

                model_sha256 = weights_sha256(files.path)
        except InvalidArgument as exc:
            choices = None
            if exc.argument == "prompt" and fields["model"] in BUILTIN:  # a prompt that names no built-in style
                from img2img.styles.catalog import style_names

                choices = style_names()
            raise ApiError(422, "invalid_argument", str(exc), exc.argument, choices=choices) from exc
        except SourceImageError as exc:
            raise ApiError(422, "invalid_image", f"{reading}: {exc}", reading) from exc
        except Img2ImgError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from exc
        except TypeError as exc:  # a field GenerationRequest does not have
            raise ApiError(422, "invalid_request", str(exc)) from exc
        return JobRequest(self.blobs.put(source, _suffix(source)), fields,
                          self.blobs.put(style_image, _suffix(style_image)) if style_image else None, model_sha256,
                          self.blobs.put(mask, _suffix(mask)) if mask else None,
                          tuple(self.blobs.put(data, _suffix(data)) if data else None for data in control_images or []),
                          tuple(self.blobs.put(data, _suffix(data)) for data in prompt_images or []))

    def model_name(self, caller: Caller, model: str | None) -> str:
        """A registry name or the built-in engine; never a path or a repo id from a request. With none asked
        for: the caller's A1111 option, the server's default, the registry's default, else the built-in engine."""
        from img2img.models.registry import ModelRegistry

        registry = ModelRegistry()
        model = (model or self.store.options(caller.owner).get("sd_model_checkpoint") or self.settings.model
                 or registry.default_name() or "builtin")
        if model in BUILTIN:
            return model
        names = [entry.name for entry in registry.entries()]
        if model not in names:
            choices = ", ".join([*names, "builtin"])
            raise ApiError(422, "unknown_model", f"model should be one of {choices}, but got {model!r}", "model")
        return model

    # Reading --------------------------------------------------------------------------------------------------

    async def wait(self, caller: Caller, job_id: str) -> Job:
        """The job once it has ended, awaited on its events (no thread is held while it runs); 503 when the
        server begins to stop first (the job stays queued, or goes back to the queue, and runs after a restart)."""
        queue = self.hub.subscribe(job_id, outcome_only=True)
        try:
            job = await asyncio.to_thread(self.job, caller, job_id)  # read after subscribing: no event is missed
            while not job.final:
                event = await self.hub.next_event(queue, self.stopping, RECHECK_S)
                if event is None or event["event"] in FINAL_EVENTS or self.stopping.is_set():
                    job = await asyncio.to_thread(self.job, caller, job_id)
                if self.stopping.is_set() and not job.final:
                    raise ApiError(503, "stopping", f"the server is stopping; job {job_id} is kept and runs when "
                                   f"it starts again (read it at /v1/jobs/{job_id})", None, {"Retry-After": "30"})
            return job
        finally:
            self.hub.unsubscribe(job_id, queue)

    def job(self, caller: Caller, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None or job.owner != caller.owner:  # someone else's job reads as missing
            raise ApiError(404, "not_found", f"job should be one of yours, but {job_id!r} is not", "job_id")
        return job

    def view(self, job: Job) -> dict[str, Any]:
        fraction = job.step / job.total if job.total else (1.0 if job.state == "done" else 0.0)
        request = {key: value for key, value in job.request.to_dict().items()
                   if key not in ("source", "style_image", "mask", "control_images", "image_prompt_images")}
        return {
            "id": job.id, "state": job.state, "position": self.store.position(job),
            "progress": {"step": job.step, "total": job.total, "fraction": round(fraction, 4)},
            "seconds_left": self._seconds_left(job), "attempts": job.attempts, "error": job.error,
            "created": job.created, "started": job.started, "finished": job.finished, "request": request,
            "images": [{"index": i, "url": f"/v1/jobs/{job.id}/images/{i}", "seed": output["seed"],
                        "width": output["width"], "height": output["height"], "parameters": output["parameters"],
                        "retention": output.get("retention", {}),  # jobs from before the scores have none
                        "strength": output.get("strength", request.get("strength"))}  # a keep target: the one found
                       for i, output in enumerate(job.outputs)],
            "notes": job.notes,
        }

    def _seconds_left(self, job: Job) -> float | None:
        if job.state == "running" and job.started and job.step:
            elapsed = time.time() - job.started
            return round(elapsed / job.step * (job.total - job.step), 1)
        if job.state == "queued":
            recent = self.store.recent_seconds()
            if recent:
                return round(sorted(recent)[len(recent) // 2] * (self.store.position(job) or 1), 1)
        return None

    def image(self, caller: Caller, job_id: str, index: int, format_: str, quality: int) -> tuple[bytes, str]:
        """Output ``index`` of a done job in ``format_`` (png, jpeg, webp), its metadata kept."""
        from img2img.imageio.metadata import format_name, save_options

        job = self.job(caller, job_id)
        if job.state != "done":
            raise ApiError(409, "not_done", f"job should be done, but it is {job.state}", "job_id")
        if not 0 <= index < len(job.outputs):
            raise ApiError(404, "not_found", f"index should be 0..{len(job.outputs) - 1}, but got {index}", "index")
        try:
            canonical = format_name(format_)
        except InvalidArgument as exc:
            raise ApiError(422, "invalid_argument", str(exc), "format") from exc
        data = self.blobs.read(job.outputs[index]["image"])
        media = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}[canonical]
        if canonical == "png":
            return data, media
        from img2img.imageio.metadata import Metadata

        with Image.open(io.BytesIO(data)) as image:
            image.load()
            text = getattr(image, "text", {})
            metadata = Metadata(text.get("parameters"), text.get("img2img"))
            out = io.BytesIO()
            picture = image.convert("RGB") if canonical == "jpeg" else image
            picture.save(out, **save_options(canonical, metadata, quality))
        return out.getvalue(), media

    def source(self, caller: Caller, job_id: str) -> tuple[bytes, str]:
        """The job's source image as it was uploaded, and its media type."""
        name = self.job(caller, job_id).request.source
        media = {".jpg": "image/jpeg", ".webp": "image/webp", ".bmp": "image/bmp", ".tif": "image/tiff",
                 ".gif": "image/gif"}.get(name[name.index("."):], "image/png")
        return self.blobs.read(name), media

    # Cancelling -----------------------------------------------------------------------------------------------

    def cancel(self, caller: Caller, job_id: str) -> Job:
        """Cancel a queued job now, or a running one at its next step; a finished job is left as it is."""
        job = self.job(caller, job_id)
        if self.store.cancel_queued(job.id):
            self.hub.publish(job.id, "cancelled")
            self.hub.publish_positions(self.store)
        elif job.state == "running":
            self.runner.cancel_running(job.id)
        return self.store.get(job.id) or job


def _suffix(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        kind = (image.format or "PNG").upper()
    return {"JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif"}.get(kind, ".png")


def decode_base64(text: str, field: str, svc: Service) -> bytes:
    """Bytes of a base64 field (a data: URL prefix is allowed), within the upload limit."""
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    if len(payload) > svc.settings.max_upload_bytes * 4 // 3 + 4:
        raise ApiError(413, "too_large", f"{field} should be at most {svc.settings.max_upload_bytes} bytes, "
                       "but the image is larger", field)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, "invalid_image", f"{field} should be base64 image data ({exc})", field) from exc
