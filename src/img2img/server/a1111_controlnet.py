"""A1111's ControlNet extension over our control units: ``alwayson_scripts.controlnet.args`` in txt2img and
img2img requests, and its ``/controlnet/version``, ``model_list``, ``module_list`` and ``detect`` routes.

The extension's module names map to our preprocessors (its learned detectors to their classical approximations:
``softedge_hed`` is our ``softedge``); a module with no counterpart here (openpose...) is refused with the list,
never replaced silently. Its resize and control modes arrive as numbers or as their labels. Its IP-Adapter units
(modules ``ip-adapter_clip_sd15``, ``ip-adapter_clip_sdxl_plus_vith``, ``ip-adapter-auto``...) are our image prompts:
their model is the request's ``ip_adapter`` (one for all of them), their weight each picture's.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from img2img.engine.control import A1111_MODES, A1111_RESIZE, MAX_UNITS
from img2img.server.deps import CallerDep, ServiceDep
from img2img.server.service import ApiError, Service, decode_base64

router = APIRouter(prefix="/controlnet", tags=["a1111"])
MODULES = {  # the extension's module names -> ours
    "none": "none", "canny": "canny", "invert (from white bg & black line)": "invert", "invert": "invert",
    "lineart_realistic": "lineart", "lineart_coarse": "lineart", "lineart_standard (from white bg & black line)":
    "lineart", "lineart_anime": "lineart", "lineart": "lineart",
    "softedge_hed": "softedge", "softedge_hedsafe": "softedge", "softedge_pidinet": "softedge",
    "softedge_pidisafe": "softedge", "hed": "softedge", "pidinet": "softedge",
    "scribble_pidinet": "scribble", "scribble_hed": "scribble", "scribble_xdog": "scribble",
    "t2ia_sketch_pidi": "scribble", "scribble": "scribble",
    "tile_resample": "tile", "tile_colorfix": "tile", "shuffle": "shuffle",
    "recolor_luminance": "recolor", "recolor_intensity": "recolor",
    "inpaint_only": "inpaint", "inpaint_global_harmonious": "inpaint", "inpaint": "inpaint",
    "depth_anything": "depth", "depth_anything_v2": "depth", "depth_midas": "depth", "depth_zoe": "depth",
    "depth_leres": "depth", "depth": "depth",  # the registered depth model (img2img.models.estimators)
}
IP_MODULES = ("ip-adapter-auto", "ip-adapter_clip_sd15", "ip-adapter_clip_h", "ip-adapter_clip_sdxl",
              "ip-adapter_clip_sdxl_plus_vith", "ip-adapter_clip_g")  # image prompts: the encoder is the adapter's
RESIZE_NUMBERS = {0: "just", 1: "crop", 2: "fill"}
MODE_NUMBERS = {0: "balanced", 1: "prompt", 2: "control"}
IGNORED = {"lowvram": False, "low_vram": False, "pixel_perfect": False, "processor_res": 512, "hr_option": "Both",
           "save_detected_map": True, "mask": None, "mask_image": None, "effective_region_mask": None}


class ControlNetUnit(BaseModel):
    """One of the extension's units, as its API documents it (unknown fields are accepted and reported)."""

    model_config = ConfigDict(extra="allow")

    enabled: bool = True
    module: str = Field("none", max_length=80)
    model: str = Field("None", max_length=200)
    weight: float = 1.0
    image: str | dict[str, Any] | None = None
    input_image: str | None = None  # the older spelling of image
    resize_mode: int | str = 1  # the extension's default: Crop and Resize
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: int | str = 0
    guessmode: bool | None = None  # before control_mode: True is "ControlNet is more important"
    threshold_a: float = -1  # -1: the preprocessor's default
    threshold_b: float = -1


