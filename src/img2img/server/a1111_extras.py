"""A1111's upscalers that need no weights: ``POST /sdapi/v1/extra-single-image`` and ``/extra-batch-images``, and
``GET /sdapi/v1/upscalers``.

Only resampling filters are offered (Lanczos, Nearest, and "None"): the learned upscalers (ESRGAN and the like)
need weights that we do not ship. A client that asks for one gets a 422 naming the ones we have, never a silent
substitute. Hires fix (txt2img's ``enable_hr``) uses the same table.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from fastapi import APIRouter
from PIL import Image
from pydantic import BaseModel, Field

from img2img.server.deps import CallerDep, ServiceDep
from img2img.server.service import ApiError, decode_base64

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])
UPSCALERS: dict[str, Image.Resampling | None] = {"None": None, "Lanczos": Image.Resampling.LANCZOS,
                                                 "Nearest": Image.Resampling.NEAREST}
MAX_UPSCALE = 8.0
MAX_BATCH = 16  # images per extra-batch-images call


class ExtrasRequest(BaseModel):
    """What A1111's extras requests share; face restoration has no weights here and must stay off."""

    resize_mode: int = Field(0, ge=0, le=1)  # 0: scale by upscaling_resize, 1: to upscaling_resize_w x _h
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, gt=0, le=MAX_UPSCALE)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasRequest):
    image: str = Field("", max_length=40_000_000)


class BatchImage(BaseModel):
    data: str = Field(max_length=40_000_000)
    name: str = Field("", max_length=256)


class ExtrasBatchImagesRequest(ExtrasRequest):
    imageList: list[BatchImage] = Field(default_factory=list, max_length=MAX_BATCH)  # A1111's spelling


def upscaler(name: str | None, field: str) -> Image.Resampling | None:
    """The filter an upscaler name stands for (None: "None", no resampling); 422 for one we do not have."""
    name = name or "None"
    if name not in UPSCALERS:
        raise ApiError(422, "invalid_argument", f"{field} should be one of {', '.join(UPSCALERS)} (upscalers "
                       f"that need weights are not available here), but got {name!r}", field, choices=[*UPSCALERS])
    return UPSCALERS[name]


def resize(image: Image.Image, size: tuple[int, int], name: str | None, field: str) -> Image.Image:
    method = upscaler(name, field)
    return image.resize(size, method if method is not None else Image.Resampling.LANCZOS)


@router.get("/upscalers")
def upscalers(_who: CallerDep) -> list[dict[str, Any]]:
    return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for name in UPSCALERS]


@router.post("/extra-single-image")
def extra_single_image(body: ExtrasSingleImageRequest, _who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """Upscale one image with a resampling filter (and blend a second one over it, as A1111 does)."""
    png, info = _upscaled(body, body.image, "image", svc)
    return {"html_info": f"<p>{info}</p>", "image": base64.b64encode(png).decode("ascii")}


@router.post("/extra-batch-images")
def extra_batch_images(body: ExtrasBatchImagesRequest, _who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """Upscale each image of ``imageList`` as extra-single-image does, in order."""
    done = [_upscaled(body, image.data, f"imageList[{index}]", svc) for index, image in enumerate(body.imageList)]
    info = "".join(f"<p>{image.name}: {text}</p>" for image, (_, text) in zip(body.imageList, done, strict=True))
    return {"html_info": info, "images": [base64.b64encode(png).decode("ascii") for png, _ in done]}


def _upscaled(body: ExtrasRequest, data: str, field: str, svc: Any) -> tuple[bytes, str]:
    """One image upscaled as ``body`` says: its PNG and A1111's line about it."""
    from img2img.errors import SourceImageError
    from img2img.imageio.source import read_source

    if body.gfpgan_visibility or body.codeformer_visibility:
        name = "gfpgan_visibility" if body.gfpgan_visibility else "codeformer_visibility"
        raise ApiError(422, "invalid_argument", f"{name} should be 0 (face restoration needs weights that are not "
                       f"available here), but got {getattr(body, name)}", name)
    try:
        picture = read_source(decode_base64(data, field, svc), max_pixels=svc.settings.max_pixels)
    except SourceImageError as exc:
        raise ApiError(422, "invalid_image", f"{field}: {exc}", field) from exc
    source = picture.rgb
    if body.resize_mode == 0:
        size = (round(source.width * body.upscaling_resize), round(source.height * body.upscaling_resize))
    else:
        size = (body.upscaling_resize_w, body.upscaling_resize_h)
    if size[0] * size[1] > svc.settings.max_pixels or min(size) < 1:
        raise ApiError(422, "invalid_argument", f"the upscaled size should be at most {svc.settings.max_pixels} "
                       f"pixels, but got {size[0]}x{size[1]}", "upscaling_resize")
    crop = body.resize_mode == 1 and body.upscaling_crop
    result = _scaled(source, size, body.upscaler_1, "upscaler_1", crop)
    if body.upscaler_2 != "None" and body.extras_upscaler_2_visibility > 0:
        second = _scaled(source, size, body.upscaler_2, "upscaler_2", crop)
        result = Image.blend(result, second, body.extras_upscaler_2_visibility)
    buffer = io.BytesIO()
    result.save(buffer, format="PNG")
    return buffer.getvalue(), f"Postprocess upscale to: {size[0]}x{size[1]}, Postprocess upscaler: {body.upscaler_1}"


def _scaled(source: Image.Image, size: tuple[int, int], name: str, field: str, crop: bool) -> Image.Image:
    """``source`` at ``size``: stretched, or (``crop``) scaled to cover it and centre-cropped, as A1111's crop."""
    if not crop:
        return resize(source, size, name, field)
    scale = max(size[0] / source.width, size[1] / source.height)
    covered = resize(source, (max(size[0], round(source.width * scale)), max(size[1], round(source.height * scale))),
                     name, field)
    left, top = (covered.width - size[0]) // 2, (covered.height - size[1]) // 2
    return covered.crop((left, top, left + size[0], top + size[1]))
