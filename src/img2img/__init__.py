"""img2img: image-to-image generation from a source image, a prompt and a strength.

    import img2img
    engine = img2img.Engine()
    result = engine.generate(img2img.GenerationRequest(source="photo.jpg", prompt="oil painting", strength=0.5))
    result.images[0].save("out.png")

Nothing heavy happens at import: models load on first use and stay loaded in the Engine.
"""

from img2img.api import Engine
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
from img2img.models.registry import ModelEntry, ModelRegistry

__all__ = [
    "DEFAULT_SAMPLER",
    "Engine",
    "GenerationRecord",
    "GenerationRequest",
    "GenerationResult",
    "Img2ImgError",
    "InvalidArgument",
    "ModelEntry",
    "ModelError",
    "ModelNotFound",
    "ModelRegistry",
    "OutputPathError",
    "PickleRefused",
    "SourceImageError",
    "UnknownModelFormat",
    "sampler_names",
]
