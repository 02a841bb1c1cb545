"""FLUX.1 Kontext: an edit model that reads the source as tokens beside its own (``KontextConditioner``).

Kontext is Flux's transformer trained to take a reference picture: its latents (the VAE's mean, scaled and shifted
as the model's own) packed into 2x2 patches and appended to the image's token sequence, each at its position with
a first coordinate of 1 where the image's have 0. The prediction for the reference's tokens is dropped. Its prompt
is an instruction ("make it winter"). At strength 1 the run starts from noise, as diffusers'
``FluxKontextPipeline`` does; below 1 the source's latents are also noised partway, as A1111 runs edit models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from img2img.engine.conditioning import Begin, Conditioner, StartLatents, Step
from img2img.engine.diffusion import source_pixels

KIND = "kontext"


@dataclass(frozen=True, eq=False)
class KontextConditioner(Conditioner):
    """The source as Kontext's reference tokens."""

    reference: torch.Tensor | None = None  # (1, 16, h, w) latents of the source, scaled for the transformer
    kind = KIND
    inputs = ("reference_latents",)

    def begin(self, begin: Begin) -> tuple[Conditioner, StartLatents]:
        pipeline = begin.pipeline
        # The distribution's mode: Kontext reads the source and draws nothing.
        mean = begin.encode("source", source_pixels(pipeline, begin.source)).mean.float()
        vae = pipeline.vae.config
        reference = (mean - (vae.shift_factor or 0.0)) * vae.scaling_factor
        return replace(self, reference=reference), begin.start

    def unet_inputs(self, step: Step) -> dict[str, Any]:
        return {"reference_latents": self.reference}

    def metadata(self) -> dict[str, Any] | None:
        return {"reference": "source"}
