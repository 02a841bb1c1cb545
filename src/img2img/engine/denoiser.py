"""The network that denoises, as the loop sees it: a UNet, or an SD 3.x transformer (MMDiT) called the UNet's way
(FLUX.1's: ``img2img.engine.flux``).

The loop (``img2img.engine.diffusion.denoise``) calls ``denoiser(pipeline)(sample, timestep, **inputs)`` and reads
its ``device``, ``dtype`` and ``config``. A UNet is that already. SD 3.x's transformer takes its inputs by other
names (the prompt's pooled embedding as ``pooled_projections``, the timestep once per row) and cuts the latents into
2x2 patches, so it only takes latents of even sides; ``TransformerDenoiser`` pads an odd side by one row or column
(repeating the edge) and crops the prediction back, so that any working size in multiples of 8 runs, as for SD.
Even sides, which diffusers also runs, see no padding: the same numbers as diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class DenoiserConfig:
    """What the loop reads of a denoiser's config."""

    in_channels: int
    time_cond_proj_dim: int | None = None  # LCM's guidance embedding: never for a transformer
    distilled_guidance: bool = False  # guidance is the model's own input (Flux): no classifier-free rows


class TransformerCall:
    """What the loop reads of a transformer behind the UNet's call: its config, device and dtype."""

    def __init__(self, transformer: Any, config: DenoiserConfig) -> None:
        self.transformer, self.config = transformer, config

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype


class TransformerDenoiser(TransformerCall):
    """An SD 3.x ``SD3Transformer2DModel`` behind the UNet's call."""

    def __init__(self, transformer: Any) -> None:
        super().__init__(transformer, DenoiserConfig(int(transformer.config.in_channels)))

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, *, encoder_hidden_states: torch.Tensor,
                 added_cond_kwargs: dict[str, torch.Tensor], timestep_cond: torch.Tensor | None = None,
                 return_dict: bool = False) -> tuple[torch.Tensor]:
        patch = int(self.transformer.config.patch_size)
        height, width = sample.shape[-2:]
        padded = torch.nn.functional.pad(sample, (0, -width % patch, 0, -height % patch), mode="replicate")
        output = self.transformer(hidden_states=padded, timestep=timestep.expand(sample.shape[0]),
                                  encoder_hidden_states=encoder_hidden_states,
                                  pooled_projections=added_cond_kwargs["pooled_projections"], return_dict=False)[0]
        return (output[..., :height, :width],)


def denoiser(pipeline: Any) -> Any:
    """``pipeline``'s UNet, or its transformer behind the UNet's call (the wrapper holds nothing of its own)."""
    unet = getattr(pipeline, "unet", None)
    if unet is not None:
        return unet
    if is_flux(pipeline):
        from img2img.engine.flux import FluxDenoiser

        return FluxDenoiser(pipeline.transformer)
    return TransformerDenoiser(pipeline.transformer)


def is_flux(pipeline: Any) -> bool:
    """Whether ``pipeline`` denoises with a FLUX.1 transformer."""
    return type(getattr(pipeline, "transformer", None)).__name__ == "FluxTransformer2DModel"


def is_transformer(pipeline: Any) -> bool:
    """Whether ``pipeline`` denoises with a transformer (SD 3.x) rather than a UNet."""
    return getattr(pipeline, "unet", None) is None and getattr(pipeline, "transformer", None) is not None
