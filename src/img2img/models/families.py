"""Model families: what we recognise, how we recognise it, and the defaults each one runs with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from img2img.engine.samplers import DEFAULT_SAMPLER

Base = Literal["sd1", "sd2", "sdxl"]
Distillation = Literal["turbo", "lcm"] | None
Prediction = Literal["epsilon", "v_prediction"]


@dataclass(frozen=True)
class Family:
    base: Base
    prediction: Prediction = "epsilon"
    distillation: Distillation = None
    inpainting: bool = False  # a 9-channel UNet, trained to take the mask and the masked source beside its latents

    @property
    def label(self) -> str:
        """A short human name, e.g. "SD 2.x (v-prediction)", "SDXL turbo" or "SD 1.x inpainting"."""
        name = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}[self.base]
        if self.prediction == "v_prediction":
            name += " (v-prediction)"
        if self.distillation:
            name += f" {self.distillation}"
        if self.inpainting:
            name += " inpainting"
        return name

    @property
    def native_side(self) -> int:
        """The side in pixels of the square the family was trained at."""
        if self.base == "sdxl":
            return 1024
        if self.base == "sd2" and self.prediction == "v_prediction" and self.distillation is None:
            return 768
        return 512

    @property
    def default_steps(self) -> int:
        return {"turbo": 2, "lcm": 4, None: 25}[self.distillation]

    @property
    def default_guidance(self) -> float:
        # Turbo models were distilled without guidance; LCM folds guidance into the UNet.
        return {"turbo": 0.0, "lcm": 1.0, None: 7.0}[self.distillation]

    @property
    def default_sampler(self) -> str:
        return {"turbo": "Euler a", "lcm": "LCM", None: DEFAULT_SAMPLER}[self.distillation]

    @property
    def config_name(self) -> str:
        """The name of the shipped architecture config that single-file loading uses (an inpainting model's is
        its base's with 9 UNet input channels: ``img2img.models.loading.prepared_config_dir``)."""
        if self.base == "sd2":
            return "sd2-v" if self.prediction == "v_prediction" else "sd2"
        return self.base


def distillation_from_name(*names: str) -> Distillation:
    """Turbo and LCM weights look like their base model's; their names and metadata say what they are."""
    text = " ".join(names).lower()
    if re.search(r"turbo|lightning|hyper", text):
        return "turbo"
    if re.search(r"(^|[^a-z])lcm([^a-z]|$)|latent.consistency", text):
        return "lcm"
    return None


def base_from_cross_attention_dim(dim: int) -> Base | None:
    """The UNet's cross-attention width is the text encoder's: 768 (CLIP-L), 1024 (OpenCLIP-H), 2048 (SDXL)."""
    return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(dim)


UNET_CHANNELS = {4: False, 9: True}  # input channels -> inpainting


def inpainting_from_channels(channels: int, where: str) -> bool:
    """Whether a UNet of ``channels`` input channels is an inpainting one; other kinds are refused by name."""
    from img2img.errors import UnknownModelFormat

    if channels not in UNET_CHANNELS:
        kind = " (an InstructPix2Pix-style edit model)" if channels == 8 else ""
        raise UnknownModelFormat(f"model's UNet should take 4 input channels (or 9 for inpainting), but {where} "
                                 f"takes {channels}{kind}")
    return UNET_CHANNELS[channels]