def units(scripts: dict[str, Any], svc: Service, fields: dict[str, Any], source: bytes | None
          ) -> tuple[list[bytes | None], list[bytes], list[str]]:
    """The units of a request's ``alwayson_scripts`` set in ``fields`` (``control``, and ``image_prompts`` with
    ``ip_adapter`` for IP-Adapter units), their pictures (control units', image prompts') and the warnings; other
    scripts are named in the warnings. ``source``: the init image (None for txt2img)."""
    has_source = source is not None
    warnings = [f"alwayson_scripts.{name} is not supported and was ignored" for name in scripts
                if name.lower() != "controlnet"]
    script = next((value for name, value in scripts.items() if name.lower() == "controlnet"), None)
    args = script.get("args", []) if isinstance(script, dict) else []
    if not isinstance(args, list) or not all(isinstance(arg, dict) for arg in args):
        raise ApiError(422, "invalid_request", "alwayson_scripts.controlnet.args should be a list of unit objects",
                       "alwayson_scripts.controlnet.args")
    found: list[dict[str, Any]] = []
    pictures: list[bytes | None] = []
    prompts: list[dict[str, Any]] = []
    references: list[bytes] = []
    for number, raw in enumerate(args):
        where = f"alwayson_scripts.controlnet.args.{number}"
        unit = ControlNetUnit.model_validate(raw)
        if not unit.enabled or unit.model in ("None", ""):
            if unit.enabled:
                warnings.append(f"{where} has no model and was skipped")
            continue
        if unit.module.lower().startswith("ip-adapter"):
            adapter, weight, reference = _image_prompt(unit, where, svc, source)
            if fields.get("ip_adapter") not in (None, adapter):
                raise ApiError(422, "invalid_argument", f"{where}.model should be the IP-Adapter of the other units "
                               f"({fields['ip_adapter']}), but got {adapter!r}", f"{where}.model")
            fields["ip_adapter"] = adapter
            prompts.append({"weight": weight})
            references.append(reference)
            continue
        unit_fields, picture = _unit(unit, where, svc, has_source)
        warnings += [f"{where}.{name} is not supported and was ignored" for name, default in IGNORED.items()
                     if (unit.model_extra or {}).get(name, default) != default]
        warnings += [f"{where}.{name} is not a ControlNet unit field and was ignored"
                     for name in unit.model_extra or {} if name not in IGNORED]
        found.append(unit_fields)
        pictures.append(picture)
    if len(found) > MAX_UNITS:
        raise ApiError(422, "invalid_argument", f"alwayson_scripts.controlnet.args should enable at most {MAX_UNITS} "
                       f"units, but got {len(found)}", "alwayson_scripts.controlnet.args")
    fields["control"] = found
    if prompts:
        fields["image_prompts"] = prompts
    return pictures, references, warnings


def _image_prompt(unit: ControlNetUnit, where: str, svc: Service, source: bytes | None
                  ) -> tuple[str, float, bytes]:
    """An IP-Adapter unit as (the adapter's name, the picture's weight, the picture): without a picture of its
    own, the init image."""
    image = unit.image.get("image") if isinstance(unit.image, dict) else unit.image or unit.input_image
    if not image and source is None:
        raise ApiError(422, "invalid_request", f"{where}.image should be a base64 picture (txt2img has no init "
                       "image to read), but it is empty", f"{where}.image")
    return unit.model.split(" [", 1)[0], unit.weight, decode_base64(image, f"{where}.image", svc) if image \
        else source  # type: ignore[return-value]


def _unit(unit: ControlNetUnit, where: str, svc: Service, has_source: bool) -> tuple[dict[str, Any], bytes | None]:
    module = MODULES.get(unit.module) or MODULES.get(unit.module.lower())
    if module is None:
        raise ApiError(422, "invalid_argument", f"{where}.module should be one of {', '.join(MODULES)}, but got "
                       f"{unit.module!r}", f"{where}.module", choices=list(MODULES))
    image = unit.image.get("image") if isinstance(unit.image, dict) else unit.image or unit.input_image
    if not image and not has_source:
        raise ApiError(422, "invalid_request", f"{where}.image should be a base64 picture (txt2img has no init "
                       "image to read), but it is empty", f"{where}.image")
    control_mode = "control" if unit.guessmode else _choice(unit.control_mode, MODE_NUMBERS, A1111_MODES,
                                                             f"{where}.control_mode")
    fields = {"model": unit.model.split(" [", 1)[0], "preprocessor": module, "weight": unit.weight,
              "start": unit.guidance_start, "end": unit.guidance_end, "mode": control_mode,
              "resize": _choice(unit.resize_mode, RESIZE_NUMBERS, A1111_RESIZE, f"{where}.resize_mode"),
              "threshold_a": unit.threshold_a if unit.threshold_a >= 0 else None,
              "threshold_b": unit.threshold_b if unit.threshold_b >= 0 else None}
    return fields, decode_base64(image, f"{where}.image", svc) if image else None


