"""The mask inside the denoising loop: the first conditioner after the prompt.

Two kinds of UNet inpaint, as in diffusers' ``StableDiffusionInpaintPipeline``:

- a regular UNet (4 input channels) paints everywhere, and after every step the area it keeps is put back: the
  source's clean latents noised to the next step's level (the clean latents after the last step);
- an inpainting UNet (9 channels: SD 1.5/2 and SDXL inpainting) sees the mask and the latents of the source with
  the masked area blanked as channels beside its sample, and paints the masked area to fit.

The mask is binarized at one half and brought to the latent size by nearest-neighbour sampling, as diffusers
does; the blurred edge acts in the paste-back (``img2img.engine.masking``), where kept pixels stay exact.
``masked_content`` says what the repainted latents start from: the source's (``original`` and ``fill``, whose
pixels were prepared before encoding), fresh latent noise (``noise``) or zeros (``nothing``), as A1111 does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from img2img.engine.conditioning import Begin, Conditioner, StartLatents, Step
from img2img.engine.diffusion import draw_noise, posterior_sample, source_pixels
from img2img.engine.samplers import add_noise

INPAINTING_CHANNELS = 9  # latents 4 + mask 1 + masked-image latents 4


@dataclass(frozen=True, eq=False)
class MaskConditioner(Conditioner):
    """The mask at the working size (8-bit greyscale, 255 repaints) and how its area starts."""

    mask: Image.Image
    content: str = "original"
    unet_channels: int = 4
    # Bound per image by ``begin``:
    latent_mask: torch.Tensor | None = None  # (1, 1, h, w), 1 repaints
    channels: torch.Tensor | None = None  # an inpainting UNet's extra channels: mask and masked-image latents
    kind = "mask"

    @property
    def inpainting_unet(self) -> bool:
        return self.unet_channels == INPAINTING_CHANNELS

    def needs_source_latents(self) -> bool:
        return not self.inpainting_unet  # the kept area is blended back from the source's latents

    def begin(self, begin: Begin) -> tuple[Conditioner, StartLatents]:
        start = begin.start
        keep = torch.from_numpy(np.asarray(self.mask, dtype=np.float32) / 255 < 0.5).float()[None, None]
        latent_mask = torch.nn.functional.interpolate(1 - keep, size=start.noise.shape[-2:]).to(start.noise.device)
        if start.clean is not None and self.content in ("noise", "nothing"):
            fresh = draw_like(start.clean, begin.generator) if self.content == "noise" else torch.zeros_like(
                start.clean)
            clean = start.clean * (1 - latent_mask) + fresh * latent_mask
            noised = start.noised if start.pure else begin.noised(clean, start.noise)
            start = replace(start, clean=clean, noised=noised)
        channels = None
        if self.inpainting_unet:  # diffusers draws the masked image's latents after the noise, from one generator
            pixels = source_pixels(begin.pipeline, begin.source)
            distribution = begin.encode("masked source", pixels * keep)
            masked = posterior_sample(distribution, begin.generator)
            channels = torch.cat([latent_mask, masked * begin.pipeline.vae.config.scaling_factor], dim=1)
        return replace(self, latent_mask=latent_mask, channels=channels), start

    def extend_sample(self, step: Step, sample: torch.Tensor) -> torch.Tensor:
        if self.channels is None:
            return sample
        extra = torch.cat([self.channels] * 2) if step.guided else self.channels
        return torch.cat([sample, extra.to(sample.dtype)], dim=1)

    def after_step(self, step: Step, latents: torch.Tensor) -> torch.Tensor:
        if self.inpainting_unet or self.latent_mask is None or step.start.clean is None:
            return latents
        kept = step.start.clean
        if step.next_timestep is not None:
            kept = add_noise(step.scheduler, kept, step.start.noise, step.next_timestep)
        return (1 - self.latent_mask) * kept + self.latent_mask * latents

    def metadata(self) -> dict[str, Any] | None:
        return None  # the request's inpaint part is recorded instead

    def cache_key(self) -> tuple[Any, ...]:
        return (self.kind, self.content, self.unet_channels, self.mask.tobytes())


def draw_like(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return draw_noise(tuple(like.shape), generator, like.device)

