"""Edit models: InstructPix2Pix (Brooks, Holynski and Efros, 2023), whose prompt is an instruction ("make it
winter") and whose UNet takes the source's latents as four more input channels beside its own.

The source enters as a conditioner (``EditConditioner``): its latents (the VAE's mean, unscaled, as the model was
trained) go beside the sample at every step. Guidance has three rows, unconditional (no prompt, no source), image
(the source without the prompt) and full (both); the guided prediction is

    uncond + guidance_scale * (full - image) + image_guidance * (image - uncond)

so ``image_guidance`` (A1111's "Image CFG scale", 1.5 by default) says how closely the result keeps the source and
``guidance_scale`` how strongly it follows the instruction. At strength 1 this is diffusers'
``StableDiffusionInstructPix2PixPipeline``: the run starts from pure noise. Below 1 the source's latents are noised
partway as for any model (as A1111 runs edit models in img2img), so the result keeps even more of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from img2img.engine.conditioning import Begin, Conditioner, StartLatents, Step

if TYPE_CHECKING:
    import torch

EDIT_CHANNELS = 8  # an edit UNet's input: latents 4 + the source's latents 4
TINY_SCALE = 0.18215  # SD's latent scaling: a tiny autoencoder's latents are already multiplied by it


@dataclass(frozen=True, eq=False)
class EditConditioner(Conditioner):
    """The source's latents beside the sample, and guidance on both the prompt and the source."""

    image_guidance: float
    latents: torch.Tensor | None = field(default=None, repr=False)  # the source's, once bound to an image
    kind = "edit"
    guidance_rows = 3

    def begin(self, begin: Begin) -> tuple[Conditioner, StartLatents]:
        pipeline = begin.pipeline
        encoded = begin.encode("source", pipeline.image_processor.preprocess(begin.source))
        latents = encoded.mean.float()  # the distribution's mode: what diffusers takes, drawing nothing
        if encoded.std is None:  # a tiny autoencoder's, at the UNet's scale already
            latents = latents / TINY_SCALE
        return replace(self, latents=latents), begin.start

    def extend_sample(self, step: Step, sample: torch.Tensor) -> torch.Tensor:
        import torch

        assert self.latents is not None, "begin() binds the source's latents first"
        source = self.latents.to(sample.dtype)
        if step.rows == self.guidance_rows:  # [unconditional, image, full]: the first sees no source
            source = torch.cat([torch.zeros_like(source), source, source])
        return torch.cat([sample, source], dim=1)

    def guide(self, noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        unconditional, image, full = noise_pred.chunk(3)
        return unconditional + guidance_scale * (full - image) + self.image_guidance * (image - unconditional)

    def metadata(self) -> dict[str, Any] | None:
        return None  # the record keeps image_cfg among the request's fields
