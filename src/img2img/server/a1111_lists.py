"""The A1111 listing routes that clients call before anything else: models, samplers, schedulers, VAEs, LoRAs,
embeddings, styles, scripts, flags and memory. A list we have nothing for is empty, never a 404, so a client built
for A1111 carries on; every entry that is listed works in a request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from img2img.errors import ModelError
from img2img.server.deps import CallerDep, ServiceDep

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])
# A1111's schedule types that map to ours: "automatic" is the sampler's own schedule, "karras" its Karras variant.
SCHEDULERS = (("automatic", "Automatic"), ("karras", "Karras"))


@router.get("/sd-models")
def sd_models(_who: CallerDep) -> list[dict[str, Any]]:
    from img2img.models.registry import ModelRegistry

    models = [{"title": entry.name, "model_name": entry.name, "hash": None, "sha256": None, "filename": entry.name,
               "config": None} for entry in ModelRegistry().entries()]
    return [*models, {"title": "builtin", "model_name": "builtin", "hash": None, "sha256": None,
                      "filename": "builtin", "config": None}]


@router.get("/samplers")
def samplers(_who: CallerDep) -> list[dict[str, Any]]:
    from img2img.engine.samplers import sampler_names

    return [{"name": name, "aliases": [], "options": {}} for name in sampler_names()]


@router.get("/schedulers")
def schedulers(_who: CallerDep) -> list[dict[str, Any]]:
    return [{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for name, label in SCHEDULERS]


@router.get("/sd-vae")
def sd_vae(_who: CallerDep) -> list[dict[str, Any]]:
    """The VAEs a request can choose (override_settings.sd_vae), by name."""
    return [{"model_name": name, "filename": f"{name}.safetensors"} for name in _addons("vae")]


@router.get("/loras")
def loras(_who: CallerDep) -> list[dict[str, Any]]:
    """The LoRAs a prompt can name (<lora:NAME:WEIGHT>); their paths on this machine are not shown."""
    return [{"name": name, "alias": name, "path": f"{name}.safetensors", "metadata": {}}
            for name in _addons("lora")]


@router.get("/embeddings")
def embeddings(_who: CallerDep) -> dict[str, Any]:
    """The textual-inversion embeddings a prompt can name, with their width and vectors."""
    from img2img.models.addons import detect

    loaded, skipped = {}, {}
    for name, path in _addons("embedding").items():
        try:
            info = detect(path)
        except ModelError:
            info = None
        entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
        if info is None:
            skipped[name] = entry | {"shape": None, "vectors": 0}
        else:
            loaded[name] = entry | {"shape": info.width, "vectors": info.vectors}
    return {"loaded": loaded, "skipped": skipped}


@router.get("/prompt-styles")
def prompt_styles(_who: CallerDep) -> list[dict[str, Any]]:
    return []


@router.get("/scripts")
def scripts(_who: CallerDep) -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}


@router.get("/latent-upscale-modes")
def latent_upscale_modes(_who: CallerDep) -> list[dict[str, Any]]:
    return []  # hires fix upscales pixels (a1111_extras.UPSCALERS); latent modes are refused there


@router.get("/hypernetworks")
def hypernetworks(_who: CallerDep) -> list[dict[str, Any]]:
    return []


@router.get("/face-restorers")
def face_restorers(_who: CallerDep) -> list[dict[str, Any]]:
    return []


@router.get("/realesrgan-models")
def realesrgan_models(_who: CallerDep) -> list[dict[str, Any]]:
    return []


@router.get("/cmd-flags")
def cmd_flags(_who: CallerDep, svc: ServiceDep) -> dict[str, Any]:
    """The server's settings under A1111's flag names where one exists (the rest of A1111's flags do not apply)."""
    settings = svc.settings
    return {"api": True, "nowebui": False, "listen": settings.host not in ("127.0.0.1", "localhost", "::1"),
            "port": settings.port, "data_dir": str(settings.data_dir), "use_cpu": ["all"]
            if settings.device == "cpu" else [], "cors_allow_origins": ",".join(settings.cors_origins) or None}


@router.get("/memory")
def memory(_who: CallerDep) -> dict[str, Any]:
    """RAM of this machine and the GPU's memory, in A1111's shape."""
    from img2img.models.memory import available_memory, physical_memory

    total, free = physical_memory(), available_memory()
    ram: dict[str, Any] = {"free": free, "used": total - free, "total": total} if total and free is not None else {
        "error": "this system does not report its memory"}
    return {"ram": ram, "cuda": _cuda()}


@router.post("/refresh-checkpoints")
def refresh_checkpoints(_who: CallerDep) -> None:
    """Nothing to do: the model registry is read on every request."""


@router.post("/refresh-loras")
def refresh_loras(_who: CallerDep) -> None:
    """Nothing to do: LoRA folders are read on every request."""


def _addons(kind: str) -> dict[str, Path]:
    """The add-ons of ``kind`` in its folders (files of another kind there are left out) and the registry."""
    from img2img.models.addons import available, is_kind
    from img2img.models.registry import ModelRegistry

    found = {path.stem: path for path in available(kind) if is_kind(path, kind)}
    return dict(sorted((found | {name: Path(path) for name, path in ModelRegistry().addons(kind).items()}).items()))


def _cuda() -> dict[str, Any]:
    """The GPU's memory as the driver reports it (the models live in the worker process, so only the device's
    totals mean anything here)."""
    import torch

    if not torch.cuda.is_available():
        return {"error": "no CUDA device on this machine"}
    free, total = torch.cuda.mem_get_info()
    return {"system": {"free": free, "used": total - free, "total": total}}
