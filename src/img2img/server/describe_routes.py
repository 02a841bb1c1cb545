"""Image to prompt over HTTP: the native ``POST /v1/describe`` and A1111's ``POST /sdapi/v1/interrogate``, both on
``Engine.describe``: measurements, plus the caption and CLIP's ranked words when the server has a captioner and a
CLIP model registered (the answers say which were used; without them, that no captioning model was)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, Field

from img2img.server.deps import CallerDep, ServiceDep
from img2img.server.service import ApiError, Service, decode_base64

native = APIRouter(prefix="/v1", tags=["native"])
a1111 = APIRouter(prefix="/sdapi/v1", tags=["a1111"])


def _describe(svc: Service, data: bytes, field: str, style: str, change: str) -> dict[str, Any]:
    from img2img.engine.describe import describe
    from img2img.errors import InvalidArgument, ModelError, SourceImageError
    from img2img.imageio.source import read_source

    try:
        picture = read_source(data, max_pixels=svc.settings.max_pixels, field=field).rgb
        if not (svc.planner.registry.addons("captioner") or svc.planner.registry.addons("clip")):
            return describe(picture, style, change).to_dict()  # no model to load: no lock to wait for
        with svc.parts_lock:
            return svc.planner.describe(picture, style, change).to_dict()
    except SourceImageError as exc:
        raise ApiError(422, "invalid_image", str(exc), field) from exc
    except InvalidArgument as exc:
        raise ApiError(422, "invalid_argument", str(exc), exc.argument) from exc
    except ModelError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc


@native.post("/describe")
async def describe_image(
    svc: ServiceDep, _who: CallerDep, image: Annotated[UploadFile, File(description="the picture to describe")],
    style: Annotated[str, Form(max_length=16, description="sd, midjourney or plain")] = "sd",
    change: Annotated[str, Form(max_length=16, description="subtle, restyle or rework")] = "restyle",
) -> dict[str, Any]:
    """A prompt for the picture from its measurements (palette, light, focus, noise, shape), with a negative
    prompt, the measurements and the suggested strength for the change asked."""
    from img2img.server.native import read_upload

    data = await read_upload(image, "image", svc)
    return await asyncio.to_thread(_describe, svc, data, "image", style, change)


class InterrogateRequest(BaseModel):
    image: str = Field(max_length=40_000_000)
    model: str = Field("clip", max_length=64)


@a1111.post("/interrogate")
async def interrogate(body: InterrogateRequest, svc: ServiceDep, _who: CallerDep) -> dict[str, Any]:
    """A1111's interrogate: ``caption`` is the SD prompt (the registered captioner's and CLIP's words when the
    server has them, else the measured prompt, whatever ``model`` names), with what was measured beside it."""
    data = decode_base64(body.image, "image", svc)
    found = await asyncio.to_thread(_describe, svc, data, "image", "sd", "restyle")
    return {"caption": found["prompt"], "negative_prompt": found["negative_prompt"], "captioned": found["captioned"],
            **{key: found[key] for key in ("not_measured", "models") if key in found}}