def _choice(value: int | str, numbers: dict[int, str], labels: dict[str, str], field: str) -> str:
    """Ours for the extension's number or label of a mode."""
    if isinstance(value, int) and value in numbers:
        return numbers[value]
    by_label = {label.lower(): ours for ours, label in labels.items()}
    if isinstance(value, str) and value.strip().lower() in by_label:
        return by_label[value.strip().lower()]
    raise ApiError(422, "invalid_argument", f"{field} should be one of {', '.join(map(str, numbers))} or "
                   f"{', '.join(labels.values())}, but got {value!r}", field)


@router.get("/version")
def version(_who: CallerDep) -> dict[str, int]:
    """The extension's API version that these routes follow."""
    return {"version": 2}


@router.get("/model_list")
def model_list(_who: CallerDep, update: bool = True) -> dict[str, list[str]]:
    """The ControlNets and adapters a unit can name, as "name [hash]" (the first 8 hex digits of the SHA-256)."""
    from img2img.models.control_models import catalog
    from img2img.models.loading import weights_sha256
    from img2img.server.control_routes import registered_controls

    return {"model_list": [f"{name} [{weights_sha256(path)[:8]}]"
                           for name, path, _info in catalog(registered_controls())] + ip_adapter_names()}


def ip_adapter_names() -> list[str]:
    """The IP-Adapters an IP-Adapter unit can name (registered, or in the IP-Adapter folder), as "name [hash]"."""
    from img2img.models import ip_adapters
    from img2img.models.loading import weights_sha256
    from img2img.server.control_routes import registered_ip_adapters

    return [f"{name} [{weights_sha256(path)[:8]}]" for name, path, _ in ip_adapters.catalog(registered_ip_adapters())]


@router.get("/module_list")
def module_list(_who: CallerDep, alias_names: bool = False) -> dict[str, Any]:
    """The module names a unit can use, with the preprocessor each runs here."""
    from img2img.engine.preprocessors import PREPROCESSORS

    detail = {name: {"model_free": PREPROCESSORS[ours].model_kind is None, "preprocessor": ours,
                     "help": PREPROCESSORS[ours].help}
              for name, ours in MODULES.items()}
    detail |= {name: {"model_free": False, "preprocessor": "image prompt", "help": "An image prompt: the picture "
                      "through the unit's IP-Adapter (its own image encoder)."} for name in IP_MODULES}
    return {"module_list": [*MODULES, *IP_MODULES], "module_detail": detail}


class DetectRequest(BaseModel):
    controlnet_module: str = Field("none", max_length=80)
    controlnet_input_images: list[str] = Field(default_factory=list, max_length=8)
    controlnet_processor_res: int = Field(512, ge=64, le=4096)
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1


@router.post("/detect")
async def detect(body: DetectRequest, svc: ServiceDep, _who: CallerDep,
                 seed: Annotated[int, Query(ge=0, le=2**32 - 1)] = 0) -> dict[str, Any]:
    """The maps a module makes of the input images, base64 PNGs (the picture's own size; processor_res is not
    used)."""
    from img2img.server.control_routes import make_map

    module = MODULES.get(body.controlnet_module) or MODULES.get(body.controlnet_module.lower())
    if module is None or module == "inpaint":
        raise ApiError(422, "invalid_argument", f"controlnet_module should be one of "
                       f"{', '.join(name for name, ours in MODULES.items() if ours != 'inpaint')}, but got "
                       f"{body.controlnet_module!r}", "controlnet_module")
    low = body.controlnet_threshold_a if body.controlnet_threshold_a >= 0 else None
    high = body.controlnet_threshold_b if body.controlnet_threshold_b >= 0 else None
    images = []
    for number, text in enumerate(body.controlnet_input_images):
        data = decode_base64(text, f"controlnet_input_images.{number}", svc)
        png = await asyncio.to_thread(make_map, svc, data, module, low, high, seed, f"controlnet_input_images.{number}")
        images.append(base64.b64encode(png).decode("ascii"))
    return {"images": images, "info": "Success"}
