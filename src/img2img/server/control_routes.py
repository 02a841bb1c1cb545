"""The native API's models for conditioners: the ControlNets and adapters a control unit can name, the
preprocessors and a preview of a preprocessor's map (the studio shows it next to the source), and the IP-Adapters
that image prompts can name."""

from __future__ import annotations

import asyncio
import io
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile

from img2img.server.deps import CallerDep, ServiceDep
from img2img.server.service import ApiError, Service

router = APIRouter(prefix="/v1", tags=["native"])


def registered_controls() -> dict[str, str]:
    """The registry's ControlNets and adapters: name to path."""
    from img2img.models.registry import ModelRegistry

    registry = ModelRegistry()
    return registry.addons("controlnet") | registry.addons("t2i-adapter")


def registered_ip_adapters() -> dict[str, str]:
    """The registry's IP-Adapters: name to path (a file, or a repository's folder)."""
    from img2img.models.ip_adapters import KIND
    from img2img.models.registry import ModelRegistry

    return ModelRegistry().addons(KIND)


@router.get("/ip-adapters")
def ip_adapters(_who: CallerDep) -> dict[str, list[dict[str, Any]]]:
    """The IP-Adapters that a job's ip_adapter can name (registered, or in the IP-Adapter folder), each with its
    variant (plain, plus or full) and the base it was made for."""
    from img2img.models.ip_adapters import catalog

    return {"ip_adapters": [{"name": name, "variant": info.variant, "base": info.base}
                            for name, _path, info in catalog(registered_ip_adapters())]}


@router.get("/controlnets")
def controlnets(_who: CallerDep) -> dict[str, list[dict[str, Any]]]:
    """The ControlNets and T2I-Adapters a control unit can name (registered, or in the ControlNet folder), each
    with its kind and the base it was made for."""
    from img2img.models.control_models import catalog

    return {"controlnets": [{"name": name, "kind": info.kind, "base": info.base}
                            for name, _path, info in catalog(registered_controls())]}


@router.get("/preprocessors")
def preprocessors(_who: CallerDep) -> dict[str, list[dict[str, Any]]]:
    """The preprocessors a unit can name, what each makes and what its two settings mean."""
    from img2img.engine.preprocessors import PREPROCESSORS

    return {"preprocessors": [{"name": p.name, "help": p.help, "threshold_a": p.threshold_a or None,
                               "threshold_b": p.threshold_b or None, "needs_mask": p.needs_mask,
                               "needs_model": p.model_kind}
                              for p in PREPROCESSORS.values()]}


@router.post("/preprocess", response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def preprocess(
    svc: ServiceDep, _who: CallerDep,
    image: Annotated[UploadFile, File(description="the picture to make a control map of")],
    name: Annotated[str, Form(max_length=32, description="a preprocessor (GET /v1/preprocessors)")],
    threshold_a: Annotated[float | None, Form(ge=0, le=1024)] = None,
    threshold_b: Annotated[float | None, Form(ge=0, le=1024)] = None,
    seed: Annotated[int, Form(ge=0, le=2**32 - 1)] = 0,
) -> Response:
    """The control map that the preprocessor ``name`` makes of ``image``, as a PNG."""
    from img2img.server.native import read_upload

    data = await read_upload(image, "image", svc)
    png = await asyncio.to_thread(make_map, svc, data, name, threshold_a, threshold_b, seed, "image")
    return Response(png, media_type="image/png")


def make_map(svc: Service, data: bytes, name: str, threshold_a: float | None, threshold_b: float | None, seed: int,
             field: str) -> bytes:
    """The PNG of ``name``'s map of the picture ``data``; bad input as an ApiError naming ``field`` or the
    preprocessor."""
    from img2img.engine.preprocessors import PREPROCESSORS
    from img2img.errors import Img2ImgError, InvalidArgument, SourceImageError
    from img2img.imageio.source import read_source

    try:
        picture = read_source(data, max_pixels=svc.settings.max_pixels, field=field).rgb
        with svc.parts_lock:  # a depth model loads into the planner's part cache
            made = svc.planner.preprocess(name, picture, threshold_a, threshold_b, seed)
    except SourceImageError as exc:
        raise ApiError(422, "invalid_image", str(exc), field) from exc
    except InvalidArgument as exc:
        raise ApiError(422, "invalid_argument", str(exc), exc.argument,
                       choices=[p.name for p in PREPROCESSORS.values() if not p.needs_mask]) from exc
    except Img2ImgError as exc:  # a depth model that does not load
        raise ApiError(422, "invalid_request", str(exc), "name") from exc
    out = io.BytesIO()
    made.save(out, "PNG")
    return out.getvalue()
