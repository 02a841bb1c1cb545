"""A cheap look at the latents while denoising: a fixed linear map from the 4 latent channels to RGB.

Decoding with the VAE at every step would cost as much as a step on a CPU; this costs microseconds. The
coefficients are the commonly used least-squares fits of latent channels to RGB for the SD 1.x/2.x and SDXL
latent spaces (as in A1111's "cheap approximation" live preview).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_SD = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
_SDXL = ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163), (-0.3730, -0.2499, -0.2088))


def latent_preview(latents: torch.Tensor, xl: bool, max_side: int = 96) -> Image.Image | None:
    """An RGB preview of the first latent of a batch (scaled model-space latents), at most ``max_side`` wide."""
    if latents.ndim != 4 or latents.shape[1] != 4:
        return None
    factors = torch.tensor(_SDXL if xl else _SD, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0].detach().float().cpu(), factors)
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels))
    image.thumbnail((max_side, max_side), Image.BILINEAR)
    return image
