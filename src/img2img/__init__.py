"""img2img: image-to-image generation from a source image, a prompt and a strength.

    import img2img
    engine = img2img.Engine()
    result = engine.generate(img2img.GenerationRequest(source="photo.jpg", prompt="oil painting", strength=0.5))
    result.images[0].save("out.png")

Nothing heavy happens at import: models load on first use and stay loaded in the Engine.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it. Importing img2img stays cheap (no torch); each name is imported
# on first use.
_EXPORTS = {
    "Engine": "img2img.api",
    "GenerationRequest": "img2img.engine.request",
    "Inpaint": "img2img.engine.inpaint",
    "ControlUnit": "img2img.engine.control",
    "ImagePrompt": "img2img.engine.image_prompt",
    "GenerationRecord": "img2img.engine.result",
    "GenerationResult": "img2img.engine.result",
    "DEFAULT_SAMPLER": "img2img.engine.samplers",
    "sampler_names": "img2img.engine.samplers",
    "ModelEntry": "img2img.models.registry",
    "ModelRegistry": "img2img.models.registry",
    "Axis": "img2img.sweep",
    "params_from": "img2img.imageio.foreign",
    "FoundRequest": "img2img.imageio.foreign",
    "SweepResult": "img2img.sweep",
    **{name: "img2img.errors" for name in (
        "Img2ImgError", "InvalidArgument", "ModelError", "ModelNotFound", "OutputPathError", "PickleRefused",
        "SourceImageError", "UnknownModelFormat",
    )},
}

if TYPE_CHECKING:
    from img2img.api import Engine
    from img2img.engine.control import ControlUnit
    from img2img.engine.image_prompt import ImagePrompt
    from img2img.engine.inpaint import Inpaint
    from img2img.engine.request import GenerationRequest
    from img2img.engine.result import GenerationRecord, GenerationResult
    from img2img.engine.samplers import DEFAULT_SAMPLER, sampler_names
    from img2img.errors import (
        Img2ImgError,
        InvalidArgument,
        ModelError,
        ModelNotFound,
        OutputPathError,
        PickleRefused,
        SourceImageError,
        UnknownModelFormat,
    )
    from img2img.imageio.foreign import FoundRequest, params_from
    from img2img.models.registry import ModelEntry, ModelRegistry
    from img2img.sweep import Axis, SweepResult


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'img2img' has no attribute {name!r}")


__all__ = [
    "DEFAULT_SAMPLER",
    "Axis",
    "ControlUnit",
    "Engine",
    "FoundRequest",
    "GenerationRecord",
    "GenerationRequest",
    "GenerationResult",
    "ImagePrompt",
    "Img2ImgError",
    "Inpaint",
    "InvalidArgument",
    "ModelEntry",
    "ModelError",
    "ModelNotFound",
    "ModelRegistry",
    "OutputPathError",
    "PickleRefused",
    "SourceImageError",
    "SweepResult",
    "UnknownModelFormat",
    "params_from",
    "sampler_names",
]
